"""How many comparisons a campaign needs: for an interval width, or for power against "no difference"."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from .intervals import wilson_half_width


def comparisons_for_half_width(
    half_width: float, win_rate: float = 0.5, level: float = 0.95, design_effect: float = 1.0
) -> int:
    """Comparisons needed for a Wilson interval of at most ±``half_width`` at an observed ``win_rate``.

    The Wilson half-width shrinks as n grows, so the smallest such n is found by
    bisection. ``design_effect`` (>= 1) scales n for correlated comparisons:
    the variance of the prompt-clustered estimate divided by the binomial one
    (for example the squared ratio of a pilot's bootstrap to Wilson widths).
    win_rate = 0.5 is the worst case.
    """
    if half_width <= 0:
        raise ValueError("half_width must be positive")
    if not 0 <= win_rate <= 1:
        raise ValueError("win_rate must lie in [0, 1]")
    if design_effect < 1:
        raise ValueError("design_effect must be at least 1")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, not {level}")
    if half_width >= 0.5:  # every Wilson interval is narrower than ±0.5
        return 1
    low, high = 1, 2
    while wilson_half_width(win_rate, high, level) > half_width:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if wilson_half_width(win_rate, middle, level) > half_width:
            low = middle
        else:
            high = middle
    if wilson_half_width(win_rate, low, level) <= half_width:
        high = low
    return math.ceil(high * design_effect)


def additional_comparisons_needed(
    wins: int, comparisons: int, half_width: float, level: float = 0.95, design_effect: float = 1.0
) -> int:
    """Comparisons still to collect for a ±``half_width`` interval, given ``wins`` of ``comparisons`` so far.

    Plans at the current win rate (0.5 when nothing has been collected); 0 when
    the target is already met.
    """
    if comparisons < 0 or not 0 <= wins <= comparisons:
        raise ValueError("need 0 <= wins <= comparisons")
    current = wins / comparisons if comparisons else 0.5
    return max(0, comparisons_for_half_width(half_width, current, level, design_effect) - comparisons)


def _sign_test_critical(decisive: np.ndarray, alpha: float) -> np.ndarray:
    """Largest c per n whose sign test rejects (2 * P(X <= c) <= alpha under 1/2); -1 when none does."""
    guess = stats.binom.ppf(alpha / 2, decisive, 0.5).astype(np.int64)
    critical = np.full(decisive.shape, -1, dtype=np.int64)
    # ppf can land one off through rounding: check the neighbours with the test's own formula.
    for candidate in (guess - 1, guess, guess + 1):
        rejects = (candidate >= 0) & (2.0 * stats.binom.cdf(candidate, decisive, 0.5) <= alpha)
        critical = np.where(rejects, np.maximum(critical, candidate), critical)
    return critical


def sign_test_power(decisive, win_rate: float, alpha: float = 0.05):
    """Power of the exact two-sided sign test with ``decisive`` comparisons when B truly wins ``win_rate`` of them."""
    decisive = np.asarray(decisive, dtype=np.int64)
    critical = _sign_test_critical(decisive, alpha)
    power = stats.binom.cdf(critical, decisive, win_rate) + stats.binom.sf(decisive - critical - 1, decisive, win_rate)
    return np.where(critical >= 0, power, 0.0)


def comparisons_for_power(win_rate: float, power: float = 0.8, alpha: float = 0.05, tie_share: float = 0.0) -> int:
    """Comparisons needed for the exact sign test to detect a true ``win_rate`` (vs 0.5) with ``power`` at ``alpha``.

    ``win_rate`` is B's share of the decisive comparisons (ties excluded, as in
    the test). The exact test's power saw-tooths in n, so the answer is
    monotone-safe: the smallest n from which every larger n also reaches the
    power, checked up to at least twice that n and twice the normal-approximation
    size (the dips shrink as n grows). With an
    expected ``tie_share`` the decisive count is scaled up to comparisons.
    """
    if not 0 < win_rate < 1 or win_rate == 0.5:
        raise ValueError("win_rate must lie in (0, 1) and differ from 0.5")
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise ValueError("power and alpha must lie in (0, 1)")
    if not 0 <= tie_share < 1:
        raise ValueError("tie_share must lie in [0, 1)")
    z_alpha, z_power = stats.norm.isf(alpha / 2), stats.norm.ppf(power)
    spread = math.sqrt(win_rate * (1 - win_rate))
    approximate = ((0.5 * z_alpha + z_power * spread) / (win_rate - 0.5)) ** 2
    horizon = int(2 * approximate) + 50
    while True:
        decisive = np.arange(1, horizon + 1)
        short = np.flatnonzero(sign_test_power(decisive, win_rate, alpha) < power)
        if len(short) == 0 or decisive[short[-1]] < horizon // 2:  # checked up to at least twice the answer
            break
        horizon *= 2
    needed = int(decisive[short[-1]] + 1) if len(short) else 1
    return math.ceil(needed / (1 - tie_share))
