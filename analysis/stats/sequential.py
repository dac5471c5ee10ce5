"""An anytime-valid confidence sequence for the win rate: watch it after every prompt without breaking it.

A fixed-sample interval (the clustered score interval of :mod:`.intervals`)
promises 95% coverage at one pre-planned sample size. A researcher who looks at
it as votes come in and stops the first time it excludes 50% makes a false
claim far more often than 5% (``bench/sequential.py`` measures it). A
confidence sequence (CS) is a sequence of intervals that holds the truth at
*every* look at once with probability >= 95%, so stopping whenever it excludes
50% (or whenever it is narrow enough) keeps the promise.

Units are prompts, as in the headline interval: each prompt's score is the mean
over its items of 1 (B won), 1/2 (tie, with ``ties_as_half``) or 0, a number in
[0, 1]; prompts arrive in random order (the assignment engine must serve
prompts in a random order for this to hold), so the scores are i.i.d. draws
whose mean is the item-level win rate (for equal numbers of items per prompt;
with unequal ones, the mean over prompts of each prompt's win rate).

Method: the hedged-capital confidence sequence of Waudby-Smith & Ramdas,
"Estimating means of bounded random variables by betting" (JRSS B, 2023),
exactly as ``confseq.betting.hedged_cs`` (confseq 0.0.11) computes it: for a
candidate mean m, two gamblers bet that the mean is above / below m with
predictable "predictable-plug-in empirical Bernstein" bets truncated at
1/2 / m and 1/2 / (1 - m); their capitals K+_t(m) = prod(1 + l_i (x_i - m)) and
K-_t(m) = prod(1 - l_i (x_i - m)) are nonnegative martingales when m is the
truth, so by Ville's inequality max(theta K+, (1 - theta) K-) exceeds 1 / alpha
at any time with probability <= alpha. The CS at t is every m on the grid whose
capital has not crossed 1 / alpha, widened by one grid step (confseq's
convention; the exact set is an interval, so this is conservative), and the
running intersection over looks.

Everything here is pure numpy (no Django).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HEDGED_CAPITAL = "hedged_capital_cs"
GRID = 1000  # candidate means 0, 1/1000, ..., 1, as confseq's default ``breaks``
_THETA = 0.5  # weight of the "above m" gambler (1/2: two-sided)
_TRUNCATION = 0.5  # bets truncated at 1/2 / m and 1/2 / (1 - m)


def prompt_scores(wins, items, ties=None, *, ties_as_half: bool = True) -> np.ndarray:
    """Per-prompt mean scores in [0, 1] from per-prompt counts: (wins + ties / 2) / items, or wins / items.

    Arrays of any shape (prompts on the last axis, in arrival order).
    """
    wins = np.asarray(wins, dtype=np.float64)
    items = np.asarray(items, dtype=np.float64)
    if (items <= 0).any():
        raise ValueError("every prompt needs at least one item")
    total = wins + (0.5 * np.asarray(ties, dtype=np.float64) if ties is not None and ties_as_half else 0.0)
    scores = total / items
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError("wins (+ ties / 2) must lie between 0 and the prompt's items")
    return scores


def _check(scores, level: float) -> tuple[np.ndarray, float]:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError("a confidence sequence needs at least one prompt score")
    if not np.isfinite(x).all() or (x < 0).any() or (x > 1).any():
        raise ValueError("prompt scores must lie in [0, 1]")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, not {level}")
    return x, 1 - level


def predictable_bets(scores, alpha: float) -> np.ndarray:
    """Predictable plug-in empirical-Bernstein bets (confseq's ``lambda_predmix_eb``, prior 1/2, 1/4, one fake observation).

    lambda_t = sqrt(2 log(1 / alpha) / (t log(1 + t) sigma2_{t-1})), where sigma2 is the running
    variance around the running mean, both regularised by one fake observation
    at mean 1/2 and variance 1/4. Uses only x_1..x_{t-1}: that is what makes the
    capital a martingale. Prompts on the last axis.
    """
    x = np.asarray(scores, dtype=np.float64)
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    mean = np.minimum((0.5 + np.cumsum(x, axis=-1)) / (t + 1), 1.0)
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / (t + 1)
    previous = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), variance[..., :-1]], axis=-1)
    return np.sqrt(2 * math.log(1 / alpha) / (t * np.log1p(t) * previous))


def log_capitals(scores, m, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """log(theta K+_t(m)) and log((1 - theta) K-_t(m)) at every look t, for a candidate mean ``m``.

    ``scores``: prompts on the last axis, leading axes independent campaigns;
    ``m`` broadcasts against the leading axes (a scalar, or one per campaign).
    The CS excludes m at look t when either has reached log(1 / alpha) at some
    look up to t.
    """
    x, alpha = _check(scores, level)
    m = np.asarray(m, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore"):
        up = np.minimum(predictable_bets(x, alpha * _THETA), _TRUNCATION / m)
        down = np.minimum(predictable_bets(x, alpha * (1 - _THETA)), _TRUNCATION / (1 - m))
        log_up = np.cumsum(np.log(np.maximum(1 + up * (x - m), 0.0)), axis=-1) + math.log(_THETA)
        log_down = np.cumsum(np.log(np.maximum(1 - down * (x - m), 0.0)), axis=-1) + math.log(1 - _THETA)
    return log_up, log_down


def first_exclusion(scores, m, *, level: float = 0.95) -> np.ndarray:
    """The first look (number of prompts, 1-based) at which the CS excludes ``m``; 0 where it never does.

    Exact (no grid): the capital at m itself. Vectorised over leading axes. With
    ``m`` the truth this is the miss of a coverage simulation; with m = 1/2, the
    "decided" look of a stop-when-decided campaign.
    """
    log_up, log_down = log_capitals(scores, m, level=level)
    threshold = math.log(1 / (1 - level))
    crossed = (log_up > threshold) | (log_down > threshold)
    return np.where(crossed.any(axis=-1), crossed.argmax(axis=-1) + 1, 0)


def confidence_sequence_bounds(scores, *, level: float = 0.95, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the hedged-capital CS after each prompt, running intersection; prompts on the last axis.

    The grid method of confseq: every candidate mean k / grid whose capital has
    stayed below 1 / alpha, widened by one grid step. Costs grid x prompts per
    campaign (1000 x 2000 prompts: about a tenth of a second).
    """
    x, alpha = _check(scores, level)
    candidates = np.arange(grid + 1) / grid
    threshold = math.log(1 / alpha)
    log_up, log_down = log_capitals(x[..., None, :], candidates, level=level)  # (..., grid + 1, prompts)
    inside = (np.maximum.accumulate(log_up, axis=-1) <= threshold) & (
        np.maximum.accumulate(log_down, axis=-1) <= threshold
    )
    # The capitals are monotone in m, so the kept candidates are one run; find its ends per look.
    any_inside = inside.any(axis=-2)
    first = inside.argmax(axis=-2)
    last = grid - inside[..., ::-1, :].argmax(axis=-2)
    low = np.where(any_inside, np.maximum(candidates[first] - 1 / grid, 0.0), 0.0)
    high = np.where(any_inside, np.minimum(candidates[last] + 1 / grid, 1.0), 1.0)
    # Running intersection (the capitals' running maxima already make it one; this keeps it so after widening).
    return np.maximum.accumulate(low, axis=-1), np.minimum.accumulate(high, axis=-1)


@dataclass(frozen=True, eq=False)
class ConfidenceSequence:
    """The CS of one campaign, look by look (one look per prompt in arrival order).

    ``low``/``high``/``estimate`` have one entry per look (the running mean of
    prompt scores as the estimate). ``decided_at``: the first look (1-based
    number of prompts) at which the CS excluded ``null`` or, with a
    ``target_width``, became at most that wide; None if neither happened.
    ``decision``: "B better" (low above null), "A better" (high below null),
    "width reached" or "" (undecided). ``low``/``high`` at ``decided_at`` are what
    the report prints with the decision; later looks keep narrowing.
    """

    low: np.ndarray
    high: np.ndarray
    estimate: np.ndarray
    level: float
    null: float
    target_width: float | None
    decided_at: int | None
    decision: str
    method: str = HEDGED_CAPITAL

    @property
    def prompts(self) -> int:
        return len(self.low)


def confidence_sequence(
    scores,
    *,
    level: float = 0.95,
    null: float = 0.5,
    target_width: float | None = None,
    grid: int = GRID,
) -> ConfidenceSequence:
    """The hedged-capital CS for per-prompt scores in arrival order, and the look at which it decided.

    "Decided" is the first look at which the CS excludes ``null`` (exactly: the
    capital at ``null`` crossed 1 / alpha; the printed bound then lies on or past
    ``null``), or at which high - low <= ``target_width`` if one is given.
    Stopping a campaign at that look keeps the CS's coverage (it holds at every
    look at once).
    """
    x, _ = _check(scores, level)
    if x.ndim != 1:
        raise ValueError("scores must be 1-D (one campaign); use confidence_sequence_bounds for many")
    if not 0 < null < 1:
        raise ValueError("null must lie strictly between 0 and 1")
    if target_width is not None and not 0 < target_width <= 1:
        raise ValueError("target_width must lie in (0, 1]")
    low, high = confidence_sequence_bounds(x, level=level, grid=grid)
    log_up, log_down = log_capitals(x, null, level=level)
    threshold = math.log(1 / (1 - level))
    candidates = {}
    above, below = np.flatnonzero(log_up > threshold), np.flatnonzero(log_down > threshold)
    if len(above):
        candidates["B better"] = above[0]
    if len(below):
        candidates["A better"] = below[0]
    if target_width is not None:
        narrow = np.flatnonzero(high - low <= target_width)
        if len(narrow):
            candidates["width reached"] = narrow[0]
    decision, decided_at = "", None
    if candidates:
        decision = min(candidates, key=candidates.get)
        decided_at = int(candidates[decision]) + 1
    estimate = np.cumsum(x) / np.arange(1, len(x) + 1)
    return ConfidenceSequence(low, high, estimate, level, float(null), target_width, decided_at, decision)


# --- Peeking at a fixed-sample interval, for comparison ---------------------------------------------------------------


def look_schedule(items_per_prompt: int, prompts: int, every_items: int = 20, first_prompts: int = 6) -> np.ndarray:
    """Prompt counts at which a researcher looks: after every ``every_items`` comparisons (items), from ``first_prompts`` on.

    Items arrive prompt by prompt; a look after c comparisons sees the
    floor(c / items_per_prompt) prompts complete by then.
    """
    counts = np.arange(every_items, prompts * items_per_prompt + 1, every_items) // items_per_prompt
    counts = np.unique(np.append(counts, prompts))
    return counts[counts >= first_prompts]


def naive_peeking_first_exclusion(wins, items, squares=None, *, looks, null: float = 0.5, level: float = 0.95):
    """First look (index into ``looks``, 1-based) at which the fixed-sample clustered score interval excludes ``null``; 0 if never.

    ``wins``/``items``/``squares`` are per-prompt sums (campaigns x prompts,
    in arrival order), as for :func:`.intervals.clustered_score_bounds`; each
    look recomputes that interval on the prompts seen so far. This is what a
    researcher watching the live campaign page would do, and why it is not
    valid: every look is another chance for a 5% error.
    """
    from .intervals import clustered_score_bounds

    wins = np.atleast_2d(np.asarray(wins, dtype=np.float64))
    items = np.atleast_2d(np.asarray(items, dtype=np.float64))
    squares = wins if squares is None else np.atleast_2d(np.asarray(squares, dtype=np.float64))
    first = np.zeros(wins.shape[0], dtype=np.int64)
    for index, prompts in enumerate(looks, start=1):
        low, high = clustered_score_bounds(wins[:, :prompts], items[:, :prompts], squares[:, :prompts], level=level)
        excluded = ((low > null) | (high < null)) & (first == 0)
        first[excluded] = index
    return first
