"""Votes: recorded once (idempotent), inside the lease, counted toward each item's k."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import OperationalError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from ..models import (
    Assignment,
    Campaign,
    Choice,
    ComparisonItem,
    Participation,
    Rater,
    Vote,
)
from . import assignment
from .errors import AnnotationError
from .quality_control import SCREENED_OUT_VOTE, exclude_if_failing_gold, flag_if_speeding

logger = logging.getLogger(__name__)

# --- Votes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    duplicate: bool  # True when this submission repeated one already recorded
    ended: bool = False  # True when quality control ended the rater's participation (gold, speed) after this vote


class ParticipationEnded(AnnotationError):
    """The rater was excluded: nothing more is recorded for them, and they are shown the screen-out ending."""

    code = "participation_ended"


def submit_vote(
    rater: Rater,
    token: str,
    choice: str,
    seconds_on_task: float | None = None,
    now: datetime | None = None,
    campaign: Campaign | None = None,
) -> VoteResult:
    """Record the rater's choice for their assignment ``token``, once. A replay returns the first vote.

    ``campaign`` pins the task to one campaign (an invited account may rate in several).
    """
    now = now or timezone.now()
    with transaction.atomic():
        assignments = Assignment.objects.filter(token=token, rater=rater)
        if campaign is not None:
            assignments = assignments.filter(campaign=campaign)
        assignment = (
            assignments.select_for_update(of=("self",))
            .select_related("item__criterion", "campaign", "vote")
            .annotate(
                rater_excluded=Exists(
                    Participation.objects.filter(
                        campaign_id=OuterRef("campaign_id"), rater_id=OuterRef("rater_id"), excluded=True
                    )
                )
            )
            .first()
        )
        if assignment is None:
            raise AnnotationError("No such task for you.")  # another rater's token reads the same as a made-up one
        existing = getattr(assignment, "vote", None)
        if existing is None and assignment.state == Assignment.State.VOTED:
            # A concurrent copy of this vote committed while we waited for the row lock: the lock re-reads the
            # assignment, but the joined vote came from the statement's older snapshot. Read it afresh.
            existing = Vote.objects.filter(assignment=assignment).first()
        if existing is not None:
            if existing.choice != choice:
                raise AnnotationError("You already answered this task; answers cannot be changed.")
            return VoteResult(existing, duplicate=True)
        if assignment.campaign.status == Campaign.Status.CLOSED:
            raise AnnotationError("This study is closed; your answer was not recorded.")
        if assignment.campaign.status == Campaign.Status.PAUSED:
            # A pause stops the study, not only new tasks; leases stay, so the
            # same task can be answered once it resumes (if still in time).
            raise AnnotationError(
                "This study is paused right now, so your answer was not recorded. Please come back later."
            )
        if assignment.rater_excluded:
            # Exclusion expired the rater's open tasks; telling them the task "expired" would be false.
            raise ParticipationEnded(SCREENED_OUT_VOTE)
        if assignment.state != Assignment.State.LEASED or assignment.expires_at <= now:
            raise AnnotationError("This task expired and went back to the pool; your answer was not recorded.")
        item = assignment.item
        if choice not in item.criterion.choices:
            raise AnnotationError(f"{choice!r} is not a choice for this question.")
        if choice in (Choice.LEFT, Choice.RIGHT):
            a_won = (choice == Choice.LEFT) == assignment.a_on_left
            winner = Vote.Winner.A if a_won else Vote.Winner.B
        else:
            winner = Vote.Winner.TIE
        if seconds_on_task is not None and not (
            isinstance(seconds_on_task, (int, float)) and 0 <= seconds_on_task < 86_400
        ):
            seconds_on_task = None
        vote = Vote(
            assignment=assignment,
            choice=choice,
            winner=winner,
            seconds_on_task=seconds_on_task,
            excluded=False,
            gold_correct=(winner == Vote.Winner.A) if item.is_gold else None,  # A is the intact image
        )
        _record_vote(vote, item.pk)
    # Quality control runs after the vote is committed: a check that fails (or must retry) never loses the vote.
    try:
        ended = exclude_if_failing_gold(assignment.campaign, rater) if item.is_gold else False
        ended = flag_if_speeding(assignment.campaign, rater, now) or ended
    except OperationalError:
        # The vote is stored and must be acknowledged; the checks run again on the rater's next answer.
        logger.exception(
            "quality control for rater %s in campaign %s failed; retried on their next vote",
            rater.pk,
            assignment.campaign_id,
        )
        ended = False
    return VoteResult(vote, duplicate=False, ended=ended)


_RECORD_VOTE_SQL = """
WITH vote AS (
    INSERT INTO {vote} (assignment_id, choice, winner, seconds_on_task, excluded, gold_correct, created_at)
    VALUES (%(assignment)s, %(choice)s, %(winner)s, %(seconds)s, %(excluded)s, %(gold_correct)s, %(created_at)s)
    RETURNING id
), answered AS (
    UPDATE {assignment} SET state = %(voted)s WHERE id = %(assignment)s RETURNING id
), item AS (
    UPDATE {item} SET votes = votes + 1, open_leases = open_leases - 1
    WHERE id = %(item)s RETURNING id
)
SELECT vote.id FROM vote, answered, item
"""


def _record_vote(vote: Vote, item_id: int) -> None:
    """Insert the vote, mark its assignment voted, move the item's counters: one statement on PostgreSQL."""
    if not assignment.single_statement_writes():
        vote.save(force_insert=True)
        Assignment.objects.filter(pk=vote.assignment_id).update(state=Assignment.State.VOTED)
        ComparisonItem.objects.filter(pk=item_id).update(votes=F("votes") + 1, open_leases=F("open_leases") - 1)
        return
    vote.created_at = timezone.now()
    sql = _RECORD_VOTE_SQL.format(
        vote=Vote._meta.db_table, assignment=Assignment._meta.db_table, item=ComparisonItem._meta.db_table
    )
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "assignment": vote.assignment_id,
                "choice": vote.choice,
                "winner": vote.winner,
                "seconds": vote.seconds_on_task,
                "excluded": vote.excluded,
                "gold_correct": vote.gold_correct,
                "created_at": vote.created_at,
                "voted": Assignment.State.VOTED,
                "item": item_id,
            },
        )
        vote.pk = cursor.fetchone()[0]
    vote._state.adding, vote._state.db = False, connection.alias
