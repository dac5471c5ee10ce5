"""Intervals and tests for win rates: Wilson, the exact sign test, the prompt-clustered bootstrap.

The bootstrap works on per-prompt sufficient statistics (for example wins and
comparisons of each prompt): resampling prompts with replacement is the same
as giving each prompt a multinomial count, and the resampled totals are those
counts times the per-prompt statistics. One matrix product per chunk of rounds
replaces a loop that would rebuild a frame per round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special, stats
from scipy.special import ndtr, ndtri

# Bootstrap counts held in memory at once (rounds x prompts), 16 MB as float64.
_RESAMPLE_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval for a share, with its method and nominal level."""

    low: float
    high: float
    level: float
    method: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the closed interval."""
        return self.low <= value <= self.high


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, not {level}")
    return float(ndtri(1 - (1 - level) / 2))


def wilson_half_width(share: float, n: float, level: float = 0.95) -> float:
    """Half-width of the Wilson score interval at an observed share and n comparisons."""
    z = _z(level)
    return z / (1 + z * z / n) * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for ``successes`` out of ``n`` independent comparisons.

    It treats the n comparisons as independent: right for one vote per prompt,
    too narrow when items or votes of one prompt are correlated (use the
    prompt-clustered bootstrap there).
    """
    if n <= 0:
        raise ValueError("Wilson interval needs at least one comparison")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n]; got {successes} of {n}")
    z = _z(level)
    share = successes / n
    center = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = wilson_half_width(share, n, level)
    return Interval(float(max(0.0, center - half)), float(min(1.0, center + half)), level, "wilson")


@dataclass(frozen=True)
class SignTest:
    """Exact two-sided sign test of "no difference": wins vs losses, ties left out."""

    wins: int
    losses: int
    p_value: float

    @property
    def decisive(self) -> int:
        """Comparisons with a winner (the test's n)."""
        return self.wins + self.losses


