"""Fewer human votes: prediction-powered win rates (three judges and a fourth) and adaptive pairs, the issue-13 figures.

1. PPI coverage: campaigns of --prompts prompts x 4 items (prompt and item effects,
   ``analysis.stats.simulation.judged_model``), humans (k = 5) on a random quarter of
   the items, a judge on all; coverage of the prompt-clustered PPI++ interval and
   of humans alone, and the mean width ratio, per judge.
2. Vote saving: human votes for a ±5-point interval (mean half-width) with the good
   judge vs humans alone, in a campaign of 2,000 prompts x 4 items the judge scores
   in full; and the null campaign (true rate 50%) still covered.
3. Adaptive vs uniform pairs: votes until every adjacent pair of 8 models
   (log-strengths 0, 0.3, ..., 2.1) is told apart, --repeats runs each.

    nice -n 19 .venv/bin/python bench/fewer_votes.py [--campaigns 2000] [--repeats 30] [--seed 13]
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
from analysis.stats.adaptive_pairs import simulate_votes_to_separate  # noqa: E402
from analysis.stats.simulation import JUDGES, judge_scores, judged_model, simulate_judged  # noqa: E402

ITEMS, K = 4, 5


def ppi_runs(kind, rate, campaigns, prompts, labelled_items, seed):
    """Per campaign: (covered, humans-only covered, half-width, humans-only half-width, lambda, agreement)."""
    model = judged_model(rate)
    rng = np.random.default_rng(seed)
    human, latent = simulate_judged(model, rng, campaigns, prompts, ITEMS)
    judge = judge_scores(kind, model, latent, rng)
    prompt = np.repeat(np.arange(prompts), ITEMS)
    rows = []
    for campaign in range(campaigns):
        y, j = human[campaign].ravel(), judge[campaign].ravel()
        labelled = np.zeros(len(y), dtype=bool)
        labelled[rng.choice(len(y), labelled_items, replace=False)] = True
        r = stats.prediction_powered_win_rate(
            y[labelled],
            j[labelled],
            j[~labelled],
            prompts_labelled=prompt[labelled],
            prompts_unlabelled=prompt[~labelled],
        )
        rows.append(
            (
                r.interval.contains(model.true_rate),
                r.humans_only.contains(model.true_rate),
                r.interval.half_width,
                r.humans_only.half_width,
                r.lam,
                r.agreement,
            )
        )
    return np.array(rows, dtype=float)


def ppi_coverage(args):
    labelled = args.prompts  # a quarter of the items
    print(
        f"\n1. PPI++ coverage, {args.prompts} prompts x {ITEMS} items, humans on {labelled} random items, {args.campaigns} campaigns\n"
    )
    print(
        "| judge | true rate | agreement | mean lambda | PPI coverage | humans-only coverage | width PPI / humans only |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in JUDGES:
        for rate in (0.5, 0.7):
            rows = ppi_runs(
                kind, rate, args.campaigns, args.prompts, labelled, [args.seed, JUDGES.index(kind), int(100 * rate)]
            )
            ratio = rows[:, 2] / rows[:, 3]
            print(
                f"| {kind} | {rate:g} | {100 * rows[:, 5].mean():.0f}% | {rows[:, 4].mean():.2f} | {100 * rows[:, 0].mean():.1f}% "
                f"| {100 * rows[:, 1].mean():.1f}% | {ratio.mean():.3f} (± {ratio.std() / np.sqrt(len(ratio)):.3f}) |"
            )


def vote_saving(args):
    prompts = 2000
    print(
        f"\n2. Human votes for a ±5-point interval (mean half-width), {prompts} prompts x {ITEMS} items judged in full\n"
    )
    print("| true rate | labelled items | humans only: half-width | good judge: half-width | coverage (PPI / humans) |")
    print("|---|---|---|---|---|")
    found = {}
    for rate in (0.5, 0.7):
        curve = []
        for labelled in (150, 200, 250, 300, 350, 400, 500):
            rows = ppi_runs(
                "good", rate, args.campaigns // 10, prompts, labelled, [args.seed, 9, labelled, int(100 * rate)]
            )
            curve.append((labelled, rows[:, 3].mean(), rows[:, 2].mean()))
            print(
                f"| {rate:g} | {labelled} | {rows[:, 3].mean():.4f} | {rows[:, 2].mean():.4f} "
                f"| {100 * rows[:, 0].mean():.1f}% / {100 * rows[:, 1].mean():.1f}% |"
            )
        n, humans, powered = map(np.array, zip(*curve, strict=True))
        # Labelled items where each mean half-width crosses 0.05 (half-width ~ 1 / sqrt(n): interpolate in 1 / hw^2).
        need_humans = float(np.interp(1 / 0.05**2, 1 / humans**2, n))
        need_powered = float(np.interp(1 / 0.05**2, 1 / powered**2, n))
        found[rate] = (need_humans, need_powered)
    print()
    for rate, (humans, powered) in found.items():
        print(
            f"true rate {rate:g}: humans alone need ~{humans:.0f} items ({K * humans:.0f} votes), with the judge "
            f"~{powered:.0f} ({K * powered:.0f} votes): {100 * (1 - powered / humans):.0f}% fewer"
        )


def adaptive(args):
    strengths = np.linspace(0, 2.1, 8)
    print(
        f"\n3. Votes until adjacent models separate, 8 models (log-strengths 0..2.1 step 0.3), {args.repeats} runs each\n"
    )
    print("| assignment | median votes | 10th-90th percentile | ranking correct at stop |")
    print("|---|---|---|---|")
    medians = {}
    for name, flag in (("uniform", False), ("adaptive", True)):
        runs = [
            simulate_votes_to_separate(strengths, np.random.default_rng([args.seed, run]), adaptive=flag)
            for run in range(args.repeats)
        ]
        votes = np.array([v for v, _ in runs])
        medians[name] = np.median(votes)
        low, high = np.percentile(votes, [10, 90])
        print(f"| {name} | {medians[name]:.0f} | {low:.0f}-{high:.0f} | {np.mean([c for _, c in runs]) * 100:.0f}% |")
    print(f"\nuniform / adaptive (medians): {medians['uniform'] / medians['adaptive']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaigns", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--only", choices=["ppi", "saving", "adaptive"])
    args = parser.parse_args()
    print(
        f"bench/fewer_votes.py --campaigns {args.campaigns} --prompts {args.prompts} --repeats {args.repeats} --seed {args.seed}"
    )
    tables = {"ppi": ppi_coverage, "saving": vote_saving, "adaptive": adaptive}
    for name, table in tables.items():
        if args.only and name != args.only:
            continue
        started = time.perf_counter()
        table(args)
        print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
