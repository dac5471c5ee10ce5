"""Recording an automatic judge's scores of a campaign's pairs (``JudgeScore``), for the AI-assisted win rates.

The judge itself lives where its model does (the training app's aesthetic head: ``training.services.judge_scores``);
this module only checks and stores what it says.
"""

from __future__ import annotations

import math

from django.db import transaction

from annotation.models import Campaign, Criterion

from ..models import JudgeScore


class JudgeScoreError(ValueError):
    """Scores that cannot be stored: the message says which and why."""


def judged_pairs(campaign: Campaign, criterion: str) -> set[tuple[int, int]]:
    """(image A id, image B id) of the pairs the judge has scored under ``criterion``."""
    return set(
        JudgeScore.objects.filter(campaign=campaign, criterion=criterion).values_list("image_a_id", "image_b_id")
    )


def record_judge_scores(campaign: Campaign, criterion: str, scores: dict, *, judge: str) -> int:
    """Store ``scores`` ({(image A id, image B id): P(raters prefer B)}) of ``judge``; a pair scored before is replaced.

    Idempotent: the same scores twice leave the same rows. Returns the number of pairs stored.
    """
    if criterion not in Criterion.values:
        raise JudgeScoreError(f"Unknown criterion {criterion!r}; known: {', '.join(Criterion.values)}.")
    if not judge or len(judge) > 200:
        raise JudgeScoreError("Name the judge in 1 to 200 characters.")
    for pair, score in scores.items():
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise JudgeScoreError(f"The judge's score of pair {pair} is {score!r}, not a number.")
        if not 0 <= score <= 1:
            raise JudgeScoreError(f"The judge's score of pair {pair} is {score}; scores are probabilities in [0, 1].")
    with transaction.atomic():
        JudgeScore.objects.bulk_create(
            [
                JudgeScore(campaign=campaign, criterion=criterion, image_a_id=a, image_b_id=b, score=s, judge=judge)
                for (a, b), s in scores.items()
            ],
            update_conflicts=True,
            unique_fields=["campaign", "criterion", "image_a", "image_b"],
            update_fields=["score", "judge"],
        )
    return len(scores)
