"""The assignment engine: leases each rater their next comparison items.

Three rules must hold with hundreds of raters at once: a rater never sees an item twice, an item never collects
more than k counting votes (votes + open leases <= k), and items fill depth-first so a campaign stopped early still
has complete majorities. An adaptive campaign's model pairs come in the order of their items' ``pair_priority``
(0 in a uniform campaign), depth-first within a pair. On PostgreSQL the next item is claimed with
``FOR UPDATE SKIP LOCKED`` along the partial indexes ``item_open_depth_first(_crit)``, in one statement with the
lease it creates (``_CLAIM_SQL``); on SQLite (the demo) the ORM does the same steps and the database serialises
writers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections import Counter
from datetime import datetime, timedelta

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Subquery, Sum
from django.utils import timezone

from generation.models import GeneratedImage, Prompt

from ..models import (
    Assignment,
    Campaign,
    CampaignCriterion,
    ComparisonItem,
    Participation,
    PlacementCounter,
    Rater,
    new_token,
)
from .errors import AnnotationError

logger = logging.getLogger(__name__)

# Tasks a rater holds at once: the one on screen and the next, whose images the
# page preloads so the switch after a vote is instant.
LOOKAHEAD = 2


# --- Assignment engine ------------------------------------------------------------------------

# Sweeping stale leases on every request would rescan the lease index on every
# round trip; once a few seconds per process is enough (and a claim that finds
# nothing sweeps at once, so an abandoned last item is never stranded).
SWEEP_EVERY = timedelta(seconds=5)
_last_sweep: dict[int, datetime] = {}


def expire_leases(campaign: Campaign | int, now: datetime) -> int:
    """Return abandoned tasks to the pool. Rows another transaction holds are left for it."""
    campaign_id = getattr(campaign, "pk", campaign)
    with transaction.atomic():
        stale = list(
            Assignment.objects.select_for_update(skip_locked=True)
            .filter(campaign_id=campaign_id, state=Assignment.State.LEASED, expires_at__lte=now)
            .values_list("id", "item_id")
        )
        if not stale:
            return 0
        Assignment.objects.filter(id__in=[a for a, _ in stale]).update(state=Assignment.State.EXPIRED)
        _release_slots(Counter(item for _, item in stale))
    return len(stale)


def _release_slots(per_item: Counter) -> None:
    # Sorted, so two transactions releasing overlapping items lock them in the same order.
    for item_id, n in sorted(per_item.items()):
        ComparisonItem.objects.regular().filter(pk=item_id).update(
            open_leases=F("open_leases") - n, remaining=F("remaining") + n
        )
        ComparisonItem.objects.gold().filter(pk=item_id).update(open_leases=F("open_leases") - n)


def _maybe_sweep(campaign_id: int, now: datetime) -> None:
    last = _last_sweep.get(campaign_id)
    if last is None or not last <= now < last + SWEEP_EVERY:
        _last_sweep[campaign_id] = now
        expire_leases(campaign_id, now)


def _gold_is_due(participation: Participation, tasks_so_far: int, gold_share: float) -> bool:
    """Exactly ``gold_share`` of a rater's tasks are gold, evenly spread with a per-rater random phase."""
    if gold_share <= 0:
        return False
    phase = int(hashlib.sha256(participation.token.encode()).hexdigest()[:8], 16) / 16**8
    return math.floor(gold_share * (tasks_so_far + 1) + phase) > math.floor(gold_share * tasks_so_far + phase)


# How far a rater's left/right balance may stray. At +-1 every other side is forced, so a rater who could tell
# the models apart knew where A would be in every second pair; at +-2 a side is forced only at the edge.
PLACEMENT_BOUND = 2


def _placement(campaign_id: int, participation: Participation, last_regular: bool = False) -> bool:
    """True: model A on the left. A random walk per rater, within +-PLACEMENT_BOUND at every moment and within
    +-1 after the rater's last regular task (``last_regular``: their quota leaves no other); at balance 0 it
    leans toward the campaign's balance.

    Per rater the bound is exact (the participation row is locked). Per
    campaign it is a tendency: the campaign can drift by up to the bound times
    the raters active at once, and the lock-free sharded counter can lag by
    the transactions in flight.
    """
    balance = participation.placement_balance
    bound = 1 if last_regular else PLACEMENT_BOUND
    if balance + 1 > bound:
        return False
    if balance - 1 < -bound:
        return True
    if balance:
        return random.random() < 0.5
    campaign = PlacementCounter.objects.filter(campaign_id=campaign_id).aggregate(total=Sum("balance"))["total"] or 0
    if campaign:
        return campaign < 0
    return random.random() < 0.5


