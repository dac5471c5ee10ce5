"""Bradley–Terry scores for N models from pairwise votes, with prompt-clustered bootstrap intervals.

Model: P(i beats j) = 1 / (1 + exp(-(s_i - s_j))), with s the log-strength.
(Chatbot Arena's Elo-like scale is 400 / ln(10) * s + 1000.)

Ties count as half a win to each side: a tie between i and j adds 1/2 to
"i beat j" and 1/2 to "j beat i". The likelihood is then the Bradley–Terry
likelihood of these fractional counts (what the Chatbot Arena leaderboard does
by duplicating battles and splitting ties).

Fitting is Newton's method on the aggregated (model x model) win counts,
vectorised over bootstrap rounds: each round costs a few batched 10 x 10
solves, whatever the number of votes. A tiny ridge (``RIDGE``) keeps the
estimate finite when a model won or lost everything in a resample; it also
fixes the anchor at mean zero, because the likelihood alone is unchanged when
all scores shift together. With thousands of battles its effect on the scores
is far below 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import expit

from .intervals import quantile_mc_error, resampled_totals
from .votes import TIE, A, encode_votes, select_criterion

RIDGE = 1e-6  # penalty RIDGE / 2 * sum(s^2) on the log-likelihood
_MAX_STEP = 4.0  # cap on a Newton step per score, against overshooting from a poor start
_TOLERANCE = 1e-10
_MAX_ITERATIONS = 100


def fit_bradley_terry(wins, *, ridge: float = RIDGE) -> np.ndarray:
    """Maximum-likelihood log-strengths (with the tiny ``ridge``) from a win-count matrix, mean zero.

    ``wins[..., i, j]`` is how often model i beat model j (fractional counts
    allowed, ties as halves); leading axes are independent fits (bootstrap
    rounds), solved together. Returns scores with the same leading axes.
    """
    wins = np.asarray(wins, dtype=np.float64)
    if wins.ndim < 2 or wins.shape[-1] != wins.shape[-2]:
        raise ValueError("wins must be a square (models x models) matrix, or a stack of them")
    if (wins < 0).any():
        raise ValueError("win counts must not be negative")
    batch_shape, n_models = wins.shape[:-2], wins.shape[-1]
    wins = wins.reshape((-1, n_models, n_models))
    games = wins + wins.transpose(0, 2, 1)
    won = wins.sum(axis=2)
    scores = np.zeros(won.shape)
    # Adding c * 11^T to the Hessian leaves the Newton step unchanged (the step
    # is orthogonal to the all-ones direction) but keeps the matrix well
    # conditioned despite the tiny ridge.
    pin = np.ones((n_models, n_models)) / n_models
    for _ in range(_MAX_ITERATIONS):
        p_win = expit(scores[:, :, None] - scores[:, None, :])
        gradient = won - (games * p_win).sum(axis=2) - ridge * scores
        weight = games * p_win * (1 - p_win)
        information = -weight
        diagonal = weight.sum(axis=2) + ridge
        information[:, np.arange(n_models), np.arange(n_models)] += diagonal
        information += diagonal.mean(axis=1)[:, None, None] * pin
        step = np.linalg.solve(information, gradient[..., None])[..., 0]
        largest = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, _MAX_STEP / np.maximum(largest, 1e-300))
        scores += step
        if largest.max() < _TOLERANCE:
            break
    else:
        raise RuntimeError("Bradley–Terry fit did not converge")
    scores -= scores.mean(axis=1, keepdims=True)
    return scores.reshape(batch_shape + (n_models,))


@dataclass(frozen=True, eq=False)
class BradleyTerryResult:
    """Bradley–Terry scores of N models for one criterion.

    ``ranking``: one row per model, best first, columns ``score`` (log-strength,
    anchored: mean zero, or the ``anchor`` model at zero), ``low``/``high``
    (percentile bootstrap interval over prompts, anchored per round, so the
    anchor model's own interval is [0, 0]), ``mc_error`` (Monte Carlo standard
    error of those ends, the larger of the two: how far another seed would move
    them, :func:`analysis.stats.intervals.quantile_mc_error`), ``rank`` (by score) and
    ``rank_upper`` (1 + number of models whose interval lies wholly above this
    one's, the Chatbot Arena convention).
    ``win_fractions``: observed share of battles the row model won against the
    column model (ties as halves), NaN where the two never met.
    ``battles``: battles used (votes, or complete items' majority outcomes).
    ``degenerate_rounds``: bootstrap rounds in which some model won or lost
    every battle; there its score is held finite only by the ridge, so more
    than a few per cent make the intervals unreliable.
    """

    criterion: str
    unit: str
    anchor: str | None
    ranking: pd.DataFrame
    win_fractions: pd.DataFrame
    battles: int
    prompts: int
    rounds: int
    seed: int
    level: float
    degenerate_rounds: int

    @property
    def scores(self) -> pd.Series:
        """Anchored log-strength per model (ranking order)."""
        return self.ranking["score"]


def _require_strongly_connected(wins: np.ndarray, models: np.ndarray) -> None:
    """The maximum-likelihood estimate exists iff every model beat, through some chain, every other."""
    n_components, labels = connected_components(csr_matrix(wins > 0), directed=True, connection="strong")
    if n_components > 1:
        groups = [sorted(map(str, models[labels == label])) for label in range(n_components)]
        raise ValueError(
            "Bradley–Terry scores are not identified: the models split into groups where one group never lost "
            f"to another {groups}; collect more comparisons between them"
        )


def bradley_terry(
    votes: pd.DataFrame,
    criterion: str | None = None,
    *,
    unit: str = "vote",
    anchor: str | None = None,
    rounds: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BradleyTerryResult:
    """Bradley–Terry scores, bootstrap intervals over prompts, win fractions and a ranking for one criterion.

    ``unit="vote"`` makes every vote a battle; ``unit="item"`` makes every
    complete item's majority outcome one battle (Emu's item level). ``anchor``
    names a model whose score is fixed at 0; by default scores have mean zero.
    """
    if unit not in ("vote", "item"):
        raise ValueError(f"unit must be 'vote' or 'item', not {unit!r}")
    criterion, selected = select_criterion(votes, criterion)
    encoded = encode_votes(selected)
    models = encoded.model_names
    n_models = len(models)
    if anchor is not None and anchor not in set(models):
        raise ValueError(f"anchor model {anchor!r} does not appear in the votes")

    if unit == "vote":
        battle_item, outcome = encoded.vote_item, encoded.vote_winner
    else:
        battle_item = np.flatnonzero(encoded.item_complete)
        outcome = encoded.item_outcome[battle_item]
    if len(battle_item) == 0:
        raise ValueError(f"no complete items for {criterion!r} to use as battles")
    first, second = encoded.item_model_a[battle_item], encoded.item_model_b[battle_item]
    # Credit of each battle to model_a (1, 1/2 or 0); model_b gets the rest.
    credit_a = np.select([outcome == A, outcome == TIE], [1.0, 0.5], 0.0)

    # Per-prompt sufficient statistics: for every ordered pair (i, j) that met,
    # the credit i earned against j. Only pairs present get a column.
    prompt_codes, prompt_index = np.unique(encoded.item_prompt[battle_item], return_inverse=True)
    ordered = np.concatenate([first * n_models + second, second * n_models + first])
    pair_codes, pair_column = np.unique(ordered, return_inverse=True)
    n_prompts, n_pairs = len(prompt_codes), len(pair_codes)
    per_prompt = np.bincount(
        np.concatenate([prompt_index, prompt_index]) * n_pairs + pair_column,
        weights=np.concatenate([credit_a, 1.0 - credit_a]),
        minlength=n_prompts * n_pairs,
    ).reshape(n_prompts, n_pairs)
    winner_of_pair, loser_of_pair = np.divmod(pair_codes, n_models)

    def win_matrices(pair_totals: np.ndarray) -> np.ndarray:
        matrices = np.zeros(pair_totals.shape[:-1] + (n_models, n_models))
        matrices[..., winner_of_pair, loser_of_pair] = pair_totals
        return matrices

    wins = win_matrices(per_prompt.sum(axis=0))
    _require_strongly_connected(wins, models)
    scores = fit_bradley_terry(wins)
    round_wins = win_matrices(resampled_totals(per_prompt, rounds, seed))
    round_scores = fit_bradley_terry(round_wins)
    round_won, round_lost = round_wins.sum(axis=2), round_wins.sum(axis=1)
    degenerate_rounds = int(np.count_nonzero(((round_won == 0) | (round_lost == 0)).any(axis=1)))

    if anchor is not None:
        anchor_code = int(np.flatnonzero(models == anchor)[0])
        scores = scores - scores[anchor_code]
        round_scores = round_scores - round_scores[:, [anchor_code]]
    alpha = (1 - level) / 2
    low, high = np.quantile(round_scores, [alpha, 1 - alpha], axis=0)
    low_mc, high_mc = quantile_mc_error(round_scores, [alpha, 1 - alpha])

    order = np.argsort(-scores, kind="stable")
    better_than = (low[None, :] > high[:, None]).sum(axis=1)  # models wholly above each one
    ranking = pd.DataFrame(
        {
            "score": scores[order],
            "low": low[order],
            "high": high[order],
            "mc_error": np.maximum(low_mc, high_mc)[order],
            "rank": np.arange(1, n_models + 1),
            "rank_upper": 1 + better_than[order],
        },
        index=pd.Index(models[order].astype(str), name="model"),
    )
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(games > 0, wins / games, np.nan)
    names = models[order].astype(str)
    win_fractions = pd.DataFrame(fractions[np.ix_(order, order)], index=names, columns=names)
    return BradleyTerryResult(
        criterion=criterion,
        unit=unit,
        anchor=anchor,
        ranking=ranking,
        win_fractions=win_fractions,
        battles=len(battle_item),
        prompts=n_prompts,
        rounds=rounds,
        seed=seed,
        level=level,
        degenerate_rounds=degenerate_rounds,
    )
