"""Prediction-powered win rates: an automatic judge scores every item, humans vote on a random subset.

PPI++ (Angelopoulos, Duchi & Zrnic, "PPI++: Efficient Prediction-Powered
Inference", 2023) for a mean: with human scores Y on n labelled items, the
judge's scores Yhat on those items and Yhat_u on the N unlabelled ones,

    estimate = lambda * mean(Yhat_u) + mean(Y - lambda * Yhat)

is unbiased for the mean human score for every fixed lambda, whatever the
judge: its errors are measured on the labelled items and subtracted (the
"rectifier"). lambda = 0 is humans alone; lambda is power-tuned to minimise the
estimated variance and clipped to [0, 1], so a useless or adversarial judge
gets lambda near 0 and costs (almost) nothing, while a good one shrinks the
interval as if many more humans had voted.

Scores: an item's human score is its majority outcome, 1 (B), 1/2 (tie) or 0
(A); the judge's score is any number in [0, 1], ideally its probability that
humans prefer B (plus half its probability of a tie).

Two variance estimates:
- ``prompts`` not given: items as independent units, exactly as ``ppi_py``
  (ppi-python 0.2.3) ``ppi_mean_ci`` / ``ppi_mean_pointestimate`` compute it
  (the labelled and unlabelled samples' variances, lambda from their pooled
  covariance), for reference;
- ``prompts`` given (what the report uses): prompt-clustered, as the headline
  interval. Each prompt's contribution to the estimate's error is summed over its
  labelled and unlabelled items before squaring (a cluster-robust sandwich with
  the m / (m - 1) small-sample factor), and lambda minimises that variance.
  Humans must vote on a random subset of items (or of prompts), chosen without
  looking at the judge's scores or the votes.

Pure numpy / SciPy (no Django).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri, stdtrit

from .intervals import Interval

PPI = "ppi_plus_plus"
PPI_ITEMS = "ppi_plus_plus_items"


@dataclass(frozen=True)
class PredictionPowered:
    """A prediction-powered win rate: estimate, interval, tuned lambda, and how well the judge agreed with humans.

    ``humans_only`` is the interval from the labelled items alone with the same
    variance estimate (lambda = 0), for comparison: the prompt-clustered
    ``interval`` is never wider (lambda minimises its estimated variance over
    [0, 1], which includes 0; the item-level one follows ppi_py's lambda, which
    is close to but not exactly that minimiser).
    ``agreement``: on the labelled items, the share where the judge's call
    (B above 1/2, A below, tie at 1/2) equals the human majority outcome;
    ``correlation``: Pearson correlation of judge and human scores there (NaN
    if either is constant). ``effective_labelled``: the labelled items humans
    alone would need for the same variance.
    """

    estimate: float
    interval: Interval
    lam: float
    humans_only: Interval
    humans_only_estimate: float
    labelled: int
    unlabelled: int
    prompts: int | None
    agreement: float
    correlation: float

    @property
    def effective_labelled(self) -> float:
        ratio = (
            (self.humans_only.half_width / self.interval.half_width) ** 2 if self.interval.half_width > 0 else np.inf
        )
        return float(self.labelled * ratio)


def _arrays(human, judge_labelled, judge_unlabelled):
    y = np.asarray(human, dtype=np.float64).ravel()
    yhat = np.asarray(judge_labelled, dtype=np.float64).ravel()
    yhat_u = np.asarray(judge_unlabelled, dtype=np.float64).ravel()
    if len(y) != len(yhat):
        raise ValueError("human and judge_labelled need one score per labelled item each")
    if len(y) < 2 or len(yhat_u) < 1:
        raise ValueError("PPI needs at least two labelled items and one unlabelled item")
    for name, values in (("human", y), ("judge_labelled", yhat), ("judge_unlabelled", yhat_u)):
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            raise ValueError(f"{name} scores must lie in [0, 1]")
    return y, yhat, yhat_u


def _agreement(y, yhat) -> tuple[float, float]:
    agreement = float(np.mean(np.sign(y - 0.5) == np.sign(yhat - 0.5)))
    if y.std() == 0 or yhat.std() == 0:
        return agreement, float("nan")
    return agreement, float(np.corrcoef(y, yhat)[0, 1])


def _item_level(y, yhat, yhat_u, lam):
    """ppi_py's mean estimate: lambda from the pooled judge variance, variances of the two samples (ddof 0)."""
    n, big_n = len(y), len(yhat_u)
    if lam is None:
        covariance = np.mean((y - y.mean()) * (yhat - yhat.mean()))
        pooled = np.var(np.concatenate([yhat, yhat_u]), ddof=1)
        lam = float(np.clip(covariance / ((1 + n / big_n) * pooled), 0, 1)) if pooled > 0 else 0.0

    def variance(value):
        return value**2 * np.var(yhat_u) / big_n + np.var(y - value * yhat) / n

    return lam, variance


