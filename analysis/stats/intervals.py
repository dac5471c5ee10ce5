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
from scipy import stats
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