def sign_test(wins: int, losses: int) -> SignTest:
    """Exact two-sided sign test of wins vs losses under P(win) = 1/2 (ties excluded).

    The binomial null at 1/2 is symmetric, so the two-sided p-value (sum of the
    probabilities of outcomes no more likely than the observed one) is twice the
    smaller tail, capped at 1. No decisive comparison gives p = 1.
    """
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must not be negative")
    n = wins + losses
    if n == 0:
        return SignTest(wins, losses, 1.0)
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(wins, losses), n, 0.5)))
    return SignTest(int(wins), int(losses), p_value)


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A prompt-clustered bootstrap of one ratio statistic (for example the item-level win rate).

    ``percentile`` takes the replicates' quantiles; ``bca`` adjusts them for the
    replicates' median bias (``bias_correction``, z0) and for skewness
    (``acceleration``, a, from the jackknife over prompts). A BCa endpoint is NaN
    when it is undefined (every replicate on one side of the estimate).
    """

    estimate: float
    percentile: Interval
    bca: Interval
    rounds: int
    seed: int
    prompts: int
    bias_correction: float
    acceleration: float
    replicates: np.ndarray = field(repr=False)


def resampled_totals(per_prompt: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """Totals of per-prompt statistics over ``rounds`` resamples of the prompts with replacement.

    ``per_prompt`` is (prompts,) or (prompts, statistics); the result is
    (rounds,) or (rounds, statistics). Each round draws as many prompts as there
    are, with replacement; all items and votes of a drawn prompt come along,
    because they are summed into its row. Reproducible: the same seed, rounds
    and number of prompts give the same resamples.
    """
    per_prompt = np.asarray(per_prompt, dtype=np.float64)
    n_prompts = len(per_prompt)
    if n_prompts == 0:
        raise ValueError("the bootstrap needs at least one prompt")
    if rounds < 1:
        raise ValueError("the bootstrap needs at least one round")
    rng = np.random.default_rng(seed)
    chunk = max(1, _RESAMPLE_CHUNK_CELLS // n_prompts)
    totals = np.empty((rounds,) + per_prompt.shape[1:])
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        draws = rng.integers(0, n_prompts, size=(size, n_prompts))
        draws += np.arange(size)[:, None] * n_prompts
        counts = np.bincount(draws.ravel(), minlength=size * n_prompts).reshape(size, n_prompts)
        totals[start : start + size] = counts.astype(np.float64) @ per_prompt
    return totals


def bootstrap_intervals(
    estimate: float, replicates: np.ndarray, jackknife: np.ndarray, level: float, seed: int, prompts: int
) -> BootstrapResult:
    """Percentile and BCa intervals from bootstrap replicates and leave-one-prompt-out values.

    z0 counts replicates equal to the estimate as half below (the "mean"
    percentile-of-score, as scipy does), which matters for discrete statistics
    such as win rates over few comparisons.
    """
    z = _z(level)
    alpha = (1 - level) / 2
    rounds = len(replicates)
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    percentile = Interval(float(low), float(high), level, "cluster_bootstrap_percentile")

    below = np.count_nonzero(replicates < estimate) + np.count_nonzero(replicates <= estimate)
    z0 = float(ndtri(below / (2 * rounds)))
    jackknife = jackknife[np.isfinite(jackknife)]
    deviations = jackknife.mean() - jackknife if len(jackknife) else jackknife
    spread = float(np.sum(deviations**2))
    acceleration = float(np.sum(deviations**3) / (6 * spread**1.5)) if spread > 0 else 0.0
    edges = z0 + np.array([-z, z])
    with np.errstate(invalid="ignore"):
        adjusted = ndtr(z0 + edges / (1 - acceleration * edges))
    if np.isfinite(adjusted).all():
        bca_low, bca_high = np.quantile(replicates, adjusted)
    else:
        bca_low = bca_high = np.nan
    bca = Interval(float(bca_low), float(bca_high), level, "cluster_bootstrap_bca")
    return BootstrapResult(
        estimate=float(estimate),
        percentile=percentile,
        bca=bca,
        rounds=rounds,
        seed=seed,
        prompts=prompts,
        bias_correction=z0,
        acceleration=acceleration,
        replicates=replicates,
    )


def quantile_mc_error(replicates: np.ndarray, probabilities, axis: int = 0) -> np.ndarray:
    """Monte Carlo standard error of the sample quantiles of bootstrap ``replicates`` at ``probabilities``.

    From the order statistics: the rank of a p-quantile among B replicates
    has standard deviation sqrt(B p (1 - p)), so half the distance between the
    replicates that many ranks below and above it estimates the quantile's
    standard error, without a density estimate (Maritz-Jarrett in spirit).
    A bootstrap run again with another seed moves its ends by about this much.
    """
    replicates = np.sort(np.asarray(replicates, dtype=np.float64), axis=axis)
    rounds = replicates.shape[axis]
    errors = []
    for p in np.atleast_1d(probabilities):
        spread = np.sqrt(rounds * p * (1 - p))
        below = int(np.clip(np.floor(p * (rounds - 1) - spread), 0, rounds - 1))
        above = int(np.clip(np.ceil(p * (rounds - 1) + spread), 0, rounds - 1))
        errors.append((np.take(replicates, above, axis=axis) - np.take(replicates, below, axis=axis)) / 2)
    return np.stack(errors)


def ratio_jackknife(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Leave-one-prompt-out values of sum(numerator) / sum(denominator) (NaN where nothing is left)."""
    rest = denominator.sum() - denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rest > 0, (numerator.sum() - numerator) / rest, np.nan)


