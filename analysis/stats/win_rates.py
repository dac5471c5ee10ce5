"""Win rates of model B over model A, Emu style (item majority) and per vote, with intervals.

"Win" is always from model B's side: in Needle's two-model campaigns B is the
candidate (for example the quality-tuned model) and A the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .intervals import (
    CLUSTERED_SCORE,
    BootstrapResult,
    Interval,
    SignTest,
    TooFewPrompts,
    bootstrap_intervals,
    clustered_score_interval,
    ratio_jackknife,
    resampled_totals,
    sign_test,
    wilson_interval,
)
from .votes import TIE, A, B, EncodedVotes, criteria_in, encode_votes, select_criterion

HEADLINE_INTERVAL = CLUSTERED_SCORE


def headline_interval() -> str:
    """Which interval the report prints around a win rate: the prompt-clustered score interval.

    Why clustered: the items of one prompt (several seeds) and the k votes of
    one item share the prompt, so they are not independent, and an interval
    that treats votes (or items) as independent is too narrow: with strong
    prompt effects the naive vote-level Wilson interval covers about 62% and the
    item-level Wilson about 80%, where 95% is promised.

    Why a score interval rather than the prompt-clustered bootstrap (BCa) it
    replaces: the bootstrap held 95% with 50 or more prompts, but with few
    prompts it is far too narrow (it cannot see more spread between prompts
    than the few it has): with moderate prompt effects it covered 63-84% at
    2-5 prompts (true rates 0.5-0.8), 88-92% at 10 and 91-95% at 20, where
    this interval holds 93.5-96.5%. The score interval adds the between-prompt variance (one-way ANOVA)
    to the binomial variance at each candidate rate, takes a t quantile with
    Satterthwaite degrees of freedom, and is deterministic (no Monte Carlo
    error, no seed). Coverage in simulation: analysis/tests/test_coverage.py and
    bench/README.md.

    With fewer than ``MIN_PROMPTS`` (6) prompts there is no interval (the
    report says why): nothing tested kept 93.5-96.5% there (this interval is
    too wide, 96-100%). The bootstrap is still computed on request
    (``WinRateReport.bootstrap``, ``rounds`` > 0) for comparison.
    """
    return HEADLINE_INTERVAL


@dataclass(frozen=True)
class Shares:
    """Wins, ties and losses of model B over a set of comparisons (items or votes)."""

    wins: int
    ties: int
    losses: int

    @property
    def comparisons(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float:
        """Wins / comparisons: Emu's win rate (ties count as not won)."""
        return self.wins / self.comparisons

    @property
    def tie_share(self) -> float:
        return self.ties / self.comparisons

    @property
    def loss_share(self) -> float:
        return self.losses / self.comparisons

    @property
    def win_rate_half_ties(self) -> float:
        """(Wins + ties / 2) / comparisons: the other convention, where a tie is half a win."""
        return (self.wins + self.ties / 2) / self.comparisons


@dataclass(frozen=True, eq=False)
class WinRateReport:
    """Everything the report says about one criterion of a two-model comparison.

    ``items``: Emu-style shares, one outcome per item by majority of its votes
    (see :func:`analysis.stats.votes.majority_outcomes`). ``votes``: the same
    shares over the individual votes of the same items. ``incomplete_items``:
    items with fewer than k votes; they are left out of everything else unless
    ``include_incomplete`` was set.

    Intervals: ``interval`` (item-level win rate) and ``interval_half_ties``
    (the wins + ties / 2 convention) are the prompt-clustered score intervals
    (:func:`headline_interval`); both are None with fewer than ``MIN_PROMPTS``
    prompts, and ``interval_note`` says why. For comparison only:
    ``bootstrap`` / ``bootstrap_half_ties`` (prompt-clustered bootstrap, too
    narrow with few prompts), ``item_wilson`` (items as independent) and
    ``vote_wilson`` (votes as independent; both too narrow when the votes of
    a prompt are correlated). ``sign_test``: exact test of item-level wins vs
    losses, ties excluded.
    """

    criterion: str
    model_a: str
    model_b: str
    items: Shares
    votes: Shares
    prompts: int
    incomplete_items: int
    include_incomplete: bool
    bootstrap: BootstrapResult | None
    bootstrap_half_ties: BootstrapResult | None
    item_wilson: Interval
    vote_wilson: Interval
    sign_test: SignTest
    interval: Interval | None
    interval_half_ties: Interval | None
    interval_note: str

    @property
    def headline(self) -> Interval | None:
        """The interval around ``items.win_rate`` that the report headline uses (see :func:`headline_interval`)."""
        return self.interval


