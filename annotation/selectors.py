"""Reads of the annotation app: progress, tallies and rater quality."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from .models import Assignment, Campaign, Choice, ComparisonItem, Criterion, InviteLink, Participation, Vote


@dataclass(frozen=True)
class RaterProgress:
    done: int  # tasks answered
    total: int | None  # the quota, when the campaign has one


def rater_progress(participation: Participation) -> RaterProgress:
    done = Vote.objects.filter(
        assignment__campaign_id=participation.campaign_id, assignment__rater_id=participation.rater_id
    ).count()
    quota = participation.campaign.quota_per_rater
    return RaterProgress(done=done, total=quota or None)


def open_assignment_count(participation: Participation) -> int:
    return Assignment.objects.filter(
        campaign_id=participation.campaign_id, rater_id=participation.rater_id, state=Assignment.State.LEASED
    ).count()


# --- Researchers' views of a campaign ---------------------------------------------------------
#
# Progress and the tally count only what the analysis will count: votes that are
# not excluded, on regular items (gold items check raters; they measure no model).

# A rater who voted this recently is "active" on the dashboard.
ACTIVE_RATER_WINDOW = timedelta(minutes=10)
# The projected finish extrapolates the vote rate over this window.
RATE_WINDOW = timedelta(minutes=30)

# Appended to invite links for Prolific, which fills in the {{%...%}} placeholders per participant.
PROLIFIC_QUERY = "PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"

_COUNTING = Q(excluded=False, assignment__item__gold_image__isnull=True)


@dataclass(frozen=True)
class CriterionProgress:
    criterion: str
    label: str
    votes: int
    votes_needed: int
    complete_items: int
    items: int


@dataclass(frozen=True)
class CampaignProgress:
    votes: int  # counting votes on regular items
    votes_needed: int  # sum of k over regular items
    complete_items: int
    items: int
    per_criterion: list[CriterionProgress]
    open_leases: int  # tasks handed out, unanswered and not yet expired (gold included)
    active_raters: int
    recent_votes: int  # counting votes in the last RATE_WINDOW
    projected_finish: datetime | None  # None when done or when nobody voted recently

    @property
    def percent(self) -> int:
        return int(100 * self.votes / self.votes_needed) if self.votes_needed else 0

    @property
    def complete(self) -> bool:
        return self.votes_needed > 0 and self.votes >= self.votes_needed

    def as_dict(self) -> dict:
        return {
            "votes": self.votes,
            "votes_needed": self.votes_needed,
            "percent": self.percent,
            "complete_items": self.complete_items,
            "items": self.items,
            "per_criterion": [vars(c) for c in self.per_criterion],
            "open_leases": self.open_leases,
            "active_raters": self.active_raters,
            "recent_votes": self.recent_votes,
            "projected_finish": self.projected_finish.isoformat() if self.projected_finish else None,
        }


def campaign_progress(campaign: Campaign, now: datetime | None = None) -> CampaignProgress:
    """How far the campaign is: four aggregate queries, whatever its size.

    Vote counts come from the items' ``votes`` counters, which the assignment
    engine keeps under row locks and which already leave excluded votes out.
    """
    now = now or timezone.now()
    per_criterion = []
    rows = (
        ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=True)
        .values("criterion_id", "criterion__criterion", "criterion__votes_per_item")
        .annotate(
            n=Count("id"),
            votes_sum=Sum("votes"),
            complete=Count("id", filter=Q(votes__gte=F("criterion__votes_per_item"))),
        )
        .order_by("criterion_id")
    )
    for row in rows:
        per_criterion.append(
            CriterionProgress(
                criterion=row["criterion__criterion"],
                label=Criterion(row["criterion__criterion"]).label,
                votes=row["votes_sum"] or 0,
                votes_needed=row["n"] * row["criterion__votes_per_item"],
                complete_items=row["complete"],
                items=row["n"],
            )
        )
    votes = sum(c.votes for c in per_criterion)
    needed = sum(c.votes_needed for c in per_criterion)
    open_leases = Assignment.objects.filter(campaign=campaign, state=Assignment.State.LEASED, expires_at__gt=now).count()
    campaign_votes = Vote.objects.filter(assignment__campaign=campaign)
    active_raters = (
        campaign_votes.filter(created_at__gte=now - ACTIVE_RATER_WINDOW).values("assignment__rater_id").distinct().count()
    )
    recent = campaign_votes.filter(_COUNTING, created_at__gte=now - RATE_WINDOW).count()
    projected = None
    if recent and votes < needed:
        projected = now + RATE_WINDOW * ((needed - votes) / recent)
    return CampaignProgress(
        votes=votes, votes_needed=needed,
        complete_items=sum(c.complete_items for c in per_criterion), items=sum(c.items for c in per_criterion),
        per_criterion=per_criterion, open_leases=open_leases, active_raters=active_raters,
        recent_votes=recent, projected_finish=projected,
    )


def campaign_percentages(campaigns) -> dict[int, int]:
    """Percent of needed votes cast, for many campaigns in one query (the campaign list)."""
    rows = (
        ComparisonItem.objects.filter(campaign__in=campaigns, gold_image__isnull=True)
        .values("campaign_id")
        .annotate(votes_sum=Sum("votes"), needed=Sum("criterion__votes_per_item"))
    )
    return {r["campaign_id"]: int(100 * (r["votes_sum"] or 0) / r["needed"]) if r["needed"] else 0 for r in rows}


@dataclass(frozen=True)
class PairTally:
    """Provisional running tally of one criterion for one model pair (A, B).

    Only for watching a campaign: the analysis replaces it with win rates and
    confidence intervals.
    """

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    votes_a: int = 0
    votes_b: int = 0
    ties: int = 0
    items_a: int = 0  # complete items whose majority is A
    items_b: int = 0
    items_tie: int = 0

    @property
    def key(self) -> str:
        return f"{self.criterion}:{self.model_a}:{self.model_b}"

    @property
    def votes(self) -> int:
        return self.votes_a + self.votes_b + self.ties

    @property
    def complete_items(self) -> int:
        return self.items_a + self.items_b + self.items_tie

    def as_dict(self) -> dict:
        return {**vars(self), "key": self.key, "votes": self.votes, "complete_items": self.complete_items}


def item_majority(a: int, b: int, tie: int) -> str:
    """An item's outcome: the answer with strictly the most votes; any split without one reads as a tie."""
    if a > b and a > tie:
        return Vote.Winner.A
    if b > a and b > tie:
        return Vote.Winner.B
    return Vote.Winner.TIE