def cluster_bootstrap_ratio(
    numerator, denominator, *, rounds: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapResult:
    """Prompt-clustered bootstrap of sum(numerator) / sum(denominator), given per-prompt sums.

    For the item-level win rate, ``numerator[p]`` is prompt p's items won by B
    and ``denominator[p]`` its items compared. Returns percentile and BCa
    intervals (BCa acceleration from the jackknife over prompts).
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    if numerator.shape != denominator.shape or numerator.ndim != 1:
        raise ValueError("numerator and denominator must be 1-D arrays of the same length (one entry per prompt)")
    if (denominator <= 0).any():
        raise ValueError("every prompt must have a positive denominator")
    totals = resampled_totals(np.column_stack([numerator, denominator]), rounds, seed)
    estimate = numerator.sum() / denominator.sum()
    return bootstrap_intervals(
        estimate, totals[:, 0] / totals[:, 1], ratio_jackknife(numerator, denominator), level, seed, len(numerator)
    )


# --- The prompt-clustered score interval -----------------------------------------------------------------------------

CLUSTERED_SCORE = "cluster_score"
# Fewer prompts than this: no interval (see clustered_score_interval).
MIN_PROMPTS = 6
_BISECTIONS = 40


@dataclass(frozen=True, eq=False)
class VarianceComponents:
    """One-way ANOVA over prompts of per-item scores (1 won, 0 not; or 1 / 0.5 / 0 with ties as halves).

    Arrays over the leading (campaign) axes; the last axis of the input was
    the prompts. ``estimate`` is the pooled share sum(scores) / N. With
    theta the true share, the variance of the estimate is

        (theta (1 - theta) - deficit + (mean_size - 1) * between) / N

    where ``between`` is the variance of the prompts' true mean scores
    (method of moments, not truncated at 0: it is unbiased and may come out
    negative), ``deficit`` how far an item's variance falls short of
    theta (1 - theta) (0 for 0/1 scores, a quarter of the tie share with ties
    as halves) and ``mean_size`` = sum(n^2) / N, the weight prompt effects get.
    ``n0`` is the one-way ANOVA's average prompt size.
    """

    estimate: np.ndarray
    items: np.ndarray
    prompts: int
    between: np.ndarray
    deficit: np.ndarray
    mean_size: np.ndarray
    n0: np.ndarray

    def per_item_variance(self, theta):
        """N times the variance of the estimate if the true share were ``theta`` (floored at the no-clustering value / mean_size)."""
        binomial = np.maximum(theta * (1 - theta) - self.deficit, 0.0)
        return np.maximum(binomial + (self.mean_size - 1) * self.between, binomial / self.mean_size)

    def degrees_of_freedom(self, theta):
        """Satterthwaite degrees of freedom of that variance at ``theta``: 2 V^2 / Var(V), at least prompts - 1.

        Only the prompt-effect part of V is estimated. Var(V) is the normal-theory
        variance of the ANOVA estimate of ``between``, 2 / n0^2 (MSB^2 / (m - 1) +
        MSW^2 / (N - m)), with the mean squares at their expected values under
        ``theta`` and the estimated ``between`` (not the observed ones, which move
        with the estimate). Infinite with one item per prompt, where nothing is estimated.
        """
        m, total = self.prompts, self.items
        weight = self.mean_size - 1
        within = np.maximum(theta * (1 - theta) - self.deficit - self.between, 1e-12)
        mean_between = np.maximum(within + self.n0 * self.between, 1e-12)
        within_df = total - m
        with np.errstate(divide="ignore", invalid="ignore"):
            spread = 2 / self.n0**2 * (mean_between**2 / (m - 1) + np.where(within_df > 0, within**2 / within_df, 0.0))
            df = 2 * self.per_item_variance(theta) ** 2 / (weight**2 * spread)
        df = np.maximum(np.nan_to_num(df, nan=m - 1, posinf=np.inf), m - 1)
        return np.where(weight > 0, df, np.inf)


def variance_components(numerator, denominator, squares=None) -> VarianceComponents:
    """Per-prompt sums (score, squared score, items) -> :class:`VarianceComponents`; prompts on the last axis.

    ``squares`` defaults to ``numerator`` (0/1 scores). Needs two or more prompts.
    """
    y = np.asarray(numerator, dtype=np.float64)
    n = np.asarray(denominator, dtype=np.float64)
    q = y if squares is None else np.asarray(squares, dtype=np.float64)
    if y.shape != n.shape or q.shape != n.shape or y.ndim < 1:
        raise ValueError("numerator, denominator and squares must have the same shape, prompts on the last axis")
    if (n <= 0).any():
        raise ValueError("every prompt must have at least one item")
    m = y.shape[-1]
    if m < 2:
        raise ValueError("the clustered interval needs at least two prompts")
    total = n.sum(axis=-1)
    estimate = y.sum(axis=-1) / total
    share = y / n
    mean_between = (n * (share - estimate[..., None]) ** 2).sum(axis=-1) / (m - 1)
    within_df = total - m
    within_squares = np.maximum((q - y * share).sum(axis=-1), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_within = np.where(within_df > 0, within_squares / within_df, 0.0)
    squared_sizes = (n**2).sum(axis=-1)
    n0 = (total - squared_sizes / total) / (m - 1)  # the one-way ANOVA's average prompt size
    return VarianceComponents(
        estimate=estimate,
        items=total,
        prompts=m,
        between=(mean_between - mean_within) / n0,
        deficit=(y.sum(axis=-1) - q.sum(axis=-1)) / total,
        mean_size=squared_sizes / total,
        n0=n0,
    )


def _score_test_accepts(parts: VarianceComponents, theta, upper: bool, tail) -> np.ndarray:
    """Whether the score test keeps ``theta`` on one side (``upper``: theta above the estimate), at one-sided level ``tail``."""
    variance = parts.per_item_variance(theta) / parts.items
    difference = parts.estimate - theta
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(variance > 0, difference / np.sqrt(variance), np.sign(difference) * np.inf)
    critical = special.stdtrit(parts.degrees_of_freedom(theta), 1 - tail)
    return (-statistic if upper else statistic) <= critical


def _bisect(accepts, estimate: np.ndarray, end: float) -> np.ndarray:
    """The accepted value farthest from ``estimate`` toward ``end`` (acceptance is one run from the estimate)."""
    inside, outside = estimate.copy(), np.full_like(estimate, end)
    for _ in range(_BISECTIONS):
        middle = (inside + outside) / 2
        ok = accepts(middle)
        inside, outside = np.where(ok, middle, inside), np.where(ok, outside, middle)
    return np.where(accepts(np.full_like(estimate, end)), end, inside)


def clustered_score_bounds(numerator, denominator, squares=None, *, level: float = 0.95):
    """(low, high) arrays of the prompt-clustered score interval; leading axes are independent campaigns.

    See :func:`clustered_score_interval` for the method.
    """
    _z(level)
    alpha = 1 - level
    parts = variance_components(numerator, denominator, squares)
    n = np.asarray(denominator, dtype=np.float64)
    # The most extreme data, every item won (or lost), are the only data that could reject a theta near 1 (or 0)
    # from above (below). Where even they cannot, that tail is empty and the test puts all of alpha in the other.
    all_won = variance_components(n, n, n)
    all_lost = variance_components(np.zeros_like(n), n, np.zeros_like(n))
    upper_tail_empty_from = _bisect(
        lambda theta: _score_test_accepts(all_won, theta, False, alpha / 2), all_won.estimate, 0.0
    )
    lower_tail_empty_to = _bisect(
        lambda theta: _score_test_accepts(all_lost, theta, True, alpha / 2), all_lost.estimate, 1.0
    )

    def accepts_low(theta):
        return _score_test_accepts(parts, theta, False, np.where(theta <= lower_tail_empty_to, alpha, alpha / 2))

    def accepts_high(theta):
        return _score_test_accepts(parts, theta, True, np.where(theta >= upper_tail_empty_from, alpha, alpha / 2))

    return _bisect(accepts_low, parts.estimate, 0.0), _bisect(accepts_high, parts.estimate, 1.0)


class TooFewPrompts(ValueError):
    """Too few prompts for an interval that keeps its promised coverage; the message says so in words."""


def too_few_prompts_message(prompts: int, min_prompts: int = MIN_PROMPTS) -> str:
    return (
        f"no interval: {prompts} prompt{'s' if prompts != 1 else ''}, and Needle prints one from {min_prompts} prompts on "
        "(with fewer, how much prompts differ cannot be pinned down: no interval tested kept its 95% coverage)"
    )


def clustered_score_interval(
    numerator, denominator, squares=None, *, level: float = 0.95, min_prompts: int = MIN_PROMPTS
) -> Interval:
    """The prompt-clustered score interval for sum(numerator) / sum(denominator), from per-prompt sums.

    For B's item-level win rate, ``numerator[p]`` is the items of prompt p that
    B won and ``denominator[p]`` its items; with ties as half a win, the
    numerator counts ties as 0.5 and ``squares`` (the per-prompt sums of the
    squared scores) is wins + ties / 4.

    The interval is every theta that a score test does not reject (Wilson's
    construction): (estimate - theta) / se(theta) against a t quantile, where
    se(theta)^2 = (theta (1 - theta) - deficit + (mean_size - 1) * between) / N
    adds the variance the prompts bring (one-way ANOVA over prompts, see
    :class:`VarianceComponents`) to the binomial one at theta, and the t
    quantile has the Satterthwaite degrees of freedom of that estimated variance
    (between prompts - 1 and infinity, infinite with one item per prompt, where
    it is the Wilson interval away from 0 and 1). Near 0 and 1 the test is Blaker's kind
    of two-sided: where not even every item won could reject theta from above,
    the upper tail is empty and the lower one gets all of 1 - level (and the
    same at the other end); otherwise each tail gets half.

    Fewer than ``min_prompts`` prompts raise :class:`TooFewPrompts`: coverage
    simulations (analysis/tests/test_coverage.py, bench/README.md) found no
    method that held 93.5-96.5% there (the bootstrap was far too narrow, this
    interval too wide).
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    if numerator.ndim != 1:
        raise ValueError("numerator must be 1-D: one entry per prompt")
    if len(numerator) < max(2, min_prompts):
        raise TooFewPrompts(too_few_prompts_message(len(numerator), max(2, min_prompts)))
    low, high = clustered_score_bounds(numerator, denominator, squares, level=level)
    return Interval(float(low), float(high), level, CLUSTERED_SCORE)