def _last_regular_task(participation: Participation, taken: int, quota: int, gold_share: float) -> bool:
    """Whether the rater's quota leaves no regular task after this one (gold due in every later slot, or none)."""
    return bool(quota) and not any(not _gold_is_due(participation, t, gold_share) for t in range(taken + 1, quota))


# A rater answers one criterion for a few pairs in a row, then the next: fewer switches of question than
# interleaving every pair, while every criterion still draws on every rater (depth-first needs k distinct raters).
CRITERION_BLOCK = 5


def _scheduled_criterion(criteria: list[tuple[int, int]], participation: Participation, tasks_so_far: int) -> int:
    """The criterion (of ``(id, k)`` pairs) of the rater's next task: blocks of CRITERION_BLOCK, in proportion to k.

    Every criterion has the same comparisons, so its share of all vote slots
    is its k: with Emu's 5 and 3, five blocks of appeal for every three of
    faithfulness, so a campaign stopped early has both equally far along
    (ordering by remaining slots alone would fill all k=3 items first). A
    smooth weighted round robin spreads the blocks evenly; a per-rater phase
    keeps raters who start together on different criteria.
    """
    phase = int(hashlib.sha256(participation.token.encode()).hexdigest()[8:16], 16) % 64
    total = sum(k for _, k in criteria)
    credit = dict.fromkeys((c for c, _ in criteria), 0)
    for _ in range(tasks_so_far // CRITERION_BLOCK + phase + 1):
        for criterion_id, k in criteria:
            credit[criterion_id] += k
        chosen = max(credit, key=lambda c: (credit[c], -c))
        credit[chosen] -= total
    return chosen


class _ItemsBusy(Exception):
    pass


def open_tasks(
    campaign: Campaign, rater: Rater, want: int = LOOKAHEAD, now: datetime | None = None
) -> list[Assignment]:
    """The rater's open tasks, oldest first, leasing new ones until there are ``want`` (or none are left)."""
    now = now or timezone.now()
    for attempt in range(60):
        try:
            with transaction.atomic():
                return _open_tasks(campaign, rater, want, now)
        except (_ItemsBusy, IntegrityError, OperationalError):
            # Remaining items locked by others, a rater racing themselves past
            # the lock, or PostgreSQL breaking a rare deadlock: retry shortly.
            time.sleep(min(0.2, 0.005 * 2 ** min(attempt, 6)) * random.random())
    raise AnnotationError("Could not hand out a task right now; please try again in a moment.")


def next_assignment(campaign: Campaign, rater: Rater, now: datetime | None = None) -> Assignment | None:
    """The rater's current task, or a new lease on the next item for them; None when they are done."""
    tasks = open_tasks(campaign, rater, want=1, now=now)
    return tasks[0] if tasks else None


def _locked_participation(campaign: Campaign, rater: Rater) -> Participation:
    """The rater's participation row, locked, with the campaign's current settings read in the same statement."""
    prompts = (
        Prompt.objects.filter(prompt_set=OuterRef("campaign__prompt_set"))
        .order_by()
        .values("prompt_set")
        .annotate(n=Count("*"))
        .values("n")
    )
    locked = (
        Participation.objects.select_for_update(of=("self",))
        .select_related("campaign")
        .annotate(campaign_prompts=Subquery(prompts))
        .filter(campaign=campaign, rater=rater)
    )
    participation = locked.first()
    if participation is None:
        # Raters normally arrive through an invitation; the engine enrols anyone else on first use.
        Participation.objects.create(campaign=campaign, rater=rater)
        participation = locked.get()
    return participation


def _open_tasks(campaign: Campaign, rater: Rater, want: int, now: datetime) -> list[Assignment]:
    participation = _locked_participation(campaign, rater)  # one request per rater at a time
    fresh = {
        f: getattr(participation.campaign, f) for f in ("status", "quota_per_rater", "gold_share", "lease_seconds")
    }
    fresh["prompts"] = participation.campaign_prompts or 1
    if fresh["status"] != Campaign.Status.LIVE:
        raise AnnotationError("This study is paused or closed right now; please come back later.")
    # Every lease not yet marked expired, stale ones too: with the votes (the row's counter, read under its lock)
    # they are the tasks handed out so far, which the quota and the gold and criterion schedules go by.
    leased = list(
        Assignment.objects.filter(campaign=campaign, rater=rater, state=Assignment.State.LEASED).order_by("id")
    )
    held = [a for a in leased if a.expires_at > now]
    if participation.excluded or len(held) >= want:
        return held[:want] if not participation.excluded else []
    _maybe_sweep(campaign.pk, now)
    criteria = list(
        CampaignCriterion.objects.filter(campaign=campaign).order_by("id").values_list("id", "votes_per_item")
    )
    taken = participation.answered + len(leased)
    while len(held) < want:
        if fresh["quota_per_rater"] and taken >= fresh["quota_per_rater"]:
            break
        assignment = _lease_one(campaign, rater, participation, taken, fresh, criteria, now)
        if assignment is None:
            break
        held.append(assignment)
        taken += 1
    return held


def _lease_one(campaign, rater, participation, taken: int, fresh: dict, criteria, now: datetime) -> Assignment | None:
    expires_at = now + timedelta(seconds=fresh["lease_seconds"])
    if _gold_is_due(participation, taken, fresh["gold_share"]):
        gold = (
            ComparisonItem.objects.gold()
            .filter(campaign=campaign)
            .exclude(assignments__rater=rater)
            .order_by("?")
            .first()
        )
        if gold is not None:
            # Gold items have no k: any number of raters may answer them, so no claim is needed.
            ComparisonItem.objects.filter(pk=gold.pk).update(open_leases=F("open_leases") + 1)
            return Assignment.objects.create(
                item=gold, rater=rater, campaign=campaign, a_on_left=random.random() < 0.5, expires_at=expires_at
            )
    last = _last_regular_task(participation, taken, fresh["quota_per_rater"], fresh["gold_share"])
    a_on_left = _placement(campaign.pk, participation, last)
    scheduled = _scheduled_criterion(criteria, participation, taken) if len(criteria) > 1 else None
    # The scheduled criterion first; then any (one criterion, or the scheduled one has nothing left for this
    # rater, or nothing free right now).
    prompts = fresh["prompts"]
    assignment = _claim(campaign, rater, scheduled, a_on_left, expires_at, prompts) if scheduled else None
    assignment = assignment or _claim(campaign, rater, None, a_on_left, expires_at, prompts)
    if assignment is None:
        expire_leases(campaign, now)
        if _unseen_pairs(campaign, rater).filter(remaining__gt=0).exists():
            # What is left is locked by other raters at this instant (the last
            # items of a campaign). Waiting on those locks here could deadlock;
            # retry shortly instead of wrongly saying "no more tasks".
            raise _ItemsBusy
        return None
    step = 1 if a_on_left else -1
    participation.placement_balance += step
    Participation.objects.filter(pk=participation.pk).update(placement_balance=participation.placement_balance)
    PlacementCounter.objects.filter(campaign=campaign, shard=rater.pk % PlacementCounter.SHARDS).update(
        balance=F("balance") + step
    )
    return assignment


# The claim is the statement every rater request runs. On PostgreSQL it is one
# statement: pick the open item depth-first (after the pair's priority: always 0 in a uniform campaign, set per
# model pair in an adaptive one), skipping rows other raters hold,
# take a slot from it and insert the lease, in a data-modifying CTE; the ORM
# version (in _claim, for other databases) needs three round trips and most of
# the request's Python time. Both take the same row lock, in the same order, and say the same thing.
#
# Items of one pair under other criteria share (image_a, image_b): matching on the images, rather than on the item,
# keeps a rater who saw the prompt (faithfulness) from judging the pair without it (appeal), and vice versa.
# The prompt spread is a fallback chain (avoid the last few prompts, then the last one, then none) inside COALESCE,
# whose later sub-selects PostgreSQL runs only when the earlier ones found nothing: one statement still, and the
# usual case costs one index scan, as before.
_CLAIM_SQL = """
WITH recent AS (
    SELECT g.prompt_id, row_number() OVER (ORDER BY last.id DESC) AS n
    FROM (
        SELECT r.id, r.item_id FROM {assignment} r WHERE r.rater_id = %(rater)s AND r.campaign_id = %(campaign)s
        ORDER BY r.id DESC LIMIT %(spread)s
    ) last JOIN {item} ri ON ri.id = last.item_id JOIN {image} g ON g.id = ri.image_a_id
), claimed AS (
    SELECT id FROM (SELECT COALESCE({picks}) AS id) pick WHERE id IS NOT NULL
), leased AS (
    UPDATE {item} i SET open_leases = i.open_leases + 1, remaining = i.remaining - 1
    FROM claimed WHERE i.id = claimed.id
    RETURNING i.id
)
INSERT INTO {assignment} (item_id, rater_id, campaign_id, token, a_on_left, state, leased_at, expires_at)
SELECT leased.id, %(rater)s, %(campaign)s, %(token)s, %(a_on_left)s, %(state)s, %(leased_at)s, %(expires_at)s FROM leased
RETURNING id, item_id
"""

_PICK_SQL = """(
    SELECT i.id FROM {item} i
    WHERE i.campaign_id = %(campaign)s AND i.remaining > 0 {criterion_filter}
      AND NOT EXISTS (
        SELECT 1 FROM {item} same JOIN {assignment} seen ON seen.item_id = same.id AND seen.rater_id = %(rater)s
        WHERE same.image_a_id = i.image_a_id AND same.image_b_id = i.image_b_id
      ) {prompt_filter}
    ORDER BY i.pair_priority, i.remaining, i.id
    LIMIT 1
    FOR UPDATE OF i SKIP LOCKED
)"""

_NOT_RECENT_PROMPT_SQL = """
      AND (SELECT g.prompt_id FROM {image} g WHERE g.id = i.image_a_id) NOT IN (SELECT prompt_id FROM recent WHERE n <= {n})"""

# Consecutive tasks come from different prompts as far as the pool allows: a rater who met one prompt in 8 of
# their first 10 pairs judged that prompt more than the pairs. Any PROMPT_SPREAD tasks in a row are of different
# prompts while the rater's unseen open items allow it; then any two in a row; then whatever is left.
PROMPT_SPREAD = 4


def _spread_tiers(prompts: int) -> list[int]:
    """How many of the rater's last prompts each claim attempt avoids, most first (0: any prompt)."""
    window = max(0, min(PROMPT_SPREAD - 1, prompts - 1))
    return sorted({window, min(window, 1), 0}, reverse=True)


def single_statement_writes() -> bool:
    """Whether the claim and the vote run as one SQL statement each (PostgreSQL), rather than through the ORM."""
    return connection.vendor == "postgresql"


def _unseen_pairs(campaign, rater):
    """The campaign's items whose pair (same images, so same prompt, seed and models) ``rater`` has not met."""
    met = Assignment.objects.filter(
        rater=rater, item__image_a_id=OuterRef("image_a_id"), item__image_b_id=OuterRef("image_b_id")
    )
    return ComparisonItem.objects.filter(campaign=campaign).filter(~Exists(met))


def _claim(
    campaign, rater, criterion_id: int | None, a_on_left: bool, expires_at: datetime, prompts: int = 1
) -> Assignment | None:
    """Lease the open item closest to its k votes (in ``criterion_id``, or any; of the most wanted model pair first,
    by ``pair_priority``) whose pair ``rater`` has not met,
    from a prompt they did not meet in their last few tasks if there is one; or None.

    ``prompts`` is how many prompts the campaign has (the spread never asks for more).
    """
    tiers = _spread_tiers(prompts)
    if single_statement_writes():
        tables = {
            "item": ComparisonItem._meta.db_table,
            "assignment": Assignment._meta.db_table,
            "image": GeneratedImage._meta.db_table,
        }
        criterion_filter = "AND i.criterion_id = %(criterion)s" if criterion_id else ""
        picks = ", ".join(
            _PICK_SQL.format(
                **tables,
                criterion_filter=criterion_filter,
                prompt_filter=_NOT_RECENT_PROMPT_SQL.format(**tables, n=int(n)) if n else "",
            )
            for n in tiers
        )
        sql = _CLAIM_SQL.format(**tables, picks=picks)
        token, leased_at = new_token(), timezone.now()
        params = {
            "campaign": campaign.pk,
            "rater": rater.pk,
            "criterion": criterion_id,
            "token": token,
            "a_on_left": a_on_left,
            "state": Assignment.State.LEASED,
            "leased_at": leased_at,
            "expires_at": expires_at,
            "spread": tiers[0],
        }
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        assignment = Assignment(
            id=row[0],
            item_id=row[1],
            rater=rater,
            campaign=campaign,
            token=token,
            a_on_left=a_on_left,
            state=Assignment.State.LEASED,
            leased_at=leased_at,
            expires_at=expires_at,
        )
        assignment._state.adding, assignment._state.db = False, connection.alias
        return assignment
    candidates = _unseen_pairs(campaign, rater).filter(remaining__gt=0)
    if criterion_id:
        candidates = candidates.filter(criterion_id=criterion_id)
    recent = list(
        Assignment.objects.filter(campaign=campaign, rater=rater)
        .order_by("-id")
        .values_list("item__image_a__prompt_id", flat=True)[: tiers[0]]
    )
    for n in tiers:
        # A subquery, not a join: FOR UPDATE must lock the item alone, never an image other items share.
        choice = (
            candidates.exclude(image_a__in=GeneratedImage.objects.filter(prompt_id__in=recent[:n])) if n else candidates
        )
        item = (
            choice.order_by("pair_priority", "remaining", "id").select_for_update(skip_locked=True).only("id").first()
        )
        if item is not None:
            break
    else:
        return None
    assignment = Assignment.objects.create(
        item=item, rater=rater, campaign=campaign, a_on_left=a_on_left, expires_at=expires_at
    )
    ComparisonItem.objects.filter(pk=item.pk).update(open_leases=F("open_leases") + 1, remaining=F("remaining") - 1)
    return assignment
