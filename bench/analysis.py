"""Statistics on a million votes: Needle's win rate and Bradley–Terry bootstraps vs the Chatbot Arena methods.

1. Two models, 1,000,000 votes (20,000 prompts x 10 items x 5 votes): the
   full win-rate report (item majorities, vote shares, Wilson, sign test, and
   the prompt-clustered bootstrap with --rounds rounds). Goal: under 2 s.
2. Ten models, 1,000,000 votes: Bradley–Terry scores + --rounds bootstrap
   rounds, Needle vs the leaderboard's original method (scikit-learn logistic
   regression refit per round on duplicated battle rows; too slow for 1,000
   rounds, so --original-rounds rounds are timed and scaled, and the output
   says so) and its current one (L-BFGS on aggregated counts per round).
   Goals: >= 20x faster than the original, >= 2x faster than the current,
   scores within 1e-3 of both on the log-strength scale.

Needle resamples prompts (its votes are clustered by prompt); the baselines
resample battles, as the leaderboard does. The work per round is comparable;
the intervals are not meant to be equal.

    .venv/bin/python bench/analysis.py [--rounds 1000] [--original-rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BASE_DIR = Path(__file__).resolve().parent.parent
# This script shares its name with the analysis app: the repository root replaces the script's own folder.
sys.path[0] = str(BASE_DIR)

from analysis import stats  # noqa: E402
from bench import arena_baselines  # noqa: E402

PROMPTS, ITEMS_PER_PROMPT, VOTES_PER_ITEM = 20_000, 10, 5
TIE_SHARE = 0.1


def synthetic_votes(models: list[str], spread: float, seed: int) -> pd.DataFrame:
    """1,000,000 votes in the documented schema; true log-strengths evenly spaced over ``spread``.

    With more than two models each item pairs two distinct models at random. Raters prefer B with the
    Bradley–Terry probability of the true strengths shifted by a prompt effect
    (normal, sd 0.5), so votes of a prompt are correlated; 10% of votes are ties.
    """
    rng = np.random.default_rng(seed)
    n_items = PROMPTS * ITEMS_PER_PROMPT
    strengths = np.linspace(-spread / 2, spread / 2, len(models))
    if len(models) == 2:  # a two-model campaign: A is always the reference, B the candidate
        first, second = np.zeros(n_items, dtype=int), np.ones(n_items, dtype=int)
    else:
        first = rng.integers(0, len(models), n_items)
        second = (first + rng.integers(1, len(models), n_items)) % len(models)
    prompt_effect = rng.normal(0.0, 0.5, PROMPTS)
    item = np.repeat(np.arange(n_items), VOTES_PER_ITEM)
    prompt = item // ITEMS_PER_PROMPT
    p_b = 1 / (1 + np.exp(-(strengths[second][item] - strengths[first][item] + prompt_effect[prompt])))
    draw = rng.random(len(item))
    winner = np.where(draw < TIE_SHARE, "tie", np.where(rng.random(len(item)) < p_b, "b", "a"))
    names = np.array(models, dtype=object)
    categories = np.array(["Animals", "Artifacts", "Food & Beverage", "Outdoor Scenes", "People"], dtype=object)
    votes = pd.DataFrame(
        {
            "item_id": item,
            "prompt_id": prompt,
            "category": categories[prompt % len(categories)],
            "challenge": "",
            "criterion": "visual_appeal",
            "model_a": names[first][item],
            "model_b": names[second][item],
            "rater_id": rng.integers(0, 500, len(item)) * VOTES_PER_ITEM + np.tile(np.arange(VOTES_PER_ITEM), n_items),
            "winner": winner,
            "a_on_left": rng.random(len(item)) < 0.5,
            "seconds_on_task": rng.exponential(6.0, len(item)),
            "votes_per_item": VOTES_PER_ITEM,
        }
    )
    return votes


def timed(function, repeats: int):
    """(median seconds, last result) over ``repeats`` calls."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def two_models(rounds: int, repeats: int) -> None:
    votes = synthetic_votes(["base", "tuned"], spread=0.6, seed=1)
    seconds, report = timed(lambda: stats.win_rate_report(votes, rounds=rounds, seed=0), repeats)
    encode_seconds, _ = timed(lambda: stats.validate_votes(votes), repeats)
    print(f"two models: {len(votes):,} votes, {votes['item_id'].nunique():,} items, {PROMPTS:,} prompts")
    print(
        f"  win-rate report with {rounds:,} prompt-bootstrap rounds: {seconds:.2f} s (median of {repeats}; goal < 2 s), "
        f"of which validating the frame {encode_seconds:.2f} s"
    )
    print(
        f"  item-level win rate {report.items.win_rate:.4f}, tie share {report.items.tie_share:.4f}; "
        f"headline ({report.headline.method}) [{report.headline.low:.4f}, {report.headline.high:.4f}]; "
        f"naive vote Wilson [{report.vote_wilson.low:.4f}, {report.vote_wilson.high:.4f}]"
    )