def _two_model_pair(encoded: EncodedVotes) -> tuple[str, str]:
    pairs = set(zip(encoded.item_model_a.tolist(), encoded.item_model_b.tolist(), strict=True))
    if len(pairs) != 1:
        named = sorted((encoded.model_names[a], encoded.model_names[b]) for a, b in pairs)
        raise ValueError(
            f"a win rate compares one model pair, but the votes hold {len(pairs)} (model_a, model_b) pairs "
            f"{named[:5]}; use bradley_terry() for more than two models"
        )
    (a, b) = pairs.pop()
    return str(encoded.model_names[a]), str(encoded.model_names[b])


def _shares(winner_codes: np.ndarray) -> Shares:
    counts = np.bincount(winner_codes, minlength=3)
    return Shares(wins=int(counts[B]), ties=int(counts[TIE]), losses=int(counts[A]))


def _report(
    encoded: EncodedVotes,
    criterion: str,
    item_mask: np.ndarray,
    *,
    rounds: int,
    seed: int,
    level: float,
    include_incomplete: bool,
) -> WinRateReport:
    """Win-rate report over the items in ``item_mask`` (one criterion, one model pair)."""
    model_a, model_b = _two_model_pair(encoded)
    complete = encoded.item_complete
    incomplete_items = int(np.count_nonzero(item_mask & ~complete))
    used = item_mask if include_incomplete else item_mask & complete
    if not used.any():
        raise ValueError(
            f"no complete items for {criterion!r} ({incomplete_items} incomplete); pass include_incomplete=True to use them"
        )
    outcome = encoded.item_outcome[used]
    items = _shares(outcome)
    votes = _shares(encoded.vote_winner[used[encoded.vote_item]])

    # Per-prompt sums: items won by B, won counting ties as halves, and items compared.
    prompt_codes, prompt_index = np.unique(encoded.item_prompt[used], return_inverse=True)
    n_prompts = len(prompt_codes)
    wins = np.bincount(prompt_index, weights=(outcome == B), minlength=n_prompts)
    ties = np.bincount(prompt_index, weights=(outcome == TIE), minlength=n_prompts)
    half_ties = wins + 0.5 * ties
    compared = np.bincount(prompt_index, minlength=n_prompts).astype(np.float64)
    try:
        interval = clustered_score_interval(wins, compared, level=level)
        interval_half_ties = clustered_score_interval(half_ties, compared, wins + 0.25 * ties, level=level)
        note = ""
    except TooFewPrompts as exc:
        interval = interval_half_ties = None
        note = str(exc)
    bootstrap = bootstrap_half_ties = None
    if rounds:
        totals = resampled_totals(np.column_stack([wins, half_ties, compared]), rounds, seed)
        bootstrap = bootstrap_intervals(
            items.win_rate, totals[:, 0] / totals[:, 2], ratio_jackknife(wins, compared), level, seed, n_prompts
        )
        bootstrap_half_ties = bootstrap_intervals(
            items.win_rate_half_ties,
            totals[:, 1] / totals[:, 2],
            ratio_jackknife(half_ties, compared),
            level,
            seed,
            n_prompts,
        )
    return WinRateReport(
        criterion=criterion,
        model_a=model_a,
        model_b=model_b,
        items=items,
        votes=votes,
        prompts=n_prompts,
        incomplete_items=incomplete_items,
        include_incomplete=include_incomplete,
        bootstrap=bootstrap,
        bootstrap_half_ties=bootstrap_half_ties,
        item_wilson=wilson_interval(items.wins, items.comparisons, level),
        vote_wilson=replace(wilson_interval(votes.wins, votes.comparisons, level), method="wilson_votes_naive"),
        sign_test=sign_test(items.wins, items.losses),
        interval=interval,
        interval_half_ties=interval_half_ties,
        interval_note=note,
    )


