"""Which model pair to show next in an all-pairs campaign: the one that most narrows the ranking's uncertain gaps.

A leaderboard of K models is confident when every two models adjacent in the
ranking are told apart: their Bradley–Terry score difference's 95% interval
excludes 0 (:func:`ranking_separated`). Uniform assignment spends most votes on
pairs far apart in strength, which say little about the adjacent gaps.
:func:`next_pair_priorities` ranks pairs by how much one more vote on them is
expected to shrink sum over adjacent gaps of var(gap) / gap^2 (that is, 1 / z^2:
the gaps closest to unresolved weigh most), using the Bradley–Terry Fisher
information: a vote on (i, j) adds p_ij (1 - p_ij) (e_i - e_j)(e_i - e_j)^T to it,
and the variance of a contrast c falls by w (c' S u)^2 / (1 + w u' S u) (a rank-one
update of the covariance S). :func:`plan_pairs` picks a batch greedily, updating
the covariance after each pick, so a batch spreads over the pairs that matter.
The assignment engine takes pairs in this order, subject to its own rules (k cap,
leases, no repeats, balance), and recomputes after each batch of votes.

Scores are the penalised maximum-likelihood Bradley–Terry fit of
:func:`.bradley_terry.fit_bradley_terry` (ties as half a win each way) with a
weak normal prior (``prior_precision``) so the first votes give finite scores;
variances are the inverse of the penalised Fisher information. Votes are treated
as independent here (the report's intervals resample prompts).

Pure numpy (no Django).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, ndtri

from .bradley_terry import fit_bradley_terry

PRIOR_PRECISION = 0.1  # a N(0, 10) prior on each log-strength: negligible after a few dozen votes per model
FOCUS = 2.5  # gaps with |gap| / se(gap) at or above this count a thousandth: resolved gaps get no more votes
_MIN_GAP = 0.05  # gaps below this (log-strength) weigh as this: an estimated gap of 0 is not infinitely urgent


def _pairs(n_models: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n_models, k=1)


def bradley_terry_state(wins, *, prior_precision: float = PRIOR_PRECISION):
    """(scores, covariance) of the penalised Bradley–Terry fit of a (K x K) win-count matrix (ties as halves)."""
    wins = np.asarray(wins, dtype=np.float64)
    if wins.ndim != 2 or wins.shape[0] != wins.shape[1] or wins.shape[0] < 2:
        raise ValueError("wins must be a square (models x models) matrix of at least two models")
    scores = fit_bradley_terry(wins, ridge=prior_precision)
    games = wins + wins.T
    p = expit(scores[:, None] - scores[None, :])
    weight = games * p * (1 - p)
    information = np.diag(weight.sum(axis=1)) - weight + prior_precision * np.eye(len(scores))
    return scores, np.linalg.inv(information)


def _adjacent_contrasts(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast vectors (K - 1, K) of neighbours in the estimated ranking, and their estimated gaps."""
    order = np.argsort(-scores, kind="stable")
    contrasts = np.zeros((len(order) - 1, len(order)))
    contrasts[np.arange(len(order) - 1), order[:-1]] = 1.0
    contrasts[np.arange(len(order) - 1), order[1:]] = -1.0
    return contrasts, contrasts @ scores


def _pair_gains(scores, covariance, first, second, focus=0.0):
    """Expected fall of sum(var(gap) / gap^2) over adjacent gaps from one more vote on each pair (first[i], second[i])."""
    contrasts, gaps = _adjacent_contrasts(scores)
    weight_gap = 1.0 / np.maximum(gaps**2, _MIN_GAP**2)
    if focus:
        variance = np.einsum("ck,kl,cl->c", contrasts, covariance, contrasts)
        z = np.abs(gaps) / np.sqrt(variance)
        weight_gap = weight_gap * np.where(z < focus, 1.0, 1e-3)
    p = expit(scores[first] - scores[second])
    w = p * (1 - p)
    u_cov = covariance[:, first] - covariance[:, second]  # S u for each pair, (K, pairs)
    u_var = u_cov[first, np.arange(len(first))] - u_cov[second, np.arange(len(first))]  # u' S u
    c_s_u = contrasts @ u_cov  # (K - 1, pairs)
    reduction = w * c_s_u**2 / (1 + w * u_var)
    return weight_gap @ reduction, w, u_cov, u_var


