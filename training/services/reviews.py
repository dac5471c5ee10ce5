"""Emu's human curation stages: generalists, then specialists, narrow the funnel's candidates to the needles.

After the automatic funnel, people narrow the candidates in two stages (Emu): generalists
keep or reject fast (or rate 1-5), specialists select the final set with reasons and a
written caption. Each stage is a CurationReview with one CurationDecision per candidate,
handed out like comparison items: a reviewer leases the first undecided candidate in review
order (FOR UPDATE SKIP LOCKED on PostgreSQL, so two reviewers never get the same one), then
decides it once.

Lease rule: ``reviewer`` names whoever claimed a decision last. They may decide it as long
as it is undecided and still theirs, even after the lease ran out: a late answer is a real
judgement and spares someone else the same candidate. Once the lease ran out and another
reviewer claimed it, only that reviewer may decide it.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import DUPLICATE, ServiceError
from core.names import check_slug_name
from training.models import CurationDecision, CurationReview, CurationRun, CurationStage, FunnelOutcome, SelectionReason
from training.services.aesthetic_scoring import train_aesthetic_head_from_ratings
from training.services.common import TrainingError
from training.services.datasets import freeze_curated_dataset


class ReviewError(ServiceError):
    """A human curation stage refused an operation; the message says what to do."""


GENERALIST_INSTRUCTIONS = (
    "Keep the images that could be in a photography magazine; reject everything else. Decide fast, on first "
    "impression: reject anything blurry, badly cropped, dull, cluttered, over-processed, watermarked or with "
    "text over it. When in doubt, reject: only a few thousand of these images will make the final set."
)
GENERALIST_RATING_INSTRUCTIONS = (
    "Rate how appealing each image is, on first impression, from 1 (poor: blurry, badly cropped, dull, cluttered, "
    "watermarked) to 5 (could be in a photography magazine). Judge the image alone, not what it shows."
)
SPECIALIST_INSTRUCTIONS = (
    "Select only images of exceptional quality, the kind a photographer would be proud of. Select an image only if "
    "it is excellent on at least one of these, and poor on none: composition (balanced, intentional framing, the "
    "subject placed with care), lighting (dramatic or soft, well exposed, no blown highlights or crushed shadows), "
    "colour and contrast (vivid or harmonious, with depth), subject and background (a clear subject that stands out "
    "from an uncluttered background). Tick every reason that applies, then correct the caption so that it describes "
    "exactly what is in the image. Skip everything that is merely good."
)
MAX_CURATION_SECONDS = 86_400


class CurationBusy(Exception):
    """Every claimable candidate is row-locked by another reviewer at this instant."""


@dataclass(frozen=True)
class CurationDecisionResult:
    decision: "CurationDecision"
    duplicate: bool  # True when this submission repeated the decision already recorded


def _review_name(name: str) -> str:
    name = check_slug_name(name, "review", error=ReviewError, field="name")
    if len(name) > 100:
        raise ReviewError("The review's name is too long (100 characters at most).", field="name")
    if CurationReview.objects.filter(name=name).exists():
        raise ReviewError(f"A review named {name!r} already exists; choose another name.", field="name", code=DUPLICATE)
    return name


def _check_lease_seconds(lease_seconds: int) -> None:
    if not 30 <= lease_seconds <= MAX_CURATION_SECONDS:
        raise ReviewError("The lease must be between 30 seconds and one day.", field="lease_seconds")


def _create_review(candidate_ids: list[int], **fields) -> CurationReview:
    try:
        with transaction.atomic():
            review = CurationReview.objects.create(**fields)
            CurationDecision.objects.bulk_create(
                CurationDecision(review=review, candidate_id=cid, position=i)
                for i, cid in enumerate(candidate_ids, start=1)
            )
    except IntegrityError:  # two researchers picked the same name at once
        raise ReviewError(
            f"A review named {fields['name']!r} already exists; choose another name.", field="name", code=DUPLICATE
        ) from None
    return review


def open_generalist_review(
    funnel_run,
    name: str,
    *,
    mode: str = CurationReview.Mode.KEEP_REJECT,
    keep_threshold: int = 4,
    instructions: str = "",
    lease_seconds: int = 300,
    created_by=None,
) -> CurationReview:
    """The first human stage over a finished funnel run's kept candidates, best automatic aesthetic score first.

    Blank ``instructions`` take the default wording for the mode.
    """
    name = _review_name(name)
    if mode not in CurationReview.Mode.values:
        raise ReviewError(f"The mode must be one of: {', '.join(CurationReview.Mode.values)}.", field="mode")
    if mode == CurationReview.Mode.RATING and not (isinstance(keep_threshold, int) and 1 <= keep_threshold <= 5):
        raise ReviewError("The keep threshold must be a rating from 1 to 5.", field="keep_threshold")
    _check_lease_seconds(lease_seconds)
    if funnel_run.status != CurationRun.Status.FINISHED:
        raise ReviewError(
            f"Funnel run {funnel_run.pk} is {funnel_run.status}, not finished: wait for it to finish (or start it "
            "again if it failed) before people review its candidates."
        )
    # Best first, so a stage stopped early has seen the likeliest keepers; unscored candidates last.
    candidate_ids = list(
        FunnelOutcome.objects.filter(run=funnel_run, kept=True)
        .order_by(F("aesthetic_score").desc(nulls_last=True), F("clip_score").desc(nulls_last=True), "candidate_id")
        .values_list("candidate_id", flat=True)
    )
    if not candidate_ids:
        raise ReviewError(
            f"Funnel run {funnel_run.pk} kept no candidates, so there is nothing to review. Loosen its stages and run "
            "it again."
        )
    default = GENERALIST_RATING_INSTRUCTIONS if mode == CurationReview.Mode.RATING else GENERALIST_INSTRUCTIONS
    return _create_review(
        candidate_ids,
        name=name,
        stage=CurationStage.GENERALIST,
        funnel_run=funnel_run,
        mode=mode,
        keep_threshold=keep_threshold if mode == CurationReview.Mode.RATING else 4,
        instructions=(instructions or "").strip() or default,
        lease_seconds=lease_seconds,
        created_by=created_by,
    )


def open_specialist_review(
    source_review: CurationReview,
    name: str,
    *,
    target_size: int,
    instructions: str = "",
    lease_seconds: int = 600,
    created_by=None,
) -> CurationReview:
    """The second human stage over what a generalist stage kept, in its order; done at ``target_size`` selections.

    The generalist stage may still be open: only what it kept so far is taken.
    """
    name = _review_name(name)
    if source_review.stage != CurationStage.GENERALIST:
        raise ReviewError(
            f"{source_review.name} is a {source_review.stage} stage: a specialist stage follows a generalist stage."
        )
    if not isinstance(target_size, int) or target_size < 1:
        raise ReviewError(
            "Give the final dataset's size (the target), at least 1; Emu selected about 2,000.", field="target_size"
        )
    _check_lease_seconds(lease_seconds)
    candidate_ids = list(
        source_review.decisions.filter(keep=True).order_by("position").values_list("candidate_id", flat=True)
    )
    if not candidate_ids:
        raise ReviewError(
            f"The generalist stage {source_review.name} kept no candidates yet, so there is nothing for specialists "
            "to select from."
        )
    return _create_review(
        candidate_ids,
        name=name,
        stage=CurationStage.SPECIALIST,
        funnel_run_id=source_review.funnel_run_id,
        source_review=source_review,
        mode=CurationReview.Mode.KEEP_REJECT,
        target_size=target_size,
        instructions=(instructions or "").strip() or SPECIALIST_INSTRUCTIONS,
        lease_seconds=lease_seconds,
        created_by=created_by,
    )


def _target_reached(review: CurationReview) -> bool:
    return bool(review.target_size) and review.decisions.filter(keep=True).count() >= review.target_size


def next_decision(review: CurationReview, user, now: datetime | None = None) -> CurationDecision | None:
    """The reviewer's open lease, else a new lease on the first free candidate; None when there is nothing to do.

    Nothing to do: every candidate is decided or leased to someone else, the
    specialist target is reached, or the review is closed.
    """
    now = now or timezone.now()
    for attempt in range(60):
        try:
            with transaction.atomic():
                return _next_decision(review, user, now)
        except (CurationBusy, OperationalError):
            time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.random())
    raise ReviewError("Could not hand out a candidate right now; please try again in a moment.")


def _next_decision(review: CurationReview, user, now: datetime) -> CurationDecision | None:
    # One claim per reviewer at a time: a double click waits here, then finds the lease the first click took.
    get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
    fresh = CurationReview.objects.get(pk=review.pk)
    if fresh.status != CurationReview.Status.OPEN or _target_reached(fresh):
        return None
    held = (
        CurationDecision.objects.filter(review=fresh, reviewer=user, decided_at__isnull=True, leased_until__gt=now)
        .order_by("position")
        .first()
    )
    if held is not None:
        return held
    free = CurationDecision.objects.filter(review=fresh, decided_at__isnull=True).filter(
        Q(leased_until__isnull=True) | Q(leased_until__lte=now)
    )
    claimed = free.order_by("position").select_for_update(skip_locked=True).only("id").first()
    if claimed is None:
        if free.exists():
            # What is left is being claimed by others this instant; retry rather than wrongly say "all done".
            raise CurationBusy
        return None
    CurationDecision.objects.filter(pk=claimed.pk).update(
        reviewer=user, leased_until=now + timedelta(seconds=fresh.lease_seconds)
    )
    return CurationDecision.objects.select_related("candidate").get(pk=claimed.pk)


def _clean_seconds(seconds) -> float | None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    return float(seconds) if 0 <= seconds < MAX_CURATION_SECONDS else None


def _clean_decision(review: CurationReview, keep, rating, reasons, caption) -> dict:
    """The fields one decision stores, checked against the stage and mode; refuses with the fix in words."""
    if review.stage == CurationStage.GENERALIST and review.mode == CurationReview.Mode.RATING:
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise ReviewError("Rate the image from 1 to 5.")
        return {"keep": rating >= review.keep_threshold, "rating": rating, "reasons": [], "caption": ""}
    if not isinstance(keep, bool):
        raise ReviewError(
            "Choose keep or reject." if review.stage == CurationStage.GENERALIST else "Choose select or skip."
        )
    if review.stage == CurationStage.GENERALIST or not keep:
        return {"keep": keep, "rating": None, "reasons": [], "caption": ""}
    reasons = list(dict.fromkeys(reasons or ()))
    unknown = [r for r in reasons if r not in SelectionReason.values]
    if unknown:
        raise ReviewError(
            f"Unknown reasons: {', '.join(map(str, unknown))}; choose from {', '.join(SelectionReason.labels)}."
        )
    if not reasons:
        raise ReviewError(
            "Say why this image is selected: tick at least one of composition, lighting, colour and contrast, "
            "subject and background."
        )
    caption = " ".join((caption or "").split())  # one line: the caption is a training prompt
    if not caption:
        raise ReviewError("Write the caption: describe exactly what is in the image.")
    # Stored in the reasons' own order, so the same ticks in another order are the same decision.
    return {
        "keep": True,
        "rating": None,
        "reasons": [r for r in SelectionReason.values if r in reasons],
        "caption": caption,
    }


def decide(
    review: CurationReview,
    decision_id: int,
    user,
    *,
    keep: bool | None = None,
    rating: int | None = None,
    reasons=(),
    caption: str = "",
    seconds: float | None = None,
    now: datetime | None = None,
) -> CurationDecisionResult:
    """Record the reviewer's decision on one candidate, once. A replay returns the first; a change is refused.

    Generalist keep/reject needs ``keep``; rating mode needs ``rating`` (kept at
    or above the review's threshold); a specialist selection (``keep=True``)
    needs at least one reason and a caption, and never takes the selection past
    the target size. Without ``seconds``, time on task is counted from the lease.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # The review row is the lock that counts the specialist's selections (and orders this against closing).
        fresh = CurationReview.objects.select_for_update().get(pk=review.pk)
        decision = (
            CurationDecision.objects.select_for_update(of=("self",))
            .select_related("candidate")
            .filter(pk=decision_id, review=fresh)
            .first()
        )
        if decision is None:
            raise ReviewError("No such candidate in this review.")
        fields = _clean_decision(fresh, keep, rating, reasons, caption)
        if decision.decided_at is not None:
            recorded = {k: getattr(decision, k) for k in fields}
            if decision.reviewer_id == user.pk and recorded == fields:
                return CurationDecisionResult(decision, duplicate=True)
            raise ReviewError("This candidate was already decided; decisions cannot be changed.")
        if fresh.status != CurationReview.Status.OPEN:
            raise ReviewError("This review is closed; your decision was not recorded.")
        if decision.reviewer_id != user.pk:
            raise ReviewError(
                "This candidate is not yours to decide: your time on it ran out and another reviewer took it. "
                "Your decision was not recorded; carry on with the next one."
            )
        if fresh.stage == CurationStage.SPECIALIST and fields["keep"] and _target_reached(fresh):
            raise ReviewError(
                f"The final selection is full ({fresh.target_size} images), so this one was not selected. "
                "The researcher can freeze the selection now."
            )
        measured = _clean_seconds(seconds)
        if measured is None and decision.leased_until is not None:
            # No timing from the page (no JavaScript): the time since the lease began.
            measured = _clean_seconds((now - decision.leased_until).total_seconds() + fresh.lease_seconds)
        for key, value in fields.items():
            setattr(decision, key, value)
        decision.decided_at = now
        decision.seconds_on_task = measured
        decision.save(update_fields=[*fields, "decided_at", "seconds_on_task"])
    return CurationDecisionResult(decision, duplicate=False)


def close_review(review: CurationReview) -> CurationReview:
    """Stop handing out candidates; decisions stay. Idempotent."""
    with transaction.atomic():
        fresh = CurationReview.objects.select_for_update().get(pk=review.pk)
        if fresh.status != CurationReview.Status.CLOSED:
            fresh.status = CurationReview.Status.CLOSED
            fresh.closed_at = timezone.now()
            fresh.save(update_fields=["status", "closed_at"])
    return fresh


def freeze_review(review: CurationReview, dataset_name: str, *, description: str = "", created_by=None):
    """Freeze a specialist stage's selection, with its written captions, into a CuratedDataset; closes the review.

    Idempotent: once frozen, every call returns the same dataset.
    """
    with transaction.atomic():
        fresh = CurationReview.objects.select_for_update().get(pk=review.pk)
        if fresh.dataset_id is not None:
            return fresh.dataset
        if fresh.stage != CurationStage.SPECIALIST:
            raise ReviewError(
                f"{fresh.name} is a generalist stage: open a specialist stage on it and freeze that stage's selection."
            )
        selected = list(fresh.decisions.filter(keep=True).select_related("candidate__collection").order_by("position"))
        if not selected:
            raise ReviewError(f"{fresh.name} has no selected images yet, so there is nothing to freeze.")
        entries = [(d.candidate, d.caption or d.candidate.caption) for d in selected]
        description = (description or "").strip() or (
            f"Specialist stage {fresh.name}: {len(entries)} images selected from funnel run {fresh.funnel_run_id}."
        )
        try:
            dataset = freeze_curated_dataset(dataset_name, entries, description=description, created_by=created_by)
        except TrainingError as exc:
            raise ReviewError(str(exc)) from None
        fresh.dataset = dataset
        fresh.status = CurationReview.Status.CLOSED
        fresh.closed_at = fresh.closed_at or timezone.now()
        fresh.save(update_fields=["dataset", "status", "closed_at"])
    return dataset


def train_aesthetic_head_from_review(
    review: CurationReview, *, clip_model_path: str = "", clip_model_name: str = "", out_path=None
):
    """Train a LAION-format aesthetic head on a rating-mode generalist stage's 1-5 ratings; returns its path.

    The CLIP model defaults to the funnel run's, and the head goes to
    NEEDLE_TRAINING_DIR/aesthetic-heads/<review>.pth unless ``out_path`` says otherwise.
    """

    if review.stage != CurationStage.GENERALIST or review.mode != CurationReview.Mode.RATING:
        raise ReviewError("Only a generalist stage in rating mode has 1-5 ratings to train an aesthetic head on.")
    ratings = [
        (d.candidate, d.rating)
        for d in review.decisions.filter(rating__isnull=False)
        .select_related("candidate__collection")
        .order_by("position")
    ]
    if len(ratings) < 2:
        raise ReviewError("Rate at least a few images first: an aesthetic head needs ratings to learn from.")
    run = review.funnel_run
    clip_model_path = (clip_model_path or "").strip() or run.clip_model_path
    clip_model_name = (clip_model_name or "").strip() or run.clip_model_name
    if not clip_model_path:
        raise ReviewError("Give the local open_clip model the head sits on (its funnel run names none).")
    out_path = (
        Path(out_path) if out_path else Path(settings.NEEDLE_TRAINING_DIR) / "aesthetic-heads" / f"{review.name}.pth"
    )
    try:
        return train_aesthetic_head_from_ratings(
            ratings, clip_model_path=clip_model_path, clip_model_name=clip_model_name, out_path=out_path
        )
    except TrainingError as exc:
        raise ReviewError(str(exc)) from None
