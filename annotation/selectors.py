"""Reads of the annotation app: progress, tallies and rater quality."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from generation import selectors as generation_selectors

from .models import Assignment, Campaign, Choice, ComparisonItem, Criterion, InviteLink, Participation, Vote


@dataclass(frozen=True)
class RaterProgress:
    done: int  # tasks answered
    total: int | None  # the quota, when the campaign has one


def rater_progress(participation: Participation, answered: int | None = None) -> RaterProgress:
    """From the participation row's counter (or ``answered``, when a vote just moved it): no count of votes."""
    done = participation.answered if answered is None else answered
    quota = participation.campaign.quota_per_rater
    return RaterProgress(done=done, total=quota or None)


def open_assignment_count(participation: Participation) -> int:
    return Assignment.objects.filter(
        campaign_id=participation.campaign_id, rater_id=participation.rater_id, state=Assignment.State.LEASED
    ).count()


def raters_needed(campaign: Campaign) -> int:
    """The fewest raters who can finish the campaign, none excluded and each working to the end.

    A rater judges a pair (prompt, seed, two models) under one criterion only, so every pair needs as many
    distinct raters as the criteria's k added up (Emu: 5 + 3 = 8), and each rater takes at most one task per
    pair, or the regular tasks their quota leaves after gold if that is fewer.
    """
    votes_per_pair = sum(campaign.criteria.values_list("votes_per_item", flat=True))
    pairs = len(campaign.model_pairs()) * campaign.prompt_set.prompts.count() * len(campaign.seeds)
    if not votes_per_pair or not pairs:
        return votes_per_pair
    per_rater = pairs
    if campaign.quota_per_rater:
        regular = campaign.quota_per_rater - math.ceil(campaign.quota_per_rater * campaign.gold_share)
        per_rater = max(1, min(pairs, regular))
    return max(votes_per_pair, math.ceil(votes_per_pair * pairs / per_rater))


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
        ComparisonItem.objects.regular()
        .filter(campaign=campaign)
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
    open_leases = Assignment.objects.filter(
        campaign=campaign, state=Assignment.State.LEASED, expires_at__gt=now
    ).count()
    campaign_votes = Vote.objects.filter(assignment__campaign=campaign)
    active_raters = (
        campaign_votes.filter(created_at__gte=now - ACTIVE_RATER_WINDOW)
        .values("assignment__rater_id")
        .distinct()
        .count()
    )
    recent = campaign_votes.counting().filter(created_at__gte=now - RATE_WINDOW).count()
    projected = None
    if recent and votes < needed:
        projected = now + RATE_WINDOW * ((needed - votes) / recent)
    return CampaignProgress(
        votes=votes,
        votes_needed=needed,
        complete_items=sum(c.complete_items for c in per_criterion),
        items=sum(c.items for c in per_criterion),
        per_criterion=per_criterion,
        open_leases=open_leases,
        active_raters=active_raters,
        recent_votes=recent,
        projected_finish=projected,
    )


def campaign_percentages(campaigns) -> dict[int, int]:
    """Percent of needed votes cast, for many campaigns in one query (the campaign list)."""
    rows = (
        ComparisonItem.objects.regular()
        .filter(campaign__in=campaigns)
        .values("campaign_id")
        .annotate(votes_sum=Sum("votes"), needed=Sum("criterion__votes_per_item"))
    )
    return {r["campaign_id"]: int(100 * (r["votes_sum"] or 0) / r["needed"]) if r["needed"] else 0 for r in rows}


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
    simulated: bool = False  # a program (the mini-Emu world's raters), not a person
    # Flagged when the median gap between their answers (server clock) fell below the campaign's speeder_seconds.
    speeder: bool = False
    speeder_median_seconds: float | None = None

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
                participation_id=p.pk,
                rater_id=p.rater_id,
                source=_how_they_came(p),
                prolific_pid=p.prolific_pid,
                study_id=p.study_id,
                session_id=p.session_id,
                external_id=p.external_id or p.rater.external_id,
                votes=s.get("regular", 0),
                gold_answered=s.get("gold_answered", 0),
                gold_correct=s.get("gold_correct", 0),
                median_seconds=statistics.median(seconds[p.rater_id]) if seconds.get(p.rater_id) else None,
                left_share=s["left"] / s["left_or_right"] if s.get("left_or_right") else None,
                excluded=p.excluded,
                exclusion_reason=p.exclusion_reason,
                completed=p.completed_at is not None,
                joined_at=p.created_at,
                simulated=p.rater.simulated,
                speeder=p.speeder_flagged_at is not None,
                speeder_median_seconds=p.speeder_median_seconds,
            )
        )
    return rows