def ten_models(rounds: int, original_rounds: int, repeats: int) -> None:
    models = [f"model-{i}" for i in range(10)]
    votes = synthetic_votes(models, spread=2.0, seed=2)
    print(f"ten models: {len(votes):,} votes, {votes['item_id'].nunique():,} items, {PROMPTS:,} prompts")

    needle_seconds, result = timed(lambda: stats.bradley_terry(votes, rounds=rounds, seed=0), repeats)
    needle_scores = result.scores.reindex(models).to_numpy()
    print(
        f"  Needle: Bradley–Terry + {rounds:,} prompt-bootstrap rounds: {needle_seconds:.2f} s (median of {repeats}); "
        f"{result.degenerate_rounds} degenerate rounds"
    )

    def battles():
        """What both baselines start from: model codes per vote and outcome 1 / 0.5 / 0 for model_a."""
        codes = {name: index for index, name in enumerate(models)}
        model_a = votes["model_a"].map(codes).to_numpy()
        model_b = votes["model_b"].map(codes).to_numpy()
        outcome = votes["winner"].map({"a": 1.0, "tie": 0.5, "b": 0.0}).to_numpy()
        return model_a, model_b, outcome

    def current():
        model_a, model_b, outcome = battles()
        return (
            arena_baselines.current_scores(model_a, model_b, outcome, len(models)),
            arena_baselines.current_bootstrap(model_a, model_b, outcome, len(models), rounds),
        )

    current_seconds, (current_point, _) = timed(current, 1)
    print(f"  Arena current (L-BFGS on aggregated counts, per round): {current_seconds:.2f} s for {rounds:,} rounds")

    model_a, model_b, outcome = battles()
    started = time.perf_counter()
    original_point = arena_baselines.original_scores(model_a, model_b, outcome, len(models))
    point_seconds = time.perf_counter() - started
    started = time.perf_counter()
    arena_baselines.original_bootstrap(model_a, model_b, outcome, len(models), original_rounds)
    per_round = (time.perf_counter() - started) / original_rounds
    original_seconds = point_seconds + per_round * rounds
    print(
        f"  Arena original (scikit-learn LogisticRegression per round, {2 * len(votes):,} duplicated rows): "
        f"{per_round:.2f} s per round; MEASURED ON {original_rounds} ROUNDS AND SCALED to {rounds:,}: "
        f"{original_seconds:,.0f} s"
    )
    print(
        f"  Needle is {original_seconds / needle_seconds:,.0f}x faster than the original (goal >= 20x) and "
        f"{current_seconds / needle_seconds:.1f}x faster than the current method (goal >= 2x)"
    )
    print(
        "  largest |score difference| (log-strength, mean-zero anchor): "
        f"vs original {np.max(np.abs(needle_scores - original_point)):.2e}, "
        f"vs current {np.max(np.abs(needle_scores - current_point)):.2e} (goal <= 1e-3)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--original-rounds", type=int, default=3, help="rounds of the original method actually run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of Needle's timings (the median is shown)")
    arguments = parser.parse_args()
    two_models(arguments.rounds, arguments.repeats)
    ten_models(arguments.rounds, arguments.original_rounds, arguments.repeats)


if __name__ == "__main__":
    main()