def win_rate_report(
    votes: pd.DataFrame,
    criterion: str | None = None,
    *,
    rounds: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    include_incomplete: bool = False,
) -> WinRateReport:
    """Item-level and vote-level win rates of model B over model A for one criterion, with intervals and a sign test.

    ``criterion=None`` requires the frame to hold exactly one criterion. The
    comparison bootstrap resamples prompts ``rounds`` times from ``seed``
    (``rounds=0`` skips it; the intervals the report prints do not use it).
    """
    criterion, selected = select_criterion(votes, criterion)
    encoded = encode_votes(selected)
    return _report(
        encoded,
        criterion,
        np.ones(encoded.n_items, dtype=bool),
        rounds=rounds,
        seed=seed,
        level=level,
        include_incomplete=include_incomplete,
    )


def win_rate_reports(votes: pd.DataFrame, **options) -> dict[str, WinRateReport]:
    """:func:`win_rate_report` for every criterion present, keyed by criterion."""
    return {name: win_rate_report(votes, name, **options) for name in criteria_in(votes)}


_BREAKDOWN_COLUMNS = {
    "category": ("item_category", "category_names"),
    "challenge": ("item_challenge", "challenge_names"),
}


def win_rates_by(
    votes: pd.DataFrame,
    by: str,
    criterion: str | None = None,
    *,
    rounds: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    include_incomplete: bool = False,
) -> pd.DataFrame:
    """Item-level win rates broken down by ``by`` ("category" or "challenge"), one row per criterion and group.

    ``criterion=None`` covers every criterion present (each criterion is still
    analysed on its own). Each group's interval is the headline interval
    (:func:`headline_interval`) over that group's prompts, with its
    ``interval_method``; a group with fewer than ``MIN_PROMPTS`` prompts has
    none (NaN ends, empty method) and ``interval_note`` says why.
    """
    if by not in _BREAKDOWN_COLUMNS:
        raise ValueError(f"by must be one of {sorted(_BREAKDOWN_COLUMNS)}, not {by!r}")
    criteria = [criterion] if criterion is not None else criteria_in(votes)
    item_attr, names_attr = _BREAKDOWN_COLUMNS[by]
    rows = []
    for name in criteria:
        name, selected = select_criterion(votes, name)
        encoded = encode_votes(selected)
        groups = getattr(encoded, item_attr)
        for code, group in enumerate(getattr(encoded, names_attr)):
            in_group = groups == code
            if not in_group.any():
                continue
            if not include_incomplete and not (in_group & encoded.item_complete).any():
                rows.append({"criterion": name, by: group, "incomplete_items": int(in_group.sum())})
                continue
            report = _report(
                encoded, name, in_group, rounds=rounds, seed=seed, level=level, include_incomplete=include_incomplete
            )
            rows.append(
                {
                    "criterion": name,
                    by: group,
                    "prompts": report.prompts,
                    "comparisons": report.items.comparisons,
                    "wins": report.items.wins,
                    "ties": report.items.ties,
                    "losses": report.items.losses,
                    "win_rate": report.items.win_rate,
                    "tie_share": report.items.tie_share,
                    "loss_share": report.items.loss_share,
                    "win_rate_half_ties": report.items.win_rate_half_ties,
                    "low": report.interval.low if report.interval else np.nan,
                    "high": report.interval.high if report.interval else np.nan,
                    "interval_method": report.interval.method if report.interval else "",
                    "interval_note": report.interval_note,
                    "sign_test_p": report.sign_test.p_value,
                    "incomplete_items": report.incomplete_items,
                }
            )
    return pd.DataFrame(rows)
