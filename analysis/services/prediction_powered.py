"""AI-assisted win rates: an automatic judge's scores of every pair, corrected by the human votes (PPI++).

For each criterion and model pair the judge scored (``JudgeScore``): the *labelled* comparisons are those of the
prompts whose comparisons humans completed (every item of the prompt has its k votes), each with its human score
(the strict majority of its counting votes: 1 for B, 1/2 for a tie, 0 for A) and the judge's score of the same two
images; the *unlabelled* ones are every other pair the judge scored (the prompts left to the judge by the campaign's
``human_share``, and the prompts humans have not finished). ``analysis.stats.prediction_powered_win_rate`` then gives
the PPI++ estimate with its prompt-clustered interval, the humans-only interval from the same votes, the tuned lambda
and the judge's agreement with the human majority on the labelled comparisons.

Valid because the prompts humans vote on are a random draw (``annotation.services.build_items``: a seeded sample of
``human_share`` of the prompts, in a random order), made without looking at the judge or the votes. Like the
headline, no interval is printed below ``stats.MIN_PROMPTS`` prompts with human votes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotation.models import Campaign

from .. import stats
from ..selectors import item_completions, judge_scores
from .values import Bounds, PredictionPoweredSummary

HUMAN_SCORE = {stats.WINNERS.index("a"): 0.0, stats.WINNERS.index("b"): 1.0, stats.WINNERS.index("tie"): 0.5}


def _bounds(interval: stats.Interval) -> Bounds:
    return Bounds(float(interval.low), float(interval.high), float(interval.level), interval.method)


def judged_data(items: pd.DataFrame, judged: pd.DataFrame, criterion: str, model_a: str, model_b: str) -> dict | None:
    """The arrays PPI takes for one criterion and pair: human and judge scores of the labelled comparisons, judge
    scores of the unlabelled pairs, and each one's prompt. None when the judge scored none of the pair's pairs."""
    scores = judged[
        (judged["criterion"] == criterion) & (judged["model_a"] == model_a) & (judged["model_b"] == model_b)
    ]
    if scores.empty:
        return None
    mine = items[(items["criterion"] == criterion) & (items["model_a"] == model_a) & (items["model_b"] == model_b)]
    done = mine["completed_at"].notna().groupby(mine["prompt_id"]).all().astype(bool)
    labelled = mine[mine["prompt_id"].isin(done[done].index)]
    outcome = stats.majority_outcomes(labelled[list(stats.WINNERS)].to_numpy()) if len(labelled) else np.zeros(0)
    labelled = labelled.assign(human=[HUMAN_SCORE[int(o)] for o in outcome])
    pair = ["image_a_id", "image_b_id"]
    labelled = labelled.merge(scores[[*pair, "score"]], on=pair, how="inner")
    taken = set(zip(labelled["image_a_id"], labelled["image_b_id"], strict=True))
    judge_only = np.array(
        [(a, b) not in taken for a, b in zip(scores["image_a_id"], scores["image_b_id"], strict=True)], dtype=bool
    )
    unlabelled = scores.loc[judge_only]
    return {
        "human": labelled["human"].to_numpy(dtype=float),
        "judge_labelled": labelled["score"].to_numpy(dtype=float),
        "judge_unlabelled": unlabelled["score"].to_numpy(dtype=float),
        "prompts_labelled": labelled["prompt_id"].to_numpy(),
        "prompts_unlabelled": unlabelled["prompt_id"].to_numpy(),
        "judge": ", ".join(sorted(scores["judge"].unique())),
    }


def prediction_powered_summaries(
    campaign: Campaign, *, items: pd.DataFrame | None = None, level: float = 0.95
) -> tuple[PredictionPoweredSummary, ...]:
    """One summary per criterion and pair that has judge scores (none: an empty tuple)."""
    judged = judge_scores(campaign)
    if judged.empty:
        return ()
    if items is None:
        items, _ = item_completions(campaign)
    summaries = []
    for criterion in campaign.criteria.all():
        for model_a, model_b in campaign.model_pairs():
            data = judged_data(items, judged, criterion.criterion, model_a.name, model_b.name)
            if data is None:  # the judge did not score this criterion and pair
                continue
            base = {
                "criterion": criterion.criterion,
                "criterion_label": criterion.get_criterion_display(),
                "model_a": model_a.name,
                "model_b": model_b.name,
                "judge": data["judge"],
                "labelled_items": len(data["human"]),
                "labelled_prompts": len(set(data["prompts_labelled"])),
                "unlabelled_items": len(data["judge_unlabelled"]),
                "unlabelled_prompts": len(set(data["prompts_unlabelled"])),
            }
            if len(data["human"]) < 2:
                summaries.append(PredictionPoweredSummary(**base, message="humans have completed too few comparisons"))
                continue
            if not len(data["judge_unlabelled"]):
                summaries.append(
                    PredictionPoweredSummary(
                        **base, message="the judge scored no pair beyond those humans completed: nothing to add"
                    )
                )
                continue
            try:
                result = stats.prediction_powered_win_rate(
                    data["human"],
                    data["judge_labelled"],
                    data["judge_unlabelled"],
                    prompts_labelled=data["prompts_labelled"],
                    prompts_unlabelled=data["prompts_unlabelled"],
                    level=level,
                )
            except ValueError as exc:  # e.g. a single prompt in all
                summaries.append(PredictionPoweredSummary(**base, message=str(exc)))
                continue
            with_interval = base["labelled_prompts"] >= stats.MIN_PROMPTS
            summaries.append(
                PredictionPoweredSummary(
                    **base,
                    estimate=result.estimate,
                    interval=_bounds(result.interval) if with_interval else None,
                    humans_only_estimate=result.humans_only_estimate,
                    humans_only=_bounds(result.humans_only) if with_interval else None,
                    lam=result.lam,
                    agreement=result.agreement,
                    correlation=result.correlation,
                    effective_labelled=result.effective_labelled if with_interval else None,
                    interval_note=""
                    if with_interval
                    else stats.intervals.too_few_prompts_message(base["labelled_prompts"]),
                )
            )
    return tuple(summaries)