def _clustered(y, yhat, yhat_u, prompts_labelled, prompts_unlabelled, lam):
    """Cluster-robust (prompt) variance of the estimate as a quadratic in lambda, and the lambda minimising it."""
    n, big_n = len(y), len(yhat_u)
    codes, index = np.unique(np.concatenate([prompts_labelled, prompts_unlabelled]), return_inverse=True)
    m = len(codes)
    if m < 2:
        raise ValueError("the prompt-clustered PPI interval needs at least two prompts")
    labelled_index, unlabelled_index = index[:n], index[n:]
    # The estimate's error is sum over prompts of a_p + lambda b_p (centred contributions).
    a = np.bincount(labelled_index, weights=(y - y.mean()) / n, minlength=m)
    b = np.bincount(unlabelled_index, weights=(yhat_u - yhat_u.mean()) / big_n, minlength=m)
    b -= np.bincount(labelled_index, weights=(yhat - yhat.mean()) / n, minlength=m)
    factor = m / (m - 1)
    if lam is None:
        denominator = np.sum(b * b)
        lam = float(np.clip(-np.sum(a * b) / denominator, 0, 1)) if denominator > 0 else 0.0

    def variance(value):
        return factor * np.sum((a + value * b) ** 2)

    return lam, variance, m


def prediction_powered_win_rate(
    human,
    judge_labelled,
    judge_unlabelled,
    *,
    prompts_labelled=None,
    prompts_unlabelled=None,
    level: float = 0.95,
    lam: float | None = None,
) -> PredictionPowered:
    """PPI++ estimate and interval for the mean human score (B's win rate, ties as half), power-tuned unless ``lam`` is given.

    ``human``/``judge_labelled``: scores of the items humans voted on;
    ``judge_unlabelled``: the judge's scores of the items they did not.
    ``prompts_labelled``/``prompts_unlabelled``: each item's prompt, for the
    prompt-clustered interval (both or neither). The interval is
    estimate ± z * se, clipped to [0, 1], with z the normal quantile for items
    (as ppi_py) and the t quantile with (prompts humans voted on - 1) degrees of
    freedom for prompts (the normal one covered 93.5-94.4% with ~100 labelled
    prompts in analysis/tests/test_ppi.py).
    """
    y, yhat, yhat_u = _arrays(human, judge_labelled, judge_unlabelled)
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, not {level}")
    if lam is not None and not 0 <= lam <= 1:
        raise ValueError("lam must lie in [0, 1]")
    if (prompts_labelled is None) != (prompts_unlabelled is None):
        raise ValueError("give the prompts of both the labelled and the unlabelled items, or of neither")
    if prompts_labelled is None:
        lam, variance = _item_level(y, yhat, yhat_u, lam)
        prompts, method = None, PPI_ITEMS
    else:
        prompts_labelled = np.asarray(prompts_labelled).ravel()
        prompts_unlabelled = np.asarray(prompts_unlabelled).ravel()
        if len(prompts_labelled) != len(y) or len(prompts_unlabelled) != len(yhat_u):
            raise ValueError("one prompt per labelled and per unlabelled item")
        lam, variance, prompts = _clustered(y, yhat, yhat_u, prompts_labelled, prompts_unlabelled, lam)
        method = PPI
    if prompts is None:
        z = float(ndtri(1 - (1 - level) / 2))
    else:  # a t quantile: the variance is estimated from the few prompts humans voted on
        z = float(stdtrit(max(1, len(np.unique(prompts_labelled)) - 1), 1 - (1 - level) / 2))

    def interval(value, name):
        estimate = value * yhat_u.mean() + np.mean(y - value * yhat)
        half = z * np.sqrt(variance(value))
        return float(estimate), Interval(
            float(max(0.0, estimate - half)), float(min(1.0, estimate + half)), level, name
        )

    estimate, powered = interval(lam, method)
    classical_estimate, classical = interval(0.0, method + "_humans_only")
    agreement, correlation = _agreement(y, yhat)
    return PredictionPowered(
        estimate=estimate,
        interval=powered,
        lam=float(lam),
        humans_only=classical,
        humans_only_estimate=classical_estimate,
        labelled=len(y),
        unlabelled=len(yhat_u),
        prompts=prompts,
        agreement=agreement,
        correlation=correlation,
    )
