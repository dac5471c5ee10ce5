"""An automatic judge for AI-assisted win rates: the aesthetic head scores both images of every pair a campaign compares.

The judge's score of a pair is its probability that raters find image B more appealing than image A, from the
two images' aesthetic scores (the head on CLIP image embeddings, LAION's 1-10 scale):

    P(B preferred) = 1 / (1 + exp(-(score_B - score_A) / JUDGE_SCALE))

a logistic of the difference (Bradley-Terry with the aesthetic score as log-strength over ``JUDGE_SCALE``): equal
scores give 1/2, one aesthetic point in B's favour about 73%. Uncalibrated, and it need not be: the
prediction-powered interval (``analysis.services.prediction_powered``) measures the judge against the human votes
and leans on it only as far as it agrees with them. It judges visual appeal only (the head never sees the prompt).

Every pair of the campaign's generation batch is scored, including prompts humans never vote on
(``Campaign.human_share``). Idempotent: pairs already scored are skipped unless ``rescore``.
"""

from __future__ import annotations

import math
from pathlib import Path

from django.conf import settings
from PIL import Image

from analysis import services as analysis_services
from annotation.models import Campaign, Criterion
from generation import selectors as generation_selectors
from training.services.aesthetic_scoring import load_aesthetic_scoring
from training.services.common import TrainingError

JUDGE_SCALE = 1.0  # aesthetic points per unit of log-odds
EMBED_BATCH = 32  # images per CLIP forward pass


def judge_probability(score_a: float, score_b: float, scale: float = JUDGE_SCALE) -> float:
    """P(raters prefer B) from the two aesthetic scores: a logistic of their difference over ``scale``."""
    return 1.0 / (1.0 + math.exp(-(score_b - score_a) / scale))


def judge_name(head_path: str) -> str:
    return f"aesthetic head {Path(head_path).name} (logistic of the score difference, scale {JUDGE_SCALE:g})"


def campaign_pairs(campaign: Campaign) -> list[tuple]:
    """(image of A, image of B) for every model pair, prompt and seed of the campaign's generation batch."""
    batch = campaign.generation_batch
    if batch is None or not generation_selectors.batch_progress(batch).complete:
        raise TrainingError(
            f"Campaign {campaign.name!r} has no complete set of images yet: launch it and wait for its images, "
            "then score its pairs."
        )
    models = {bm.model_id: bm for bm in batch.batch_models.all()}
    images = {}
    for model in campaign.ordered_models():
        if model.pk not in models:
            raise TrainingError(f"The campaign's generation batch has no images of model {model.name!r}.")
        for image in generation_selectors.images_for(models[model.pk], batch):
            images[model.pk, image.prompt_id, image.seed] = image
    return [
        (images[a.pk, key.prompt_id, key.seed], images[b.pk, key.prompt_id, key.seed])
        for a, b in campaign.model_pairs()
        for key in generation_selectors.batch_keys(batch)
    ]


def score_campaign_pairs(
    campaign: Campaign,
    *,
    head_path: str | None = None,
    clip_path: str | None = None,
    clip_name: str = "",
    rescore: bool = False,
    scoring=None,
) -> int:
    """Score every pair of the campaign with the aesthetic head and store the scores; returns the pairs scored now.

    ``head_path``/``clip_path`` default to the site's judge (NEEDLE_JUDGE_HEAD_PATH, NEEDLE_JUDGE_CLIP_PATH);
    ``scoring``: a (CLIP, head) pair from load_aesthetic_scoring, to load them once.
    """
    head_path = head_path if head_path is not None else settings.NEEDLE_JUDGE_HEAD_PATH
    clip_path = clip_path if clip_path is not None else settings.NEEDLE_JUDGE_CLIP_PATH
    if not campaign.criteria.filter(criterion=Criterion.VISUAL_APPEAL).exists():
        raise TrainingError(
            f"Campaign {campaign.name!r} does not judge visual appeal, the only criterion an aesthetic head can judge."
        )
    pairs = campaign_pairs(campaign)
    if not rescore:
        done = analysis_services.judged_pairs(campaign, Criterion.VISUAL_APPEAL)
        pairs = [(a, b) for a, b in pairs if (a.pk, b.pk) not in done]
    if not pairs:
        return 0
    clip, head = scoring or load_aesthetic_scoring(head_path, clip_path, clip_name)
    unique = sorted({image.pk: image for pair in pairs for image in pair}.values(), key=lambda image: image.pk)
    aesthetic = {}
    for start in range(0, len(unique), EMBED_BATCH):
        chunk = unique[start : start + EMBED_BATCH]
        pictures = []
        for image in chunk:
            with image.file.open("rb") as handle, Image.open(handle) as picture:
                pictures.append(picture.convert("RGB"))
        for image, value in zip(chunk, head.predict(clip.embed_images(pictures)), strict=True):
            aesthetic[image.pk] = float(value)
    scores = {(a.pk, b.pk): judge_probability(aesthetic[a.pk], aesthetic[b.pk]) for a, b in pairs}
    try:
        return analysis_services.record_judge_scores(
            campaign, Criterion.VISUAL_APPEAL, scores, judge=judge_name(head_path or "given head")
        )
    except analysis_services.JudgeScoreError as exc:
        raise TrainingError(str(exc)) from None