def running_tally(campaign: Campaign) -> list[PairTally]:
    """Votes and complete-item majorities per criterion and model pair: two aggregate queries.

    Every (criterion, pair) the campaign compares gets a row, with zeros until votes arrive.
    """
    from .services import model_pairs  # local: services may read selectors, and a cycle must not break either

    criteria = list(campaign.criteria.all())
    tallies = {
        (c.pk, a.pk, b.pk): {"criterion": c.criterion, "criterion_label": c.get_criterion_display(), "model_a": a.name, "model_b": b.name}
        for c in criteria
        for a, b in model_pairs(campaign)
    }
    counts = {key: {"votes_a": 0, "votes_b": 0, "ties": 0, "items_a": 0, "items_b": 0, "items_tie": 0} for key in tallies}

    votes = (
        Vote.objects.filter(_COUNTING, assignment__campaign=campaign)
        .values("assignment__item__criterion_id", "assignment__item__image_a__model_id", "assignment__item__image_b__model_id")
        .annotate(**_winner_counts(""))
        .order_by()
    )
    for row in votes:
        key = (row["assignment__item__criterion_id"], row["assignment__item__image_a__model_id"], row["assignment__item__image_b__model_id"])
        if key in counts:
            counts[key].update(votes_a=row["a"], votes_b=row["b"], ties=row["tie"])

    counting = Q(assignments__vote__excluded=False)
    complete_items = (
        ComparisonItem.objects.filter(campaign=campaign, gold_image__isnull=True, votes__gte=F("criterion__votes_per_item"))
        .values("id", "criterion_id", "image_a__model_id", "image_b__model_id")
        .annotate(**_winner_counts("assignments__vote__", counting))
        .order_by()
    )
    outcome_field = {Vote.Winner.A: "items_a", Vote.Winner.B: "items_b", Vote.Winner.TIE: "items_tie"}
    for row in complete_items.iterator(chunk_size=2000):
        key = (row["criterion_id"], row["image_a__model_id"], row["image_b__model_id"])
        if key in counts:
            counts[key][outcome_field[item_majority(row["a"], row["b"], row["tie"])]] += 1
    return [PairTally(**tallies[key], **counts[key]) for key in tallies]


def _winner_counts(prefix: str, extra: Q | None = None) -> dict:
    extra = extra or Q()
    return {
        name: Count("pk" if not prefix else f"{prefix}id", filter=extra & Q(**{f"{prefix}winner": winner}))
        for name, winner in (("a", Vote.Winner.A), ("b", Vote.Winner.B), ("tie", Vote.Winner.TIE))
    }


@dataclass(frozen=True)
class RaterQuality:
    participation_id: int
    rater_id: int
    source: str  # how they came: the invite link's label, or the account they were invited as
    prolific_pid: str
    study_id: str
    session_id: str
    external_id: str
    votes: int  # on regular items, excluded or not
    gold_answered: int
    gold_correct: int
    median_seconds: float | None
    left_share: float | None  # left picks among left/right answers: far from 0.5 means position bias
    excluded: bool
    exclusion_reason: str
    completed: bool
    joined_at: datetime

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_answered if self.gold_answered else None

    def as_dict(self) -> dict:
        return {**vars(self), "gold_accuracy": self.gold_accuracy, "joined_at": self.joined_at.isoformat()}


