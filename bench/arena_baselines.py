"""The two ways the Chatbot Arena leaderboard has computed Bradley–Terry scores and their bootstrap.

Baselines for bench/analysis.py, written from the leaderboard's published
notebook and code, on the natural log-strength scale (their Elo-like scale is
400 / ln(10) times it, plus 1000) and with no regularisation:

- ``original``: scikit-learn ``LogisticRegression(fit_intercept=False)`` on one
  row per battle (+1 for model_a's column, -1 for model_b's), every battle
  duplicated so that a tie is one win each way; each bootstrap round resamples
  the battles with replacement, rebuilds the rows and refits.
- ``current``: battles aggregated into unique (model_a, model_b, outcome) rows
  with counts, outcome 1 / 0.5 / 0; each round draws multinomial counts over
  those rows and minimises the weighted Bradley–Terry log-loss with SciPy's
  L-BFGS-B. (The leaderboard spreads rounds over a process pool; here they run
  in one process, like Needle.)

Both treat a tie as half a win to each side, as Needle does, so all three
estimate the same scores.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression


def _original_fit(model_a: np.ndarray, model_b: np.ndarray, outcome: np.ndarray, n_models: int) -> np.ndarray:
    """One logistic regression on the duplicated battle rows; outcome is 1 (a won), 0.5 (tie) or 0 (b won)."""
    n = len(model_a)
    rows = np.arange(2 * n)
    features = np.zeros((2 * n, n_models))
    features[rows, np.tile(model_a, 2)] = 1.0
    features[rows, np.tile(model_b, 2)] = -1.0
    # First copy: a tie counts as a win for a; second copy: as a win for b.
    won = np.concatenate([outcome >= 0.5, outcome > 0.5]).astype(np.int8)
    # C = inf is "no penalty" (penalty=None is deprecated in scikit-learn 1.8).
    model = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)
    model.fit(features, won)
    scores = model.coef_[0]
    return scores - scores.mean()


def original_scores(model_a, model_b, outcome, n_models: int) -> np.ndarray:
    """Original method's scores on all battles (mean zero)."""
    return _original_fit(np.asarray(model_a), np.asarray(model_b), np.asarray(outcome), n_models)


def original_bootstrap(model_a, model_b, outcome, n_models: int, rounds: int, seed: int = 0) -> np.ndarray:
    """Original method's bootstrap: (rounds, models) scores, battles resampled with replacement each round."""
    model_a, model_b, outcome = map(np.asarray, (model_a, model_b, outcome))
    rng = np.random.default_rng(seed)
    results = []
    for _ in range(rounds):
        chosen = rng.integers(0, len(model_a), len(model_a))
        results.append(_original_fit(model_a[chosen], model_b[chosen], outcome[chosen], n_models))
    return np.array(results)


def _aggregate(model_a, model_b, outcome) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (model_a, model_b, outcome) rows with their counts."""
    schedule = np.column_stack([model_a, model_b, np.rint(2 * np.asarray(outcome))]).astype(np.int32)
    unique, counts = np.unique(schedule, axis=0, return_counts=True)
    return unique[:, :2], unique[:, 2] / 2.0, counts.astype(np.float64)


def _loss_and_gradient(scores, matchups, outcomes, weights):
    probabilities = expit(scores[matchups[:, 0]] - scores[matchups[:, 1]])
    with np.errstate(divide="ignore"):
        loss = -np.sum(weights * (outcomes * np.log(probabilities) + (1 - outcomes) * np.log(1 - probabilities)))
    per_matchup = -weights * (outcomes - probabilities)
    gradient = np.zeros_like(scores)
    np.add.at(gradient, matchups[:, 0], per_matchup)
    np.add.at(gradient, matchups[:, 1], -per_matchup)
    return loss, gradient


def _current_fit(matchups, outcomes, weights, n_models: int) -> np.ndarray:
    result = minimize(
        _loss_and_gradient,
        np.zeros(n_models),
        args=(matchups, outcomes, weights),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 100, "gtol": 1e-6},
    )
    return result.x - result.x.mean()


def current_scores(model_a, model_b, outcome, n_models: int) -> np.ndarray:
    """Current method's scores on all battles (mean zero); weights are shares of battles, as the leaderboard's."""
    matchups, outcomes, counts = _aggregate(model_a, model_b, outcome)
    return _current_fit(matchups, outcomes, counts / counts.sum(), n_models)


def current_bootstrap(model_a, model_b, outcome, n_models: int, rounds: int, seed: int = 0) -> np.ndarray:
    """Current method's bootstrap: (rounds, models) scores, multinomial battle counts over the aggregated rows."""
    matchups, outcomes, counts = _aggregate(model_a, model_b, outcome)
    total = int(counts.sum())
    rng = np.random.default_rng(seed)
    resampled = rng.multinomial(total, counts / total, size=rounds) / total
    return np.array([_current_fit(matchups, outcomes, weights, n_models) for weights in resampled])
