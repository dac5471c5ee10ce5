"""Campaign operations and the assignment engine.

The engine hands each rater the next comparison item under three rules that
must hold with hundreds of raters at once: a rater never sees an item twice,
an item never collects more than k votes (votes + open leases <= k), and items
fill depth-first so a campaign stopped early still has complete majorities.
On PostgreSQL the next item is claimed with ``FOR UPDATE SKIP LOCKED``; on
SQLite (the demo) writers are serialised by the database instead.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from generation import selectors as generation_selectors
from generation import services as generation_services

from .models import (
    CRITERION_DEFAULTS,
    Assignment,
    Campaign,
    CampaignCriterion,
    Choice,
    ComparisonItem,
    Criterion,
    Rater,
    Vote,
)


class AnnotationError(Exception):
    """Refused; the message says why in words the user can act on."""


# --- Campaigns ---------------------------------------------------------------------------------


def create_campaign(
    *,
    name: str,
    model_a,
    model_b,
    prompt_set,
    seeds: list[int],
    criteria: dict[str, dict] | None = None,
    lease_seconds: int = 600,
    quota_per_rater: int = 0,
    created_by=None,
) -> Campaign:
    """A draft campaign. ``criteria`` maps criterion -> overrides of CRITERION_DEFAULTS ({} keeps them)."""
    if model_a.pk == model_b.pk:
        raise AnnotationError("Choose two different models.")
    if Campaign.objects.filter(name=name).exists():
        raise AnnotationError(f"A campaign named {name!r} already exists.")
    if not seeds:
        raise AnnotationError("Give at least one seed.")
    criteria = criteria if criteria is not None else {c.value: {} for c in Criterion}
    if not criteria:
        raise AnnotationError("Choose at least one criterion.")
    unknown = set(criteria) - set(Criterion.values)
    if unknown:
        raise AnnotationError(f"Unknown criteria: {', '.join(sorted(unknown))}.")
    resolved = []
    for criterion, overrides in criteria.items():
        spec = {**CRITERION_DEFAULTS[criterion], **(overrides or {})}
        if not 1 <= int(spec["votes_per_item"]) <= 50:
            raise AnnotationError("Raters per comparison must be between 1 and 50.")
        bad = set(spec["choices"]) - set(Choice.values)
        if bad or not {"left", "right"} <= set(spec["choices"]):
            raise AnnotationError(f"Choices must include left and right and come from {', '.join(Choice.values)}.")
        resolved.append((criterion, spec))
    with transaction.atomic():
        campaign = Campaign.objects.create(
            name=name, model_a=model_a, model_b=model_b, prompt_set=prompt_set, seeds=list(seeds),
            lease_seconds=lease_seconds, quota_per_rater=quota_per_rater, created_by=created_by,
        )
        CampaignCriterion.objects.bulk_create(
            CampaignCriterion(
                campaign=campaign, criterion=c, instructions=s["instructions"], votes_per_item=s["votes_per_item"],
                choices=list(s["choices"]), show_prompt=s["show_prompt"],
            )
            for c, s in resolved
        )
    return campaign


def generation_batch_for(campaign: Campaign, parameters: dict | None = None):
    """A generation batch for the campaign's two models, prompts and seeds (images that exist are reused)."""
    return generation_services.create_batch(
        models=[campaign.model_a, campaign.model_b], prompt_set=campaign.prompt_set, seeds=campaign.seeds,
        parameters=parameters, name=f"campaign: {campaign.name}",
    )


def build_items(campaign: Campaign, batch) -> int:
    """Create the comparison items from a complete generation batch; idempotent. Returns items created."""
    progress = generation_selectors.batch_progress(batch)
    if not progress.complete:
        raise AnnotationError(f"The images are not ready yet ({progress.done} of {progress.total}).")
    bms = {bm.model_id: bm for bm in batch.batch_models.all()}
    images = {}
    for model in (campaign.model_a, campaign.model_b):
        for image in generation_selectors.images_for(bms[model.pk], batch):
            images[model.pk, image.prompt_id, image.seed] = image
    keys = generation_selectors.batch_keys(batch)
    rows = [
        ComparisonItem(
            campaign=campaign, criterion=criterion,
            image_a=images[campaign.model_a_id, k.prompt_id, k.seed], image_b=images[campaign.model_b_id, k.prompt_id, k.seed],
        )
        for criterion in campaign.criteria.all()
        for k in keys
    ]
    before = campaign.items.count()
    ComparisonItem.objects.bulk_create(rows, ignore_conflicts=True)
    return campaign.items.count() - before


def set_status(campaign: Campaign, status: str) -> None:
    allowed = {
        Campaign.Status.DRAFT: {Campaign.Status.LIVE},
        Campaign.Status.LIVE: {Campaign.Status.PAUSED, Campaign.Status.CLOSED},
        Campaign.Status.PAUSED: {Campaign.Status.LIVE, Campaign.Status.CLOSED},
        Campaign.Status.CLOSED: set(),
    }
    if status not in allowed[campaign.status]:
        raise AnnotationError(f"A {campaign.status} campaign cannot become {status}.")
    if status == Campaign.Status.LIVE and not campaign.items.exists():
        raise AnnotationError("The campaign has no comparison items yet: generate its images and build the items first.")
    Campaign.objects.filter(pk=campaign.pk).update(status=status)
    campaign.status = status


# --- Assignment engine ------------------------------------------------------------------------