def join_url(base_url: str, link: InviteLink) -> str:
    """The invite link as it works when opened as is: every browser that opens it is its own anonymous rater.

    Built as a plain path: the join view belongs to the raters' side of the site.
    """
    return f"{base_url.rstrip('/')}/join/{link.token}/"


def invite_url(base_url: str, link: InviteLink) -> str:
    """The link to give Prolific: the join page with Prolific's participant placeholders, which Prolific fills in.

    Opened as printed (placeholders unfilled) it still works like ``join_url``: the join refuses placeholders as ids.
    """
    return f"{join_url(base_url, link)}?{PROLIFIC_QUERY}"


# The columns that say which comparison an exported row is about, each with the ComparisonItem field it reads
# (the votes export here, analysis's items export).
ITEM_EXPORT_FIELDS = {
    "item_id": "id",
    "criterion": "criterion__criterion",
    "prompt_id": "image_a__prompt_id",
    "prompt": "image_a__prompt__text",
    "category": "image_a__prompt__category",
    "challenge": "image_a__prompt__challenge",
    "seed": "image_a__seed",
    "model_a": "image_a__model__name",
    "model_b": "image_b__model__name",
}
# The votes export's columns, each with the Vote field it reads; winner_model is worked out from the others.
_VOTE_EXPORT_FIELDS = {
    "vote_id": "id",
    **{column: f"assignment__item__{field}" for column, field in ITEM_EXPORT_FIELDS.items()},
    "rater_id": "assignment__rater_id",
    "external_id": "assignment__rater__external_id",
    "choice": "choice",
    "a_on_left": "assignment__a_on_left",
    "winner": "winner",
    "winner_model": None,
    "seconds_on_task": "seconds_on_task",
    "gold": "assignment__item__gold_image_id",
    "gold_correct": "gold_correct",
    "excluded": "excluded",
    "simulated": "assignment__rater__simulated",
    "created_at": "created_at",
}
VOTE_EXPORT_COLUMNS = list(_VOTE_EXPORT_FIELDS)


def vote_export_rows(campaign: Campaign):
    """Every vote of the campaign as a tidy row (VOTE_EXPORT_COLUMNS), streamed from the database in chunks.

    Gold items compare an image with a degraded copy of itself: model_b repeats
    model_a there, and ``gold_correct`` says whether the intact image was picked.
    """
    fields = {column: field for column, field in _VOTE_EXPORT_FIELDS.items() if field}
    votes = Vote.objects.filter(assignment__campaign=campaign).order_by("id").values(*fields.values())
    for vote in votes.iterator(chunk_size=2000):
        row = {column: vote[field] for column, field in fields.items()}
        row["winner_model"] = {Vote.Winner.A: row["model_a"], Vote.Winner.B: row["model_b"]}.get(row["winner"], "")
        row["gold"] = row["gold"] is not None
        row["created_at"] = row["created_at"].isoformat()
        yield [row[column] for column in VOTE_EXPORT_COLUMNS]


def launch_images(campaign: Campaign) -> dict | None:
    """While a campaign launches: how many of its images exist. None otherwise."""
    if campaign.status != Campaign.Status.LAUNCHING or campaign.generation_batch is None:
        return None
    images = generation_selectors.batch_progress(campaign.generation_batch)
    return {"done": images.done, "total": images.total, "error": campaign.generation_batch.error}