def _how_they_came(participation: Participation) -> str:
    if participation.invite_link_id is not None:
        return participation.invite_link.label or f"invite link {participation.invite_link_id}"
    if participation.rater.user_id is not None:
        return f"account {participation.rater.user.get_username()}"
    return "direct"


def rater_quality(campaign: Campaign) -> list[RaterQuality]:
    """One row per participation, from three queries (participations, vote aggregates, vote durations)."""
    participations = list(
        Participation.objects.filter(campaign=campaign).select_related("rater__user", "invite_link").order_by("id")
    )
    stats = {
        row["assignment__rater_id"]: row
        for row in Vote.objects.filter(assignment__campaign=campaign)
        .values("assignment__rater_id")
        .annotate(
            regular=Count("id", filter=Q(assignment__item__gold_image__isnull=True)),
            gold_answered=Count("id", filter=Q(gold_correct__isnull=False)),
            gold_correct=Count("id", filter=Q(gold_correct=True)),
            left=Count("id", filter=Q(choice=Choice.LEFT)),
            left_or_right=Count("id", filter=Q(choice__in=[Choice.LEFT, Choice.RIGHT])),
        )
        .order_by()
    }
    # The median is computed here rather than in SQL so the same code runs on SQLite (the demo) and PostgreSQL.
    seconds = defaultdict(list)
    durations = (
        Vote.objects.filter(assignment__campaign=campaign, seconds_on_task__isnull=False)
        .values_list("assignment__rater_id", "seconds_on_task")
        .order_by()
    )
    for rater_id, value in durations.iterator(chunk_size=5000):
        seconds[rater_id].append(value)

    rows = []
    for p in participations:
        s = stats.get(p.rater_id, {})
        rows.append(
            RaterQuality(
                participation_id=p.pk, rater_id=p.rater_id, source=_how_they_came(p),
                prolific_pid=p.prolific_pid, study_id=p.study_id, session_id=p.session_id,
                external_id=p.external_id or p.rater.external_id,
                votes=s.get("regular", 0), gold_answered=s.get("gold_answered", 0), gold_correct=s.get("gold_correct", 0),
                median_seconds=statistics.median(seconds[p.rater_id]) if seconds.get(p.rater_id) else None,
                left_share=s["left"] / s["left_or_right"] if s.get("left_or_right") else None,
                excluded=p.excluded, exclusion_reason=p.exclusion_reason,
                completed=p.completed_at is not None, joined_at=p.created_at,
            )
        )
    return rows


def invite_url(base_url: str, link: InviteLink) -> str:
    """The link to give a crowd platform: the join page, with Prolific's participant placeholders appended.

    Built as a plain path: the join view belongs to the raters' side of the site.
    """
    return f"{base_url.rstrip('/')}/join/{link.token}/?{PROLIFIC_QUERY}"


VOTE_EXPORT_COLUMNS = [
    "vote_id", "item_id", "criterion", "prompt_id", "prompt", "category", "challenge", "seed", "model_a", "model_b",
    "rater_id", "external_id", "choice", "a_on_left", "winner", "winner_model", "seconds_on_task", "gold",
    "gold_correct", "excluded", "created_at",
]


def vote_export_rows(campaign: Campaign):
    """Every vote of the campaign as a tidy row (VOTE_EXPORT_COLUMNS), streamed from the database in chunks.

    Gold items compare an image with a degraded copy of itself: model_b repeats
    model_a there, and ``gold_correct`` says whether the intact image was picked.
    """
    votes = (
        Vote.objects.filter(assignment__campaign=campaign)
        .order_by("id")
        .values_list(
            "id", "assignment__item_id", "assignment__item__criterion__criterion", "assignment__item__image_a__prompt_id",
            "assignment__item__image_a__prompt__text", "assignment__item__image_a__prompt__category",
            "assignment__item__image_a__prompt__challenge", "assignment__item__image_a__seed",
            "assignment__item__image_a__model__name", "assignment__item__image_b__model__name",
            "assignment__rater_id", "assignment__rater__external_id", "choice", "assignment__a_on_left", "winner",
            "seconds_on_task", "assignment__item__gold_image_id", "gold_correct", "excluded", "created_at",
        )
    )
    for (vote_id, item_id, criterion, prompt_id, prompt, category, challenge, seed, model_a, model_b, rater_id,
         external_id, choice, a_on_left, winner, seconds, gold_image_id, gold_correct, excluded, created_at) in votes.iterator(chunk_size=2000):
        winner_model = model_a if winner == Vote.Winner.A else model_b if winner == Vote.Winner.B else ""
        yield [
            vote_id, item_id, criterion, prompt_id, prompt, category, challenge, seed, model_a, model_b, rater_id,
            external_id, choice, a_on_left, winner, winner_model, seconds, gold_image_id is not None, gold_correct,
            excluded, created_at.isoformat(),
        ]
