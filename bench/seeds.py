"""How far the printed interval ends move between bootstrap seeds: before (win-rate BCa) and after (Bradley–Terry).

1. Win rate, the old headline (prompt-clustered BCa bootstrap, 2,000 rounds) on one simulated campaign of
   --prompts prompts and on a 5-prompt breakdown of it: the largest move of an end over --seeds seeds, in points.
   The clustered score interval that replaced it has no seed: its move is 0 by construction.
2. Bradley–Terry, three models, --prompts prompts: the largest move of an interval end over the seeds at 2,000 and
   10,000 rounds (the report's default), against the Monte Carlo error the report prints beside the ends.

    .venv/bin/python bench/seeds.py [--prompts 40] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path[0] = str(BASE_DIR)

from analysis import stats  # noqa: E402


def campaign(rng, prompts: int, models=("base", "tuned", "third"), seeds: int = 4, k: int = 5) -> pd.DataFrame:
    """Items of every model pair over prompts x seeds, k votes each, prompt effects; model strengths 0, 0.4, -0.3."""
    strength = {"base": 0.0, "tuned": 0.4, "third": -0.3}
    pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]
    rows, item = [], 0
    effect = rng.normal(0, 0.6, prompts)
    for prompt in range(prompts):
        for a, b in pairs:
            p_b = 1 / (1 + np.exp(-(strength[b] - strength[a] + effect[prompt])))
            for _ in range(seeds):
                for rater in range(k):
                    draw = rng.random()
                    winner = "tie" if draw < 0.1 else "b" if rng.random() < p_b else "a"
                    rows.append((item, prompt, f"c{prompt % 8}", a, b, rater, winner))
                item += 1
    frame = pd.DataFrame(rows, columns=["item_id", "prompt_id", "category", "model_a", "model_b", "rater_id", "winner"])
    return frame.assign(
        challenge="", criterion="visual_appeal", a_on_left=True, seconds_on_task=np.nan, votes_per_item=k
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    votes = campaign(np.random.default_rng(5), args.prompts)
    pair = votes[(votes["model_a"] == "base") & (votes["model_b"] == "tuned")]
    breakdown = pair[pair["category"] == "c0"]  # 5 prompts at 40

    small = f"breakdown of {breakdown['prompt_id'].nunique()} prompts"
    for name, subset in (("headline", pair), (small, breakdown)):
        ends = []
        for seed in range(args.seeds):
            report = stats.win_rate_report(subset, rounds=2000, seed=seed)
            old = (
                report.bootstrap.bca
                if np.isfinite([report.bootstrap.bca.low, report.bootstrap.bca.high]).all()
                else report.bootstrap.percentile
            )
            ends.append((old.low, old.high))
        ends = np.array(ends)
        moved = 100 * (ends.max(axis=0) - ends.min(axis=0)).max()
        new = stats.win_rate_report(subset, rounds=0).interval
        print(
            f"win rate, {name}: BCa 2,000 rounds, largest move of an end over {args.seeds} seeds {moved:.1f} points; "
            f"clustered score interval {new and f'{100 * new.low:.1f}-{100 * new.high:.1f}%'} (no seed)"
        )

    for rounds in (2000, 10_000):
        results = [stats.bradley_terry(votes, unit="item", rounds=rounds, seed=seed) for seed in range(args.seeds)]
        ends = np.array(
            [[r.ranking.loc[m, ["low", "high"]].to_numpy(float) for m in ("base", "tuned", "third")] for r in results]
        )
        errors = np.array([r.ranking["mc_error"].max() for r in results])
        print(
            f"Bradley–Terry, {rounds:,} rounds: largest move of an end over {args.seeds} seeds {(ends.max(0) - ends.min(0)).max():.4f}; "
            f"sd of an end across seeds up to {ends.std(0, ddof=1).max():.4f}; printed MC error {errors.min():.4f}-{errors.max():.4f}"
        )


if __name__ == "__main__":
    main()
