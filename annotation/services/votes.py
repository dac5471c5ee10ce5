"""Votes: recorded once (idempotent), inside the lease, counted toward each item's k."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import OperationalError, connection, transaction
from django.db.models import F
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
    answered: int = 0  # the rater's votes in this campaign, this one included: their progress


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
        # The rater's participation row first, as the claim and an exclusion lock it: one global lock order. It
        # also says whether they are excluded, and holds the progress counter this vote moves.
        campaign_id = campaign.pk if campaign is not None else _campaign_of(token, rater)
        participation = (
            Participation.objects.select_for_update()
            .filter(campaign_id=campaign_id, rater=rater)
            .values("id", "excluded")
            .first()
        )
        assignment = (
            Assignment.objects.filter(token=token, rater=rater, campaign_id=campaign_id)
            .select_for_update(of=("self",))
            .select_related("item__criterion", "campaign", "vote")
            .first()
            if participation is not None
            else None
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
            return VoteResult(existing, duplicate=True, answered=_answered(participation["id"]))
        if assignment.campaign.status == Campaign.Status.CLOSED:
            raise AnnotationError("This study is closed; your answer was not recorded.")
        if assignment.campaign.status == Campaign.Status.PAUSED:
            # A pause stops the study, not only new tasks; leases stay, so the
            # same task can be answered once it resumes (if still in time).
            raise AnnotationError(
                "This study is paused right now, so your answer was not recorded. Please come back later."
            )
        if participation["excluded"]:
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
        answered = _record_vote(vote, item.pk, participation["id"])
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
    return VoteResult(vote, duplicate=False, ended=ended, answered=answered)


def _campaign_of(token: str, rater: Rater) -> int | None:
    """The campaign of the rater's task ``token`` (callers that did not say which campaign)."""
    return Assignment.objects.filter(token=token, rater=rater).values_list("campaign_id", flat=True).first()


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
), progress AS (
    UPDATE {participation} SET answered = answered + 1 WHERE id = %(participation)s RETURNING answered
)
SELECT vote.id, progress.answered FROM vote, answered, item, progress
"""


def _answered(participation_id: int) -> int:
    return Participation.objects.filter(pk=participation_id).values_list("answered", flat=True).get()


def _record_vote(vote: Vote, item_id: int, participation_id: int) -> int:
    """Insert the vote, mark its assignment voted, move the item's and the rater's counters: one statement on
    PostgreSQL. Returns the rater's votes so far (their progress)."""
    if not assignment.single_statement_writes():
        vote.save(force_insert=True)
        Assignment.objects.filter(pk=vote.assignment_id).update(state=Assignment.State.VOTED)
        ComparisonItem.objects.filter(pk=item_id).update(votes=F("votes") + 1, open_leases=F("open_leases") - 1)
        Participation.objects.filter(pk=participation_id).update(answered=F("answered") + 1)
        return _answered(participation_id)
    vote.created_at = timezone.now()
    sql = _RECORD_VOTE_SQL.format(
        vote=Vote._meta.db_table,
        assignment=Assignment._meta.db_table,
        item=ComparisonItem._meta.db_table,
        participation=Participation._meta.db_table,
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
                "participation": participation_id,
            },
        )
        vote.pk, answered = cursor.fetchone()
    vote._state.adding, vote._state.db = False, connection.alias
    return answered
