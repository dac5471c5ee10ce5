"""Quality control: gold answers, speeders by the server clock, exclusions, and how a rater's study ends."""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db import OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from core.text import unstorable_text_problem

from ..models import (
    Assignment,
    Campaign,
    ComparisonItem,
    Participation,
    Rater,
    Vote,
)
from .errors import AnnotationError

logger = logging.getLogger(__name__)

# A rater is judged on the gaps between their most recent answers (server clock: the client's own timings can lie),
# once there are enough of them that one quick click does not flag anyone.
SPEEDER_MIN_GAPS = 5
SPEEDER_WINDOW = 20

# --- Quality control --------------------------------------------------------------------------


SCREENED_OUT_VOTE = "This study has ended for you, so this answer was not recorded."


def exclude_if_failing_gold(campaign: Campaign, rater: Rater) -> bool:
    """Exclude the rater once their gold accuracy is below the campaign's bar; True if this call excluded them."""
    gold = Vote.objects.filter(assignment__campaign=campaign, assignment__rater=rater, gold_correct__isnull=False)
    answered = gold.count()
    if answered < campaign.gold_min_answers:
        return False
    correct = gold.filter(gold_correct=True).count()
    if correct / answered >= campaign.gold_min_accuracy:
        return False
    participation = Participation.objects.get(campaign=campaign, rater=rater)
    reason = f"automatic: gold accuracy {correct}/{answered} below {campaign.gold_min_accuracy:.0%}"
    return _exclude_with_retry(participation.pk, reason) is not None


def median_seconds_between_votes(
    campaign: Campaign, rater: Rater, window: int = SPEEDER_WINDOW
) -> tuple[float | None, int]:
    """The median gap between the rater's last ``window`` + 1 answers, by the server's clock, and how many gaps."""
    times = list(
        Vote.objects.filter(assignment__campaign=campaign, assignment__rater=rater)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[: window + 1]
    )
    gaps = [(later - earlier).total_seconds() for later, earlier in zip(times, times[1:])]
    return (statistics.median(gaps) if gaps else None), len(gaps)


def flag_if_speeding(campaign: Campaign, rater: Rater, now: datetime) -> bool:
    """Flag (and, if the campaign says so, exclude) a rater answering faster than pairs can be judged.

    True if this call excluded them. The server's clock decides, not the page's reported seconds, which a script sets
    to anything.
    """
    if campaign.speeder_seconds <= 0:
        return False
    median, gaps = median_seconds_between_votes(campaign, rater)
    if gaps < SPEEDER_MIN_GAPS or median >= campaign.speeder_seconds:
        return False
    participation = Participation.objects.get(campaign=campaign, rater=rater)
    if participation.speeder_flagged_at is None:
        Participation.objects.filter(pk=participation.pk, speeder_flagged_at__isnull=True).update(
            speeder_flagged_at=now, speeder_median_seconds=round(median, 3)
        )
    if not campaign.exclude_speeders or participation.excluded:
        return False
    reason = f"automatic: speeder, median {median:.2f} s between answers, below {campaign.speeder_seconds:g} s"
    return _exclude_with_retry(participation.pk, reason) is not None


EXCLUSION_ATTEMPTS = 5


def exclude_rater(participation: Participation, reason: str) -> int:
    """Stop a rater's votes from counting; they are kept, flagged. Their items reopen. Returns votes flagged.

    Idempotent: excluding twice changes nothing (and returns 0).
    """
    if not isinstance(reason, str):
        raise AnnotationError(f"The reason must be text, not {type(reason).__name__}.", field="reason")
    if problem := unstorable_text_problem(reason, "The reason"):
        raise AnnotationError(problem, field="reason")
    return _exclude_with_retry(participation.pk, reason) or 0


def _exclude_with_retry(participation_id: int, reason: str) -> int | None:
    """Votes flagged, or None if the rater was already excluded.

    Locks rows in one global order (participation, the rater's assignments by id, items by id), as the vote and the
    claim do, and retries if PostgreSQL still breaks a deadlock: two exclusions at once both land.
    """
    reason = (reason or "").strip() or "excluded by a researcher"
    for attempt in range(EXCLUSION_ATTEMPTS):
        try:
            with transaction.atomic():
                return _exclude(participation_id, reason)
        except OperationalError:
            if attempt == EXCLUSION_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def _exclude(participation_id: int, reason: str) -> int | None:
    participation = Participation.objects.select_for_update().get(pk=participation_id)
    if participation.excluded:
        return None
    Participation.objects.filter(pk=participation.pk).update(
        excluded=True, exclusion_reason=reason[:300], excluded_at=timezone.now()
    )
    mine = {"campaign_id": participation.campaign_id, "rater_id": participation.rater_id}
    # The assignment rows first (a vote locks its assignment, then its item), in id order.
    leased = list(
        Assignment.objects.select_for_update()
        .filter(**mine, state=Assignment.State.LEASED)
        .order_by("id")
        .values_list("id", "item_id")
    )
    votes = Vote.objects.filter(**{f"assignment__{k}": v for k, v in mine.items()}, excluded=False)
    counted_items = Counter(votes.on_regular_items().values_list("assignment__item_id", flat=True))
    flagged = votes.update(excluded=True)
    Assignment.objects.filter(id__in=[a for a, _ in leased]).update(state=Assignment.State.EXPIRED)
    released = Counter(item for _, item in leased)
    # One pass over the items in id order: votes given back and leases released together, never two passes that
    # another exclusion could interleave with in the opposite order.
    for item_id in sorted(set(counted_items) | set(released)):
        n, leases = counted_items.get(item_id, 0), released.get(item_id, 0)
        ComparisonItem.objects.regular().filter(pk=item_id).update(
            votes=F("votes") - n, open_leases=F("open_leases") - leases, remaining=F("remaining") + n + leases
        )
        if leases:
            ComparisonItem.objects.gold().filter(pk=item_id).update(open_leases=F("open_leases") - leases)
    return flagged


@dataclass(frozen=True)
class RaterEnding:
    """How a rater's participation ended: the code they hand to the crowd platform, or where they are sent."""

    screened_out: bool  # excluded by quality control: the screen-out code, never the completion code
    code: str
    url: str  # "" when the page shows the code instead


def _with_code(url: str, code: str) -> str:
    return url.replace("{code}", code) if url else ""


def rater_ending(participation: Participation) -> RaterEnding | None:
    """The rater's ending, or None while they still have work: excluded raters always get the screen-out one."""
    campaign = participation.campaign
    if participation.excluded:
        return RaterEnding(
            True, campaign.screen_out_code, _with_code(campaign.screen_out_url, campaign.screen_out_code)
        )
    if participation.completed_at is not None:
        return RaterEnding(
            False, campaign.completion_code, _with_code(campaign.completion_url, campaign.completion_code)
        )
    return None


def end_if_out_of_tasks(participation: Participation) -> RaterEnding:
    """Called when the engine has no task left for the rater: complete them (unless excluded) and say how it ended."""
    if not participation.excluded:
        complete_if_done(participation)
    ending = rater_ending(participation)
    assert ending is not None
    return ending


def complete_if_done(participation: Participation) -> None:
    if participation.completed_at is None:
        Participation.objects.filter(pk=participation.pk, completed_at__isnull=True).update(completed_at=timezone.now())
        participation.refresh_from_db(fields=["completed_at"])
