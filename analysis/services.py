"""Campaign reports: the numbers of ``analysis.stats`` over a campaign's votes, and the files researchers download.

``build_report`` reads the campaign once (the votes frame of
``analysis.selectors``, sorted so that the same votes always give the same
numbers), analyses every criterion and model pair on its own, and returns a
frozen :class:`CampaignReport` of plain values. The renderers (JSON, HTML,
PDF) only lay that report out; the CSV exports stream rows from the database.

Conventions are those of ``analysis.stats``: an item's outcome is the strict
majority of its k votes; items with fewer than k votes are incomplete and left
out (and counted); the win rate is model B's, ties not won, with the
wins + ties / 2 convention beside it; the interval around a win rate is the
prompt-clustered score interval (:data:`analysis.stats.HEADLINE_INTERVAL`),
deterministic, and withheld, with the reason, below
:data:`analysis.stats.MIN_PROMPTS` prompts. The bootstrap seed and rounds
only move the Bradley–Terry intervals, printed with their Monte Carlo error.
Excluded raters' votes and gold items never enter the numbers.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy
from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.template.loader import render_to_string
from django.utils.text import slugify

from annotation import selectors as annotation_selectors
from annotation.models import Campaign, ComparisonItem, Participation, Vote
from core import csv_export

from . import stats
from .selectors import VOTE_COLUMNS, votes_frame

DEFAULT_SEED = 0
# Bootstrap rounds for the Bradley–Terry intervals (the win-rate intervals have no Monte Carlo part). Their
# endpoints' Monte Carlo error is printed beside them (about 0.01 of a score point at 2,000 rounds).
DEFAULT_ROUNDS = 2000
MIN_ROUNDS = 100
MAX_ROUNDS = 20_000
MAX_SEED = 2**32 - 1
# "Comparisons still needed for ±x percentage points", for these x.
PLANNER_HALF_WIDTHS = (5, 3, 2)
# Position bias is tested once per rater: flag at 5% after a Bonferroni correction over the raters tested.
POSITION_BIAS_ALPHA = 0.05

INTERVAL_METHOD_LABELS = {
    stats.CLUSTERED_SCORE: "prompt-clustered score interval",
    "cluster_bootstrap_bca": "prompt-clustered bootstrap, BCa",
    "cluster_bootstrap_percentile": "prompt-clustered bootstrap, percentile",
    "wilson": "Wilson, items as independent",
    "wilson_votes_naive": "Wilson, votes as independent (too narrow; for comparison only)",
}


class ReportError(Exception):
    """The report cannot be made; the message tells the researcher why and what to do."""


# --- The report, as plain values --------------------------------------------------------------


def percent(value: float | None, digits: int = 1) -> str:
    """0.829 -> "82.9%"; None or NaN -> "—"."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:.{digits}f}%"


def p_value_text(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3g}"


@dataclass(frozen=True)
class Bounds:
    """A confidence interval of a share, with the method that made it (see INTERVAL_METHOD_LABELS)."""

    low: float
    high: float
    level: float
    method: str

    @property
    def text(self) -> str:
        return f"{percent(self.low)} – {percent(self.high)}"

    @property
    def method_label(self) -> str:
        return INTERVAL_METHOD_LABELS.get(self.method, self.method)

    @property
    def verdict(self) -> str:
        """"above" when the whole interval lies above 50% (B preferred), "below" when wholly below, else "unclear"."""
        return verdict(self)


def verdict(interval: Bounds | None) -> str:
    """How a win rate's interval sits against 50%: "above", "below", or "unclear" (straddling it, or no interval).

    The report colours a headline by this alone, never by the point estimate:
    green only when the interval lies wholly above 50%, red wholly below.
    """
    if interval is None:
        return "unclear"
    if interval.low > 0.5:
        return "above"
    if interval.high < 0.5:
        return "below"
    return "unclear"


