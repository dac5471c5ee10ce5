"""Watching a campaign: naive peeking vs the anytime-valid confidence sequence, and the votes "stop when decided" saves.

Campaigns are simulated from a known truth (``analysis.stats.simulation``:
Beta prompt effects, 4 items per prompt, k = 5 votes, 10% tie votes, the item's
outcome its majority; prompt scores are wins + ties / 2 per item). Three tables:

1. False positives under the null (neither model better), looking after every
   20 comparisons (items) up to the campaign's size: the fixed-sample clustered
   score interval stopped at its first exclusion of 50% (naive peeking), the same
   interval looked at once at the end, and the confidence sequence (CS).
2. Coverage of the CS: share of campaigns whose CS holds the truth at every look
   (after every prompt) up to 20, 200 and 2,000 prompts, strong prompt effects.
3. Stop when decided: a fixed design of --prompts prompts (interval at the end)
   vs closing when the CS excludes 50% (at most --prompts prompts): power and
   mean votes.

    nice -n 19 .venv/bin/python bench/sequential.py [--campaigns 2000] [--seed 13]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path[0] = str(BASE_DIR)

from analysis import stats  # noqa: E402
from analysis.stats import sequential  # noqa: E402
from analysis.stats.simulation import CampaignModel, _truth, simulate_campaigns  # noqa: E402

ITEMS, K, TAU = 4, 5, 0.1


def half_ties_model(rate: float, concentration: float) -> CampaignModel:
    """The campaign whose true wins + ties / 2 rate is ``rate``."""
    mu = optimize.brentq(lambda m: _truth(m, concentration, K, TAU)[1] - rate, 1e-6, 1 - 1e-6, xtol=1e-12)
    win, half, icc = _truth(mu, concentration, K, TAU)
    return CampaignModel(win, half, icc, mu, concentration, K, TAU)


def simulate(rate, concentration, campaigns, prompts, seed):
    model = half_ties_model(rate, concentration)
    wins, half_ties, items = simulate_campaigns(model, np.random.default_rng(seed), campaigns, prompts, ITEMS)
    return model, wins, half_ties, items


def false_positives(args):
    print("\n1. False positives, null campaign (true rate 50%), looks after every 20 comparisons\n")
    print(
        "| prompt effects | prompts (comparisons) | looks | naive peeking | one look at the end | confidence sequence |"
    )
    print("|---|---|---|---|---|---|")
    for concentration in (4.0, 10.0):
        for prompts in (100, 500):
            model, wins, half_ties, items = simulate(
                0.5, concentration, args.campaigns, prompts, [args.seed, 1, prompts]
            )
            squares = wins + (half_ties - wins) / 2
            looks = sequential.look_schedule(ITEMS, prompts, every_items=20)
            naive = sequential.naive_peeking_first_exclusion(half_ties, items, squares, looks=looks)
            once = sequential.naive_peeking_first_exclusion(half_ties, items, squares, looks=[prompts])
            cs = stats.first_exclusion(half_ties / items, 0.5)
            print(
                f"| c = {concentration:g} (ICC {model.item_icc:.2f}) | {prompts} ({ITEMS * prompts}) | {len(looks)} "
                f"| {100 * np.mean(naive > 0):.1f}% | {100 * np.mean(once > 0):.1f}% | {100 * np.mean(cs > 0):.1f}% |"
            )


def coverage(args):
    print("\n2. Coverage of the CS at every look (after every prompt), strong prompt effects (c = 2)\n")
    horizons = (20, 200, 2000)
    print("| true rate | " + " | ".join(f"all looks to {h}" for h in horizons) + " |")
    print("|---|" + "---|" * len(horizons))
    for rate in (0.5, 0.6, 0.7, 0.8, 0.9):
        model, _, half_ties, items = simulate(rate, 2.0, args.campaigns // 2, 2000, [args.seed, 2, int(100 * rate)])
        first = stats.first_exclusion(half_ties / items, model.true_rate_half_ties)
        kept = [np.mean((first == 0) | (first > h)) for h in horizons]
        print(f"| {rate:g} | " + " | ".join(f"{100 * k:.1f}%" for k in kept) + " |")


def votes_saved(args):
    n = args.prompts
    fixed_votes = n * ITEMS * K
    print(
        f"\n3. Stop when decided vs a fixed design of {n} prompts ({fixed_votes} votes), moderate prompt effects (c = 10)\n"
    )
    print(
        "| true rate | fixed: power | CS: power (decided by the end) | CS: mean votes | votes saved | median look (prompts) |"
    )
    print("|---|---|---|---|---|---|")
    for rate in (0.5, 0.55, 0.6, 0.65, 0.7, 0.8):
        model, wins, half_ties, items = simulate(rate, 10.0, args.campaigns, n, [args.seed, 3, int(100 * rate)])
        low, high = stats.clustered_score_bounds(half_ties, items, wins + (half_ties - wins) / 2)
        fixed_power = np.mean((low > 0.5) | (high < 0.5))
        first = stats.first_exclusion(half_ties / items, 0.5)
        stopped = np.where(first > 0, first, n)
        mean_votes = stopped.mean() * ITEMS * K
        decided = first[first > 0]
        print(
            f"| {rate:g} | {100 * fixed_power:.1f}% | {100 * np.mean(first > 0):.1f}% | {mean_votes:.0f} "
            f"| {100 * (1 - mean_votes / fixed_votes):.0f}% | {np.median(decided) if len(decided) else float('nan'):.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaigns", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=500, help="the fixed design's prompts (table 3)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    print(f"bench/sequential.py --campaigns {args.campaigns} --prompts {args.prompts} --seed {args.seed}")
    for table in (false_positives, coverage, votes_saved):
        started = time.perf_counter()
        table(args)
        print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
