"""The report as plain values: frozen dataclasses the renderers lay out, with their display strings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import stats

__all__ = [  # noqa: RUF022 (constants, classes, functions)
    "DEFAULT_ROUNDS",
    "DEFAULT_SEED",
    "INTERVAL_METHOD_LABELS",
    "MAX_ROUNDS",
    "MAX_SEED",
    "MIN_ROUNDS",
    "PLANNER_HALF_WIDTHS",
    "POSITION_BIAS_ALPHA",
    "PPI_EXPLANATION",
    "SEQUENCE_EXPLANATION",
    "AgreementSummary",
    "Bounds",
    "CampaignReport",
    "Comparison",
    "DecisionSummary",
    "ExcludedRater",
    "Exclusions",
    "FlaggedSpeeder",
    "GroupWinRate",
    "Outcomes",
    "PlannerTarget",
    "PredictionPoweredSummary",
    "RankedModel",
    "Ranking",
    "RaterSideBias",
    "Reproducibility",
    "SequenceSummary",
    "p_value_text",
    "percent",
    "plain",
    "verdict",
]

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
    stats.PPI: "prediction-powered (PPI++), prompt-clustered",
    stats.PPI + "_humans_only": "humans only, prompt-clustered (the same variance estimate, lambda 0)",
    stats.HEDGED_CAPITAL: "anytime-valid confidence sequence (hedged capital, over prompts)",
}


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
        """ "above" when the whole interval lies above 50% (B preferred), "below" when wholly below, else "unclear"."""
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
        return [
            (names[i], [percent(v, 0) if v is not None else "—" for v in row])
            for i, row in enumerate(self.win_fractions)
        ]


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


SEQUENCE_EXPLANATION = (
    "The anytime-valid interval (a confidence sequence) stays valid however often you look and whenever you stop: "
    "with 95% probability it holds the true win rate at every look at once. The fixed interval is valid only at a "
    "sample size fixed in advance; watching it and stopping when it first excludes 50% finds a difference that is "
    "not there far more often than 5% of the time. The price of looking is width: the anytime-valid interval is wider."
)
PPI_EXPLANATION = (
    "An automatic judge scored every pair; humans voted on a random subset of the prompts. The AI-assisted "
    "(prediction-powered) estimate starts from the judge's scores over all pairs and corrects them by how far the "
    "judge's scores were from the humans' votes on the pairs humans voted on, so it stays unbiased however good or bad "
    "the judge is. Lambda (0-1) is how much it leans on the judge, tuned from the data: 0 means humans alone (a useless "
    "judge costs nothing), 1 means full weight. Its interval is never wider than the humans-only one from the same votes."
)


@dataclass(frozen=True)
class SequenceSummary:
    """One criterion and model pair's anytime-valid confidence sequence at its latest look (analysis.stats.sequential).

    ``prompts``: complete prompts seen (the looks), in the order they completed; ``total_prompts``: the pair's
    prompts with comparisons. ``decided_at``/``decision``: the first look at which the sequence excluded 50% (or,
    with a target width, became that narrow), and what it said then; "" while undecided. ``message`` says why there
    are no numbers yet.
    """

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    prompts: int
    total_prompts: int
    low: float | None
    high: float | None
    estimate: float | None
    level: float
    target_width: float | None
    decided_at: int | None
    decision: str
    decision_low: float | None
    decision_high: float | None
    method: str
    message: str = ""

    @property
    def key(self) -> str:
        return f"{self.criterion}:{self.model_a}:{self.model_b}"

    @property
    def text(self) -> str:
        if self.low is None:
            return "—"
        return f"{percent(self.low)} – {percent(self.high)}"

    @property
    def verdict(self) -> str:
        if self.low is None:
            return "unclear"
        return "above" if self.low > 0.5 else "below" if self.high < 0.5 else "unclear"

    @property
    def decision_text(self) -> str:
        if not self.decision:
            return "not decided yet" if self.low is not None else ""
        words = {
            "B better": f"{self.model_b} preferred (50% excluded)",
            "A better": f"{self.model_a} preferred (50% excluded)",
            "width reached": "target width reached",
        }[self.decision]
        return f"{words} at prompt {self.decided_at}: {percent(self.decision_low)} – {percent(self.decision_high)}"


@dataclass(frozen=True)
class DecisionSummary:
    """A recorded "stop when decided" decision (analysis.models.CampaignDecision) as plain values."""

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    decision: str
    look: int
    votes_at_look: int
    votes_at_check: int
    low: float
    high: float
    estimate: float
    level: float
    target_width: float | None
    decided_at: str
    recorded_at: str
    closed_campaign: bool

    @property
    def sentence(self) -> str:
        what = {
            "B better": f"{self.model_b} is preferred to {self.model_a}: the anytime-valid interval excluded 50%",
            "A better": f"{self.model_a} is preferred to {self.model_b}: the anytime-valid interval excluded 50%",
            "width reached": f"the anytime-valid interval narrowed to the target width of {percent(self.target_width)}",
        }[self.decision]
        closed = " The campaign was closed automatically." if self.closed_campaign else ""
        return (
            f"{self.criterion_label.capitalize()}, {self.model_b} vs {self.model_a}: decided after {self.look} complete "
            f"prompts and {self.votes_at_look} counting votes ({self.decided_at}): {what}; B's win rate (ties as half) "
            f"{percent(self.estimate)}, {self.level:.1%} anytime-valid interval {percent(self.low)} – {percent(self.high)}."
            f"{closed}"
        )


@dataclass(frozen=True)
class PredictionPoweredSummary:
    """B's win rate (ties as half) from human votes and an automatic judge's scores, PPI++ (analysis.stats.ppi).

    ``labelled_*``: the comparisons (and prompts) humans completed, which the judge also scored;
    ``unlabelled_*``: the pairs only the judge scored. ``message`` says why there are no numbers (then they are None).
    """

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    judge: str
    labelled_items: int
    labelled_prompts: int
    unlabelled_items: int
    unlabelled_prompts: int
    message: str = ""
    estimate: float | None = None
    interval: Bounds | None = None
    humans_only_estimate: float | None = None
    humans_only: Bounds | None = None
    lam: float | None = None
    agreement: float | None = None
    correlation: float | None = None
    effective_labelled: float | None = None
    interval_note: str = ""

    @property
    def key(self) -> str:
        return f"{self.criterion}:{self.model_a}:{self.model_b}"

    @property
    def has_numbers(self) -> bool:
        return self.estimate is not None

    @property
    def interval_text(self) -> str:
        return self.interval.text if self.interval else "—"

    @property
    def humans_only_text(self) -> str:
        return self.humans_only.text if self.humans_only else "—"

    @property
    def estimate_text(self) -> str:
        return percent(self.estimate)

    @property
    def humans_only_estimate_text(self) -> str:
        return percent(self.humans_only_estimate)

    @property
    def agreement_text(self) -> str:
        return percent(self.agreement)

    @property
    def sentence(self) -> str:
        if not self.has_numbers:
            return f"{self.criterion_label.capitalize()}, {self.model_b} vs {self.model_a}: {self.message}."
        interval = (
            f"{self.interval.level:.0%} interval {self.interval_text} (humans alone: {self.humans_only_text})"
            if self.interval
            else self.interval_note
        )
        return (
            f"{self.criterion_label.capitalize()}, {self.model_b} vs {self.model_a}: AI-assisted win rate (ties as half) "
            f"{percent(self.estimate)}, {interval}; lambda {self.lam:.2f}; the judge ({self.judge}) agreed with the "
            f"human majority on {percent(self.agreement)} of {self.labelled_items} comparisons humans completed."
        )


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
    # Issue 13: the anytime-valid confidence sequences, the campaign's stop rule and its recorded decisions, and the
    # AI-assisted (prediction-powered) win rates where an automatic judge scored the pairs.
    sequences: tuple[SequenceSummary, ...] = ()
    stop_rule: dict | None = None
    decisions: tuple[DecisionSummary, ...] = ()
    prediction_powered: tuple[PredictionPoweredSummary, ...] = ()
    sequence_explanation: str = SEQUENCE_EXPLANATION
    ppi_explanation: str = PPI_EXPLANATION

    @property
    def level_text(self) -> str:
        return f"{self.reproducibility.level:.0%}"

    @property
    def sequence_rows(self) -> list[tuple[SequenceSummary, Comparison | None]]:
        """Each anytime-valid interval with the comparison whose fixed interval it is shown beside."""
        comparisons = {c.key: c for c in self.comparisons}
        return [(s, comparisons.get(s.key)) for s in self.sequences]

    @property
    def flagged_raters(self) -> int:
        return sum(r.flagged for r in self.position_bias)

    def as_dict(self) -> dict:
        """Every number, JSON-ready: NaN and infinities become None."""
        return plain(asdict(self))


def plain(value):
    """Builtin, JSON-ready values: NaN / infinity -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