@dataclass(frozen=True)
class PairPriority:
    first: int
    second: int
    priority: float


def next_pair_priorities(wins, *, prior_precision: float = PRIOR_PRECISION) -> list[PairPriority]:
    """Every pair (i < j) of the models in ``wins`` (K x K counts, ties as halves), most useful next vote first."""
    scores, covariance = bradley_terry_state(wins, prior_precision=prior_precision)
    first, second = _pairs(len(scores))
    gains, *_ = _pair_gains(scores, covariance, first, second)
    order = np.argsort(-gains, kind="stable")
    return [PairPriority(int(first[i]), int(second[i]), float(gains[i])) for i in order]


def plan_pairs(wins, count: int, *, prior_precision: float = PRIOR_PRECISION) -> list[tuple[int, int]]:
    """The next ``count`` votes' pairs, chosen greedily: after each pick the covariance is updated as if it were voted on.

    Scores stay at the current fit (outcomes are unknown until the votes come in).
    """
    scores, covariance = bradley_terry_state(wins, prior_precision=prior_precision)
    first, second = _pairs(len(scores))
    picked = []
    for _ in range(count):
        gains, w, u_cov, u_var = _pair_gains(scores, covariance, first, second, FOCUS)
        best = int(np.argmax(gains))
        column = u_cov[:, best]
        covariance = covariance - w[best] * np.outer(column, column) / (1 + w[best] * u_var[best])
        picked.append((int(first[best]), int(second[best])))
    return picked


def ranking_separated(wins, *, level: float = 0.95) -> bool:
    """Whether every two models adjacent in the estimated ranking are told apart: |gap| / se(gap) >= z (Wald, Fisher information)."""
    scores, covariance = bradley_terry_state(wins, prior_precision=1e-6)
    contrasts, gaps = _adjacent_contrasts(scores)
    se = np.sqrt(np.einsum("ck,kl,cl->c", contrasts, covariance, contrasts))
    return bool(np.all(np.abs(gaps) >= float(ndtri(1 - (1 - level) / 2)) * se))


def simulate_votes_to_separate(
    strengths,
    rng: np.random.Generator,
    *,
    adaptive: bool,
    batch: int = 50,
    tie_share: float = 0.1,
    max_votes: int = 200_000,
    level: float = 0.95,
) -> tuple[int, bool]:
    """Votes until :func:`ranking_separated` holds (checked after each batch), and whether the ranking is then the true one.

    Each vote compares a pair: a tie with probability ``tie_share``, else i wins
    with the Bradley–Terry probability of the true ``strengths``. Uniform
    assignment cycles through all pairs in a shuffled order (balanced, as the
    engine assigns); adaptive assignment takes :func:`plan_pairs` batches, with the
    first batch uniform.
    """
    strengths = np.asarray(strengths, dtype=np.float64)
    n_models = len(strengths)
    first, second = _pairs(n_models)
    wins = np.zeros((n_models, n_models))
    cycle: list[int] = []
    votes = 0
    while votes < max_votes:
        if adaptive and votes > 0:
            chosen = np.array(plan_pairs(wins, batch))
            a, b = chosen[:, 0], chosen[:, 1]
        else:
            picks = []
            while len(picks) < batch:
                if not cycle:
                    cycle = list(rng.permutation(len(first)))
                picks.append(cycle.pop())
            a, b = first[picks], second[picks]
        tie = rng.random(batch) < tie_share
        a_won = rng.random(batch) < expit(strengths[a] - strengths[b])
        np.add.at(wins, (a, b), np.where(tie, 0.5, a_won.astype(float)))
        np.add.at(wins, (b, a), np.where(tie, 0.5, (~a_won).astype(float)))
        votes += batch
        if votes >= n_models * (n_models - 1) and ranking_separated(wins, level=level):
            break
    scores = fit_bradley_terry(wins)
    return votes, bool(np.array_equal(np.argsort(-scores), np.argsort(-strengths)))
