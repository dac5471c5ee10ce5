"""Coverage of Needle's win-rate interval at small numbers of prompts: the sweep behind bench/README.md.

Campaigns are simulated from a known truth (``analysis.stats.simulation``:
prompt effects Beta(mu c, (1 - mu) c) on a rater's chance of preferring B,
k votes per item with 10% ties, the item's outcome its strict majority), each
gets an interval, and the table gives the share that covers the true item-level
win rate, with the misses on each side: ``coverage (truth above | truth below)``.
"truth above" means the interval lies wholly below the truth (it understates
model B), "truth below" that it overstates B.

    .venv/bin/python bench/coverage.py                      # the clustered score interval, c = 4, 10, 30
    .venv/bin/python bench/coverage.py --method bca         # the bootstrap it replaced (slow: a loop)
    .venv/bin/python bench/coverage.py --half-ties          # the wins + ties / 2 convention

Methods: ``score`` (the headline since issue 9: ``clustered_score_bounds``),
``bca`` (the old headline: prompt-clustered bootstrap BCa, falling back to
percentile, then to the item-level Wilson interval when the resamples do not
vary), ``wilson`` (items as independent).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path[0] = str(BASE_DIR)

from analysis import stats  # noqa: E402
from analysis.stats.simulation import campaign_model, simulate_campaigns  # noqa: E402


def score_bounds(y, q, n, rounds, half):
    return stats.clustered_score_bounds(y, n, q)


def bca_bounds(y, q, n, rounds, half):
    low, high = np.empty(len(y)), np.empty(len(y))
    for campaign in range(len(y)):
        result = stats.cluster_bootstrap_ratio(y[campaign], n[campaign], rounds=rounds, seed=campaign)
        interval = result.bca if np.isfinite([result.bca.low, result.bca.high]).all() else result.percentile
        if result.percentile.high == result.percentile.low:
            # What the old headline printed then: Wilson over items (wins only; half ties rounded).
            interval = stats.wilson_interval(int(round(y[campaign].sum())), int(n[campaign].sum()))
        low[campaign], high[campaign] = interval.low, interval.high
    return low, high


def wilson_bounds(y, q, n, rounds, half):
    bounds = [stats.wilson_interval(int(round(a)), int(b)) for a, b in zip(y.sum(1), n.sum(1), strict=True)]
    return np.array([b.low for b in bounds]), np.array([b.high for b in bounds])


METHODS = {"score": score_bounds, "bca": bca_bounds, "wilson": wilson_bounds}


def coverage_table(method, *, concentration, items_per_prompt, prompts, rates, campaigns, rounds, half, votes_per_item):
    rows = []
    for m in prompts:
        cells = []
        for rate in rates:
            model = campaign_model(rate, concentration=concentration, votes_per_item=votes_per_item)
            rng = np.random.default_rng([m, int(round(1000 * rate)), int(concentration), items_per_prompt])
            wins, half_ties, items = simulate_campaigns(model, rng, campaigns, m, items_per_prompt)
            if half:
                ties = 2 * (half_ties - wins)
                y, q, truth = half_ties, wins + ties / 4, model.true_rate_half_ties
            else:
                y, q, truth = wins, wins, model.true_rate
            low, high = METHODS[method](y, q, items, rounds, half)
            covered = np.mean((low <= truth) & (truth <= high))
            cells.append((covered, np.mean(high < truth), np.mean(low > truth), np.mean(high - low)))
        rows.append((m, cells))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(METHODS), default="score")
    parser.add_argument("--concentrations", default="4,10,30")
    parser.add_argument("--items-per-prompt", default="4")
    parser.add_argument("--prompts", default="2,3,5,10,20")
    parser.add_argument("--rates", default="0.5,0.6,0.7,0.8,0.9")
    parser.add_argument("--campaigns", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2000, help="bootstrap rounds (bca)")
    parser.add_argument("--votes-per-item", type=int, default=5)
    parser.add_argument("--half-ties", action="store_true")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    prompts = [int(m) for m in args.prompts.split(",")]
    for concentration in (float(c) for c in args.concentrations.split(",")):
        for items_per_prompt in (int(i) for i in args.items_per_prompt.split(",")):
            started = time.perf_counter()
            icc = [
                campaign_model(r, concentration=concentration, votes_per_item=args.votes_per_item).item_icc
                for r in rates
            ]
            print(
                f"\n{args.method}, {'wins + ties / 2' if args.half_ties else 'win rate'}: concentration {concentration:g} "
                f"(item-level ICC {min(icc):.2f}-{max(icc):.2f}), {items_per_prompt} items per prompt, "
                f"k = {args.votes_per_item}, {args.campaigns} campaigns per cell\n"
            )
            print("| prompts | " + " | ".join(f"true rate {r:g}" for r in rates) + " |")
            print("|---|" + "---|" * len(rates))
            for m, cells in coverage_table(
                args.method,
                concentration=concentration,
                items_per_prompt=items_per_prompt,
                prompts=prompts,
                rates=rates,
                campaigns=args.campaigns,
                rounds=args.rounds,
                half=args.half_ties,
                votes_per_item=args.votes_per_item,
            ):
                text = [f"{100 * c:.1f} ({100 * above:.1f} \\| {100 * below:.1f})" for c, above, below, _ in cells]
                print(f"| {m} | " + " | ".join(text) + " |")
            print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