def expire_leases(campaign: Campaign, now: datetime) -> int:
    """Return abandoned tasks to the pool. Rows another transaction holds are left for it."""
    stale = list(
        Assignment.objects.select_for_update(skip_locked=True)
        .filter(campaign=campaign, state=Assignment.State.LEASED, expires_at__lte=now)
        .values_list("id", "item_id")
    )
    if not stale:
        return 0
    Assignment.objects.filter(id__in=[a for a, _ in stale]).update(state=Assignment.State.EXPIRED)
    for item_id, n in sorted(Counter(item for _, item in stale).items()):
        ComparisonItem.objects.filter(pk=item_id).update(open_leases=F("open_leases") - n)
    return len(stale)


def _placement(campaign: Campaign, rater: Rater) -> bool:
    """True: model A on the left. Keeps every rater within +-1, and leans toward the campaign's balance."""
    counts = Counter(Assignment.objects.filter(campaign=campaign, rater=rater).values_list("a_on_left", flat=True))
    if counts[True] != counts[False]:
        return counts[True] < counts[False]
    balance = Campaign.objects.select_for_update().values_list("left_balance", flat=True).get(pk=campaign.pk)
    if balance:
        return balance < 0
    return random.random() < 0.5


def next_assignment(campaign: Campaign, rater: Rater, now: datetime | None = None) -> Assignment | None:
    """The rater's current task, or a new lease on the fullest item they have not seen; None when done."""
    now = now or timezone.now()
    for attempt in range(50):
        try:
            with transaction.atomic():
                return _next_assignment(campaign, rater, now)
        except (_ItemsBusy, IntegrityError, OperationalError):
            # Remaining items locked by others, a rater racing themselves past
            # the lock, or PostgreSQL breaking a rare deadlock: retry shortly.
            time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.random())
    raise AnnotationError("Could not hand out a task right now; please try again.")


class _ItemsBusy(Exception):
    pass


def _next_assignment(campaign: Campaign, rater: Rater, now: datetime) -> Assignment | None:
    Rater.objects.select_for_update().filter(pk=rater.pk).exists()  # one request per rater at a time
    status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
    if status != Campaign.Status.LIVE:
        raise AnnotationError("This campaign is not open for voting right now.")
    current = Assignment.objects.filter(campaign=campaign, rater=rater, state=Assignment.State.LEASED, expires_at__gt=now).first()
    if current is not None:
        return current
    if campaign.quota_per_rater:
        done = Assignment.objects.filter(campaign=campaign, rater=rater).exclude(state=Assignment.State.EXPIRED).count()
        if done >= campaign.quota_per_rater:
            return None
    expire_leases(campaign, now)
    candidates = (
        ComparisonItem.objects.filter(campaign=campaign, votes__lt=F("criterion__votes_per_item") - F("open_leases"))
        .exclude(assignments__rater=rater)
        .order_by(-(F("votes") + F("open_leases")), "id")  # depth-first
    )
    item = candidates.select_for_update(skip_locked=True, of=("self",)).first()
    if item is None:
        if candidates.exists():
            # What is left is locked by other raters at this instant (the last
            # items of a campaign). Waiting on those locks here could deadlock;
            # retry shortly instead of wrongly saying "no more tasks".
            raise _ItemsBusy
        return None
    a_on_left = _placement(campaign, rater)
    assignment = Assignment.objects.create(
        item=item, rater=rater, campaign=campaign, a_on_left=a_on_left,
        expires_at=now + timedelta(seconds=campaign.lease_seconds),
    )
    ComparisonItem.objects.filter(pk=item.pk).update(open_leases=F("open_leases") + 1)
    Campaign.objects.filter(pk=campaign.pk).update(left_balance=F("left_balance") + (1 if a_on_left else -1))
    return assignment


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    duplicate: bool  # True when this submission repeated one already recorded


def submit_vote(rater: Rater, token: str, choice: str, seconds_on_task: float | None = None, now: datetime | None = None) -> VoteResult:
    """Record the rater's choice for their assignment ``token``, once. A replay returns the first vote."""
    now = now or timezone.now()
    with transaction.atomic():
        assignment = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("item__criterion", "campaign")
            .filter(token=token, rater=rater)
            .first()
        )
        if assignment is None:
            raise AnnotationError("No such task for you.")  # another rater's token reads the same as a made-up one
        existing = Vote.objects.filter(assignment=assignment).first()
        if existing is not None:
            if existing.choice != choice:
                raise AnnotationError("You already answered this task; answers cannot be changed.")
            return VoteResult(existing, duplicate=True)
        if assignment.campaign.status == Campaign.Status.CLOSED:
            raise AnnotationError("This campaign is closed; your answer was not recorded.")
        if assignment.state != Assignment.State.LEASED or assignment.expires_at <= now:
            raise AnnotationError("This task expired and went back to the pool; your answer was not recorded.")
        if choice not in assignment.item.criterion.choices:
            raise AnnotationError(f"{choice!r} is not a choice for this question.")
        if choice in (Choice.LEFT, Choice.RIGHT):
            a_won = (choice == Choice.LEFT) == assignment.a_on_left
            winner = Vote.Winner.A if a_won else Vote.Winner.B
        else:
            winner = Vote.Winner.TIE
        if seconds_on_task is not None and not 0 <= seconds_on_task < 86_400:
            seconds_on_task = None
        vote = Vote.objects.create(assignment=assignment, choice=choice, winner=winner, seconds_on_task=seconds_on_task)
        Assignment.objects.filter(pk=assignment.pk).update(state=Assignment.State.VOTED)
        ComparisonItem.objects.filter(pk=assignment.item_id).update(votes=F("votes") + 1, open_leases=F("open_leases") - 1)
    return VoteResult(vote, duplicate=False)