@dataclass(frozen=True)
class Outcomes:
    """Wins, ties and losses of model B, with their shares (over items or over votes)."""

    wins: int
    ties: int
    losses: int
    win_share: float
    tie_share: float
    loss_share: float

    @property
    def total(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_text(self) -> str:
        return percent(self.win_share)

    @property
    def tie_text(self) -> str:
        return percent(self.tie_share)

    @property
    def loss_text(self) -> str:
        return percent(self.loss_share)


@dataclass(frozen=True)
class GroupWinRate:
    """B's item-level win rate within one prompt category or challenge (headline interval over its prompts)."""

    group: str
    comparisons: int
    prompts: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    interval: Bounds | None
    sign_test_p: float | None
    incomplete_items: int
    interval_note: str = ""

    @property
    def label(self) -> str:
        return self.group or "(none)"

    @property
    def interval_text(self) -> str:
        return self.interval.text if self.interval else "—"

    @property
    def win_rate_text(self) -> str:
        return percent(self.win_rate)

    @property
    def p_text(self) -> str:
        return p_value_text(self.sign_test_p)


@dataclass(frozen=True)
class PlannerTarget:
    """How many more complete comparisons (and votes, at k per comparison) an interval of ±x points needs."""

    half_width_points: int
    comparisons_needed: int
    votes_needed: int


@dataclass(frozen=True)
class Comparison:
    """One criterion of one model pair: the headline row of the report.

    ``items``: the pair's regular comparison items for this criterion;
    ``compared``: those counted (complete, or all voted ones with
    include_incomplete); ``incomplete_items`` have votes but fewer than k;
    ``unvoted_items`` none yet. ``message`` is empty when there are numbers and
    otherwise says why not; then the numeric fields are None. ``interval`` is
    None with fewer than ``stats.MIN_PROMPTS`` prompts, and ``interval_note``
    says why. ``verdict`` ("above", "below", "unclear") places the interval
    against 50%; the headline's colour follows it.
    """

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    votes_per_item: int
    items: int
    compared: int
    incomplete_items: int
    unvoted_items: int
    prompts: int
    raters: int
    message: str
    statement: str
    item_outcomes: Outcomes | None
    vote_outcomes: Outcomes | None
    win_rate: float | None
    interval: Bounds | None
    win_rate_half_ties: float | None
    interval_half_ties: Bounds | None
    interval_note: str
    sign_test_p: float | None
    by_category: tuple[GroupWinRate, ...]
    by_challenge: tuple[GroupWinRate, ...]
    design_effect: float
    planner: tuple[PlannerTarget, ...]

    @property
    def key(self) -> str:
        return f"{self.criterion}:{self.model_a}:{self.model_b}"

    @property
    def has_numbers(self) -> bool:
        return self.win_rate is not None

    @property
    def verdict(self) -> str:
        return verdict(self.interval)

    @property
    def interval_text(self) -> str:
        return self.interval.text if self.interval else "—"

    @property
    def title(self) -> str:
        return f"{self.criterion_label.capitalize()}: {self.model_b} vs {self.model_a}"

    @property
    def win_rate_text(self) -> str:
        return percent(self.win_rate)

    @property
    def breakdown_tables(self) -> list[tuple[str, tuple[GroupWinRate, ...]]]:
        return [("Category", self.by_category), ("Challenge", self.by_challenge)]

    @property
    def half_ties_text(self) -> str:
        return percent(self.win_rate_half_ties)

    @property
    def half_ties_interval_text(self) -> str:
        return self.interval_half_ties.text if self.interval_half_ties else "—"

    @property
    def p_text(self) -> str:
        return p_value_text(self.sign_test_p)

    @property
    def sentence(self) -> str:
        """The headline in words, with the interval and both tie conventions."""
        if not self.has_numbers:
            return f"{self.title}: {self.message}."
        o = self.item_outcomes
        interval = (
            f"{self.interval.level:.0%} interval {self.interval.text}, {self.interval.method_label}"
            if self.interval
            else self.interval_note
        )
        return (
            f"{self.title}: {self.statement} ({self.compared} comparisons of {self.votes_per_item} raters each, "
            f"{self.prompts} prompts; {interval}). "
            f"Ties {percent(o.tie_share)}, {self.model_a} preferred {percent(o.loss_share)}; counting a tie as half a win, "
            f"{self.model_b} scores {percent(self.win_rate_half_ties)}. Sign test p {p_value_text(self.sign_test_p)}."
        )


@dataclass(frozen=True)
class AgreementSummary:
    """Inter-rater agreement for one criterion (all pairs), see analysis.stats.Agreement; None with a message when undefined."""

    criterion: str
    criterion_label: str
    message: str
    fleiss_kappa: float | None = None
    fleiss_items: int = 0
    ratings_per_item: int = 0
    krippendorff_alpha: float | None = None
    alpha_items: int = 0
    majority_agreement: float | None = None
    majority_items: int = 0
    items_without_majority: int = 0
    categories: tuple[str, ...] = ()

    @property
    def categories_text(self) -> str:
        return ", ".join(self.categories)

    @property
    def majority_agreement_text(self) -> str:
        return percent(self.majority_agreement)


@dataclass(frozen=True)
class RaterSideBias:
    """Left picks among a rater's left/right answers (all criteria), with an exact test against one half."""

    rater_id: int
    external_id: str
    side_votes: int
    left_picks: int
    left_share: float | None
    p_value: float
    flagged: bool

    @property
    def p_text(self) -> str:
        return p_value_text(self.p_value)


@dataclass(frozen=True)
class RankedModel:
    model: str
    score: float
    low: float | None
    high: float | None
    rank: int
    rank_upper: int | None
    # Monte Carlo standard error of the interval's ends (the larger of the two), from the bootstrap's order statistics.
    mc_error: float | None = None


@dataclass(frozen=True)
class Ranking:
    """Bradley–Terry scores of three or more models for one criterion (item majorities as battles)."""

    criterion: str
    criterion_label: str
    message: str
    unit: str = "item"
    anchor: str | None = None
    battles: int = 0
    prompts: int = 0
    degenerate_rounds: int = 0
    models: tuple[RankedModel, ...] = ()
    # win_fractions[i][j]: share of battles models[i] won against models[j] (ties as halves); None where they never met.
    win_fractions: tuple[tuple[float | None, ...], ...] = ()
    interval_note: str = ""  # why the intervals are withheld (too few prompts), or ""

    @property
    def matrix_rows(self) -> list[tuple[str, list[str]]]:
        """(model, [its win share against each model, as text]) for templates."""
        names = [m.model for m in self.models]
        return [(names[i], [percent(v, 0) if v is not None else "—" for v in row]) for i, row in enumerate(self.win_fractions)]


@dataclass(frozen=True)
class ExcludedRater:
    rater_id: int
    participation_id: int
    external_id: str
    reason: str
    excluded_at: str | None
    excluded_votes: int  # votes on regular items that would otherwise have counted
    excluded_gold_votes: int


@dataclass(frozen=True)
class FlaggedSpeeder:
    rater_id: int
    external_id: str
    median_seconds: float | None  # between answers, server clock, when flagged
    excluded: bool


@dataclass(frozen=True)
class Exclusions:
    rule: dict
    raters: tuple[ExcludedRater, ...]
    excluded_votes: int
    gold_votes: int  # gold answers measure raters, not models: never in the numbers
    speeders: tuple[FlaggedSpeeder, ...] = ()


@dataclass(frozen=True)
class Reproducibility:
    """What the numbers were computed from, so anyone can recompute them.

    ``votes_sha256`` hashes the analysed votes frame sorted by item and rater
    (:func:`votes_snapshot_sha256`); the same snapshot, seed, rounds and level
    give identical numbers.
    """

    votes: int
    votes_sha256: str
    last_vote_at: str | None
    simulated_votes: int  # of ``votes``, those cast by simulated raters (the mini-Emu world's), never people
    excluded_votes: int
    exclusion_rule: dict
    seed: int
    rounds: int
    level: float
    include_incomplete: bool
    interval_method: str
    min_prompts_for_interval: int
    bradley_terry_unit: str
    code_version: str
    software: dict


@dataclass(frozen=True)
class CampaignReport:
    campaign_id: int
    campaign_name: str
    campaign_status: str
    models: tuple[str, ...]
    pairing: str
    baseline: str | None
    prompt_set: str
    comparisons: tuple[Comparison, ...]
    agreement: tuple[AgreementSummary, ...]
    position_bias: tuple[RaterSideBias, ...]
    rankings: tuple[Ranking, ...]
    exclusions: Exclusions
    reproducibility: Reproducibility

    @property
    def level_text(self) -> str:
        return f"{self.reproducibility.level:.0%}"

    @property
    def flagged_raters(self) -> int:
        return sum(r.flagged for r in self.position_bias)

    def as_dict(self) -> dict:
        """Every number, JSON-ready: NaN and infinities become None."""
        return _plain(asdict(self))


# --- Building it ------------------------------------------------------------------------------


def build_report(
    campaign: Campaign,
    *,
    seed: int = DEFAULT_SEED,
    rounds: int = DEFAULT_ROUNDS,
    level: float = 0.95,
    include_incomplete: bool = False,
) -> CampaignReport:
    """The campaign's report. ReportError when there is nothing to report yet (no counting votes) or bad options.

    A criterion without complete comparisons still gets its row, saying so,
    rather than failing the whole report.
    """
    check_options(seed=seed, rounds=rounds, level=level)
    frame = analysed_votes(campaign)
    if frame.empty:
        raise ReportError(_no_votes_message(campaign))
    options = {"seed": seed, "rounds": rounds, "level": level, "include_incomplete": include_incomplete}

    comparisons = tuple(_comparisons(campaign, frame, breakdowns=True, **options))
    criteria = [(c.criterion, c.get_criterion_display()) for c in campaign.criteria.all()]
    models = [m.name for m in campaign.ordered_models()]
    exclusions = _exclusions(campaign)
    last_vote = _counting_votes(campaign).aggregate(last=Max("created_at"))["last"]
    return CampaignReport(
        campaign_id=campaign.pk,
        campaign_name=campaign.name,
        campaign_status=campaign.status,
        models=tuple(models),
        pairing=campaign.pairing,
        baseline=campaign.baseline.name if campaign.baseline_id else None,
        prompt_set=campaign.prompt_set.name,
        comparisons=comparisons,
        agreement=tuple(_agreement(frame, name, label, include_incomplete) for name, label in criteria),
        position_bias=_position_bias(campaign, frame),
        rankings=(
            tuple(_ranking(campaign, frame, name, label, seed=seed, rounds=rounds, level=level) for name, label in criteria)
            if len(models) > 2
            else ()
        ),
        exclusions=exclusions,
        reproducibility=Reproducibility(
            votes=len(frame),
            votes_sha256=votes_snapshot_sha256(frame),
            last_vote_at=last_vote.isoformat() if last_vote else None,
            simulated_votes=_counting_votes(campaign).filter(assignment__rater__simulated=True).count(),
            excluded_votes=exclusions.excluded_votes,
            exclusion_rule=exclusions.rule,
            seed=seed,
            rounds=rounds,
            level=level,
            include_incomplete=include_incomplete,
            interval_method=stats.HEADLINE_INTERVAL,
            min_prompts_for_interval=stats.MIN_PROMPTS,
            bradley_terry_unit="item",
            code_version=code_version(),
            software={"numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__},
        ),
    )


def check_options(*, seed, rounds, level=0.95) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ReportError(f"The bootstrap seed must be a whole number from 0 to {MAX_SEED}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
        raise ReportError(f"Bootstrap rounds must be a whole number from {MIN_ROUNDS} to {MAX_ROUNDS:,}.")
    if not isinstance(level, float | int) or not 0.5 <= level < 1:
        raise ReportError("The confidence level must be at least 0.5 and below 1 (e.g. 0.95).")


def analysed_votes(campaign: Campaign) -> pd.DataFrame:
    """The counting votes as the documented votes frame, sorted by item and rater.

    Sorted because the bootstrap numbers prompts in order of appearance: a
    fixed order makes the numbers depend on the votes alone, not on the order
    they were cast in, so the snapshot hash identifies them.
    """
    frame = votes_frame(campaign)
    return frame.sort_values(["item_id", "rater_id"], kind="stable", ignore_index=True)


def votes_snapshot_sha256(frame: pd.DataFrame) -> str:
    """sha256 of a stable CSV of the votes frame: sorted by item and rater, fixed columns, floats as repr, NaN empty."""
    ordered = frame.sort_values(["item_id", "rater_id"], kind="stable", ignore_index=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(VOTE_COLUMNS)
    for row in ordered[VOTE_COLUMNS].itertuples(index=False, name=None):
        writer.writerow(_snapshot_cell(value) for value in row)
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()


def _snapshot_cell(value) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit the code runs from (asked once per process); "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit) else "unknown"


def _counting_votes(campaign: Campaign):
    """The votes the numbers use: not excluded, on regular items."""
    return Vote.objects.counting().filter(assignment__campaign=campaign)


def _no_votes_message(campaign: Campaign) -> str:
    all_votes = Vote.objects.filter(assignment__campaign=campaign)
    regular = all_votes.on_regular_items().count()
    if regular:
        return (
            f"Campaign {campaign.name!r} has no counting votes: all {regular} vote(s) on its comparisons come from "
            "excluded raters. Invite more raters; the report appears once their votes arrive."
        )
    if campaign.status in (Campaign.Status.DRAFT, Campaign.Status.LAUNCHING):
        return f"Campaign {campaign.name!r} has no votes yet: it is {campaign.status}. Launch it and invite raters first."
    return (
        f"Campaign {campaign.name!r} has no votes yet. Invite raters from the campaign page; "
        "the report appears once votes arrive (win rates need complete comparisons)."
    )


def _comparisons(campaign, frame, *, breakdowns: bool, seed, rounds, level, include_incomplete) -> Iterator[Comparison]:
    """A Comparison for every criterion x model pair the campaign compares, voted on or not."""
    item_counts = {
        (row["criterion__criterion"], row["image_a__model__name"], row["image_b__model__name"]): row["n"]
        for row in ComparisonItem.objects.regular().filter(campaign=campaign)
        .values("criterion__criterion", "image_a__model__name", "image_b__model__name")
        .annotate(n=Count("id"))
        .order_by()
    }
    for criterion in campaign.criteria.all():
        for model_a, model_b in campaign.model_pairs():
            selected = frame[
                (frame["criterion"] == criterion.criterion) & (frame["model_a"] == model_a.name) & (frame["model_b"] == model_b.name)
            ]
            yield _comparison(
                selected,
                criterion=criterion.criterion,
                criterion_label=criterion.get_criterion_display(),
                model_a=model_a.name,
                model_b=model_b.name,
                votes_per_item=criterion.votes_per_item,
                items=item_counts.get((criterion.criterion, model_a.name, model_b.name), 0),
                breakdowns=breakdowns,
                seed=seed,
                rounds=rounds,
                level=level,
                include_incomplete=include_incomplete,
            )


def _item_table(votes: pd.DataFrame) -> pd.DataFrame:
    """One row per voted item: prompt, k, votes for a / b / tie, whether complete, outcome code (analysis.stats' rule)."""
    counts = (
        votes.groupby(["item_id", "winner"]).size().unstack("winner", fill_value=0).reindex(columns=list(stats.WINNERS), fill_value=0)
    )
    attributes = votes.groupby("item_id")[["prompt_id", "votes_per_item"]].first()
    table = attributes.join(counts)
    table["votes"] = table[list(stats.WINNERS)].sum(axis=1)
    table["complete"] = table["votes"] >= table["votes_per_item"]
    table["outcome"] = stats.majority_outcomes(table[list(stats.WINNERS)].to_numpy())
    return table


def design_effect(items: pd.DataFrame) -> float:
    """How much prompt clustering widens the win rate's uncertainty: its variance over the binomial one (>= 1).

    The variance is the jackknife over prompts (leave one prompt's items out),
    deterministic so the planner does not move with the bootstrap seed. The
    planner scales the Wilson sample size by it, as
    ``analysis.stats.comparisons_for_half_width`` expects. 1 when it cannot
    be estimated (one prompt, or a 0% / 100% win rate).
    """
    won = items["outcome"] == stats.WINNERS.index("b")
    per_prompt = pd.DataFrame({"won": won, "prompt": items["prompt_id"]}).groupby("prompt")["won"].agg(["sum", "size"])
    m, n, wins = len(per_prompt), int(per_prompt["size"].sum()), int(per_prompt["sum"].sum())
    if m < 2 or wins in (0, n):
        return 1.0
    leave_one_out = (wins - per_prompt["sum"]) / (n - per_prompt["size"])
    jackknife_variance = (m - 1) / m * float(((leave_one_out - leave_one_out.mean()) ** 2).sum())
    share = wins / n
    return max(1.0, jackknife_variance / (share * (1 - share) / n))


def _bounds(interval: stats.Interval | None) -> Bounds | None:
    if interval is None:
        return None
    return Bounds(float(interval.low), float(interval.high), float(interval.level), interval.method)


def _outcomes(shares: stats.Shares) -> Outcomes:
    return Outcomes(shares.wins, shares.ties, shares.losses, shares.win_rate, shares.tie_share, shares.loss_share)


def _comparison(
    votes, *, criterion, criterion_label, model_a, model_b, votes_per_item, items, breakdowns, seed, rounds, level, include_incomplete
) -> Comparison:
    table = _item_table(votes) if len(votes) else None
    voted = 0 if table is None else len(table)
    incomplete = 0 if table is None else int((~table["complete"]).sum())
    used = None if table is None else table if include_incomplete else table[table["complete"]]
    base = {
        "criterion": criterion,
        "criterion_label": criterion_label,
        "model_a": model_a,
        "model_b": model_b,
        "votes_per_item": votes_per_item,
        "items": items,
        "incomplete_items": incomplete,
        "unvoted_items": max(0, items - voted),
    }
    if used is None or used.empty:
        message = "no votes yet" if table is None else f"no complete comparisons yet ({incomplete} incomplete)"
        return Comparison(
            **base, compared=0, prompts=0 if table is None else int(table["prompt_id"].nunique()),
            raters=0 if table is None else int(votes["rater_id"].nunique()), message=message, statement=message,
            item_outcomes=None, vote_outcomes=None, win_rate=None, interval=None, win_rate_half_ties=None,
            interval_half_ties=None, interval_note="", sign_test_p=None, by_category=(), by_challenge=(),
            design_effect=1.0, planner=_planner(0, 0, votes_per_item, level, 1.0),
        )

    # The win-rate intervals are deterministic: no bootstrap rounds (rounds and seed are for Bradley–Terry).
    options = {"rounds": 0, "seed": seed, "level": level, "include_incomplete": include_incomplete}
    report = stats.win_rate_report(votes, criterion, **options)
    effect = design_effect(used)
    return Comparison(
        **base,
        compared=report.items.comparisons,
        prompts=report.prompts,
        raters=int(votes.loc[votes["item_id"].isin(used.index), "rater_id"].nunique()),
        message="",
        statement=f"{model_b} preferred in {percent(report.items.win_rate)} of comparisons",
        item_outcomes=_outcomes(report.items),
        vote_outcomes=_outcomes(report.votes),
        win_rate=report.items.win_rate,
        interval=_bounds(report.interval),
        win_rate_half_ties=report.items.win_rate_half_ties,
        interval_half_ties=_bounds(report.interval_half_ties),
        interval_note=report.interval_note,
        sign_test_p=float(report.sign_test.p_value),
        by_category=_groups(votes, "category", criterion, options) if breakdowns else (),
        by_challenge=_groups(votes, "challenge", criterion, options) if breakdowns else (),
        design_effect=effect,
        planner=_planner(report.items.wins, report.items.comparisons, votes_per_item, level, effect),
    )


def _groups(votes, by: str, criterion: str, options: dict) -> tuple[GroupWinRate, ...]:
    table = stats.win_rates_by(votes, by, criterion, **options)
    rows = []
    for row in table.to_dict("records"):
        has_numbers = pd.notna(row.get("win_rate"))
        has_interval = has_numbers and pd.notna(row.get("low"))
        rows.append(
            GroupWinRate(
                group=str(row[by]),
                comparisons=int(row["comparisons"]) if has_numbers else 0,
                prompts=int(row["prompts"]) if has_numbers else 0,
                wins=int(row["wins"]) if has_numbers else 0,
                ties=int(row["ties"]) if has_numbers else 0,
                losses=int(row["losses"]) if has_numbers else 0,
                win_rate=float(row["win_rate"]) if has_numbers else None,
                interval=Bounds(float(row["low"]), float(row["high"]), options["level"], row["interval_method"]) if has_interval else None,
                sign_test_p=float(row["sign_test_p"]) if has_numbers else None,
                incomplete_items=int(row["incomplete_items"]),
                interval_note=str(row["interval_note"]) if has_numbers else "",
            )
        )
    return tuple(sorted(rows, key=lambda g: g.group))


def _planner(wins: int, compared: int, k: int, level: float, effect: float) -> tuple[PlannerTarget, ...]:
    targets = []
    for points in PLANNER_HALF_WIDTHS:
        needed = stats.additional_comparisons_needed(wins, compared, points / 100, level=level, design_effect=effect)
        targets.append(PlannerTarget(points, needed, needed * k))
    return tuple(targets)


def _agreement(frame, criterion: str, label: str, include_incomplete: bool) -> AgreementSummary:
    if not (frame["criterion"] == criterion).any():
        return AgreementSummary(criterion, label, "no votes yet")
    try:
        agreement = stats.rater_agreement(frame, criterion, include_incomplete=include_incomplete)
    except ValueError as exc:  # too few items, or every vote the same answer: kappa and alpha are undefined
        return AgreementSummary(criterion, label, str(exc))
    return AgreementSummary(
        criterion, label, "",
        fleiss_kappa=agreement.fleiss_kappa, fleiss_items=agreement.fleiss_items, ratings_per_item=agreement.ratings_per_item,
        krippendorff_alpha=agreement.krippendorff_alpha, alpha_items=agreement.alpha_items,
        majority_agreement=agreement.majority_agreement, majority_items=agreement.majority_items,
        items_without_majority=agreement.items_without_majority, categories=agreement.categories,
    )


def _position_bias(campaign, frame) -> tuple[RaterSideBias, ...]:
    table = stats.position_bias(frame)  # pooled over criteria: the habit belongs to the rater
    tested = int((table["side_votes"] > 0).sum())
    external = {
        p.rater_id: p.external_id or p.rater.external_id
        for p in Participation.objects.filter(campaign=campaign).select_related("rater")
    }
    return tuple(
        RaterSideBias(
            rater_id=int(row.rater_id),
            external_id=external.get(int(row.rater_id), ""),
            side_votes=int(row.side_votes),
            left_picks=int(row.left_picks),
            left_share=float(row.left_share) if row.side_votes else None,
            p_value=float(row.p_value),
            flagged=bool(tested and row.p_value < POSITION_BIAS_ALPHA / tested),
        )
        for row in table.itertuples(index=False)
    )


def _ranking(campaign, frame, criterion: str, label: str, *, seed, rounds, level) -> Ranking:
    if not (frame["criterion"] == criterion).any():
        return Ranking(criterion, label, "no votes yet")
    # Against a baseline, scores read as "better or worse than the baseline"; otherwise they average zero.
    anchor = campaign.baseline.name if campaign.pairing == Campaign.Pairing.VS_BASELINE and campaign.baseline_id else None
    try:
        result = stats.bradley_terry(frame, criterion, unit="item", anchor=anchor, rounds=rounds, seed=seed, level=level)
    except ValueError as exc:  # no complete items yet, or models never beaten by a group of others
        return Ranking(criterion, label, str(exc), anchor=anchor)
    # The bootstrap cannot see more spread between prompts than the few it has: below the win rate's minimum
    # the intervals would be far too narrow, so the scores stand alone.
    with_intervals = result.prompts >= stats.MIN_PROMPTS
    ranked = tuple(
        RankedModel(
            str(name), float(row["score"]),
            float(row["low"]) if with_intervals else None, float(row["high"]) if with_intervals else None,
            int(row["rank"]), int(row["rank_upper"]) if with_intervals else None,
            mc_error=float(row["mc_error"]) if with_intervals else None,
        )
        for name, row in result.ranking.iterrows()
    )
    fractions = result.win_fractions.to_numpy()
    return Ranking(
        criterion, label, "", unit=result.unit, anchor=anchor, battles=result.battles, prompts=result.prompts,
        degenerate_rounds=result.degenerate_rounds, models=ranked,
        win_fractions=tuple(tuple(float(v) if np.isfinite(v) else None for v in row) for row in fractions),
        interval_note="" if with_intervals else stats.intervals.too_few_prompts_message(result.prompts),
    )


def exclusion_rule(campaign: Campaign) -> dict:
    if not campaign.speeder_seconds:
        speeders = "The speeder check is off."
    else:
        speeders = (
            f"Raters whose median time between answers (server clock) fell below {campaign.speeder_seconds:g} s are "
            + ("flagged and excluded automatically." if campaign.exclude_speeders else "flagged, not excluded.")
        )
    return {
        "gold_share": campaign.gold_share,
        "gold_min_accuracy": campaign.gold_min_accuracy,
        "gold_min_answers": campaign.gold_min_answers,
        "speeder_seconds": campaign.speeder_seconds,
        "exclude_speeders": campaign.exclude_speeders,
        "description": (
            f"Raters below {campaign.gold_min_accuracy:.0%} gold accuracy after {campaign.gold_min_answers} gold answers "
            f"are excluded automatically; researchers exclude others by hand, with a reason. {speeders} Excluded "
            "raters' votes are kept, flagged, and left out of every number; gold items are left out too."
        ),
    }


def _exclusions(campaign: Campaign) -> Exclusions:
    flagged = {
        row["assignment__rater_id"]: row
        for row in Vote.objects.filter(assignment__campaign=campaign, excluded=True)
        .values("assignment__rater_id")
        .annotate(
            regular=Count("id", filter=Q(assignment__item__gold_image__isnull=True)),
            gold=Count("id", filter=Q(assignment__item__gold_image__isnull=False)),
        )
        .order_by()
    }
    raters = tuple(
        ExcludedRater(
            rater_id=p.rater_id,
            participation_id=p.pk,
            external_id=p.external_id or p.rater.external_id,
            reason=p.exclusion_reason,
            excluded_at=p.excluded_at.isoformat() if p.excluded_at else None,
            excluded_votes=flagged.get(p.rater_id, {}).get("regular", 0),
            excluded_gold_votes=flagged.get(p.rater_id, {}).get("gold", 0),
        )
        for p in Participation.objects.filter(campaign=campaign, excluded=True).select_related("rater").order_by("id")
    )
    gold_votes = Vote.objects.filter(assignment__campaign=campaign, assignment__item__gold_image__isnull=False).count()
    speeders = tuple(
        FlaggedSpeeder(rater_id=p.rater_id, external_id=p.external_id or p.rater.external_id,
                       median_seconds=p.speeder_median_seconds, excluded=p.excluded)
        for p in Participation.objects.filter(campaign=campaign, speeder_flagged_at__isnull=False).select_related("rater").order_by("id")
    )
    return Exclusions(
        rule=exclusion_rule(campaign),
        raters=raters,
        excluded_votes=sum(r.excluded_votes for r in raters),
        gold_votes=gold_votes,
        speeders=speeders,
    )


def _plain(value):
    """Builtin, JSON-ready values: NaN / infinity -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- The campaign page's live win rates -------------------------------------------------------


def campaign_win_rates(campaign: Campaign) -> list[dict]:
    """Per criterion and model pair: B's item-level win rate with the headline interval, for the campaign page.

    The same numbers as the report at its default seed and rounds. Cached per
    vote snapshot (counting votes and the newest one's id: a new vote or an
    exclusion changes them) and code version, because the page polls every
    few seconds.
    """
    state = _counting_votes(campaign).aggregate(n=Count("id"), last=Max("id"))
    key = f"analysis:win-rates:{code_version()}:{campaign.pk}:{campaign.status}:{state['n']}:{state['last']}"
    rows = cache.get(key)
    if rows is None:
        rows = _campaign_win_rates(campaign)
        cache.set(key, rows, timeout=3600)
    return rows


def _campaign_win_rates(campaign: Campaign) -> list[dict]:
    frame = analysed_votes(campaign)
    options = {"seed": DEFAULT_SEED, "rounds": DEFAULT_ROUNDS, "level": 0.95, "include_incomplete": False}
    rows = []
    for c in _comparisons(campaign, frame, breakdowns=False, **options):
        o = c.item_outcomes
        rows.append(
            {
                "key": c.key, "criterion": c.criterion, "criterion_label": c.criterion_label,
                "model_a": c.model_a, "model_b": c.model_b, "items": c.items, "compared": c.compared,
                "incomplete_items": c.incomplete_items,
                "wins": o.wins if o else 0, "ties": o.ties if o else 0, "losses": o.losses if o else 0,
                "win_rate": c.win_rate, "low": c.interval.low if c.interval else None,
                "high": c.interval.high if c.interval else None,
                "interval_method": c.interval.method if c.interval else None,
                # Ties as half a win: the figure a null campaign (A vs A) centres on 50%, where the
                # headline rate (ties as not won) does not.
                "win_rate_half_ties": c.win_rate_half_ties,
                "low_half_ties": c.interval_half_ties.low if c.interval_half_ties else None,
                "high_half_ties": c.interval_half_ties.high if c.interval_half_ties else None,
                "interval_note": c.interval_note,
                "verdict": c.verdict,
                "message": c.message,
                # Display strings, so the page's script shows exactly what the server renders.
                "win_rate_text": percent(c.win_rate) if c.has_numbers else c.message,
                "interval_text": c.interval_text,
                "half_ties_text": c.half_ties_text if c.has_numbers else "",
                "half_ties_interval_text": c.half_ties_interval_text if c.has_numbers else "",
            }
        )
    return _plain(rows)


# --- Exports ----------------------------------------------------------------------------------


VOTES_CSV_COLUMNS = [*annotation_selectors.VOTE_EXPORT_COLUMNS, "counted"]


def votes_csv(campaign: Campaign) -> Iterator[str]:
    """Every vote of the campaign, one CSV line each, streamed (gold and excluded ones flagged).

    ``counted`` says whether the vote enters the report: neither excluded nor on a gold item.
    """
    gold, excluded = (annotation_selectors.VOTE_EXPORT_COLUMNS.index(name) for name in ("gold", "excluded"))
    rows = ([*row, not row[gold] and not row[excluded]] for row in annotation_selectors.vote_export_rows(campaign))
    return csv_export.lines(VOTES_CSV_COLUMNS, rows)


ITEMS_CSV_COLUMNS = [
    "item_id", "criterion", "prompt_id", "prompt", "category", "challenge", "seed", "model_a", "model_b",
    "votes_per_item", "votes_a", "votes_b", "votes_tie", "votes", "majority", "majority_model", "complete",
]


def items_csv(campaign: Campaign) -> Iterator[str]:
    """One CSV line per regular comparison item, with its counting votes and majority (analysis.stats' rule).

    ``majority`` is filled once an item has votes; only ``complete`` items
    (at least k votes) enter the report. Gold items are left out: they compare
    an image with a degraded copy of itself, not two models.
    """
    counting = Q(assignments__vote__excluded=False)
    items = (
        ComparisonItem.objects.regular().filter(campaign=campaign)
        .order_by("id")
        .values(
            "id", "criterion__criterion", "image_a__prompt_id", "image_a__prompt__text", "image_a__prompt__category",
            "image_a__prompt__challenge", "image_a__seed", "image_a__model__name", "image_b__model__name",
            "criterion__votes_per_item",
        )
        .annotate(
            **{
                f"votes_{winner}": Count("assignments__vote", filter=counting & Q(assignments__vote__winner=winner))
                for winner in stats.WINNERS
            }
        )
    )

    def rows():
        for item in items.iterator(chunk_size=2000):
            counts = [item[f"votes_{w}"] for w in stats.WINNERS]
            total = sum(counts)
            majority = stats.WINNERS[stats.majority_outcomes(np.array([counts]))[0]] if total else ""
            model = {"a": item["image_a__model__name"], "b": item["image_b__model__name"]}.get(majority, "")
            yield [
                item["id"], item["criterion__criterion"], item["image_a__prompt_id"], item["image_a__prompt__text"],
                item["image_a__prompt__category"], item["image_a__prompt__challenge"], item["image_a__seed"],
                item["image_a__model__name"], item["image_b__model__name"], item["criterion__votes_per_item"],
                *counts, total, majority, model, total >= item["criterion__votes_per_item"],
            ]

    return csv_export.lines(ITEMS_CSV_COLUMNS, rows())


def report_json(report: CampaignReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def report_figures(report: CampaignReport) -> dict[str, str | None]:
    """The report's plots as data: URIs (PNG), for the page and the standalone HTML file."""
    from . import plots  # matplotlib takes a moment to import; only rendering needs it

    with_numbers = [c for c in report.comparisons if c.has_numbers]
    return {
        "outcomes": plots.data_uri(plots.outcome_bars(with_numbers, level=report.reproducibility.level)) if with_numbers else None,
        "by_category": plots.data_uri(plots.breakdown_plot(with_numbers, by="category")) if with_numbers else None,
    }


def report_html(report: CampaignReport) -> str:
    """A standalone HTML file: inline CSS, plots embedded as base64 PNG, no external URL."""
    return render_to_string("analysis/report_standalone.html", {"report": report, "figures": report_figures(report)})


def report_pdf(report: CampaignReport) -> bytes:
    """A PDF: title page with the headline table, the outcome bars, the category breakdown, agreement and reproducibility."""
    from matplotlib.backends.backend_pdf import PdfPages

    from . import plots

    buffer = io.BytesIO()
    with_numbers = [c for c in report.comparisons if c.has_numbers]
    metadata = {"Title": f"Needle report: {report.campaign_name}", "Creator": "Needle"}
    with PdfPages(buffer, metadata=metadata) as pdf:
        pdf.savefig(plots.title_page(report))
        if with_numbers:
            pdf.savefig(plots.outcome_bars(with_numbers, level=report.reproducibility.level, page=True))
            pdf.savefig(plots.breakdown_plot(with_numbers, by="category", page=True))
        for ranking in report.rankings:
            pdf.savefig(plots.ranking_page(report, ranking))
        for page in plots.details_pages(report):
            pdf.savefig(page)
    return buffer.getvalue()


@dataclass(frozen=True)
class ExportFormat:
    name: str
    content_type: str
    file_suffix: str
    needs_report: bool


EXPORT_FORMATS = {
    "csv": ExportFormat("csv", "text/csv; charset=utf-8", "votes.csv", needs_report=False),
    "items.csv": ExportFormat("items.csv", "text/csv; charset=utf-8", "items.csv", needs_report=False),
    "json": ExportFormat("json", "application/json", "report.json", needs_report=True),
    "html": ExportFormat("html", "text/html; charset=utf-8", "report.html", needs_report=True),
    "pdf": ExportFormat("pdf", "application/pdf", "report.pdf", needs_report=True),
}
# Other spellings accepted by the command line and the API.
FORMAT_ALIASES = {"items-csv": "items.csv", "votes-csv": "csv"}


@dataclass(frozen=True)
class Export:
    """A file to hand over: bytes, or (CSV) an iterator of text lines to stream."""

    format: ExportFormat
    filename: str
    content: bytes | Iterator[str]


def export_format(name: str) -> ExportFormat:
    fmt = EXPORT_FORMATS.get(FORMAT_ALIASES.get(name, name))
    if fmt is None:
        known = ", ".join([*EXPORT_FORMATS, *FORMAT_ALIASES])
        raise ReportError(f"Unknown format {name!r}; use one of: {known}.")
    return fmt


def export_filename(campaign: Campaign, fmt: ExportFormat) -> str:
    return f"{slugify(campaign.name) or f'campaign-{campaign.pk}'}-{fmt.file_suffix}"


def export(campaign: Campaign, format_name: str, **options) -> Export:
    """The file for ``format_name`` (csv, items.csv, json, html, pdf); report options as for build_report."""
    fmt = export_format(format_name)
    if fmt.name == "csv":
        content = votes_csv(campaign)
    elif fmt.name == "items.csv":
        content = items_csv(campaign)
    else:
        report = build_report(campaign, **options)
        renderer = {"json": report_json, "html": report_html, "pdf": report_pdf}[fmt.name]
        content = renderer(report)
        content = content.encode() if isinstance(content, str) else content
    return Export(fmt, export_filename(campaign, fmt), content)


def find_campaign(name_or_id: str) -> Campaign:
    """A campaign by name, or by id when no campaign has that name."""
    campaign = Campaign.objects.filter(name=name_or_id).first()
    if campaign is None and str(name_or_id).isdigit():
        campaign = Campaign.objects.filter(pk=int(name_or_id)).first()
    if campaign is None:
        known = ", ".join(repr(n) for n in Campaign.objects.values_list("name", flat=True)[:20]) or "none yet"
        raise ReportError(f"There is no campaign named {name_or_id!r} (known: {known}).")
    return campaign

