"""Adaptive vs uniform pairs through the real assignment engine on PostgreSQL (issue 13, part 3).

8 models (log-strengths 0, 0.3, ..., 2.1), all pairs, one criterion (visual appeal, k = 5), --prompts prompts x
seed 0 (28 x prompts items), no gold. Simulated raters (a pool of --raters, taking turns) ask
``services.next_assignment`` and answer with ``services.submit_vote``: a tie with probability 0.1, else the
Bradley–Terry winner of the true strengths, on whichever side it is shown. Every 50 votes the adaptive campaign's
pair priorities are recomputed by the real analysis service (``analysis.services.refresh_pair_priorities``), and
both campaigns check ``ranking_separated`` on the win matrix of their counting votes (``analysis.services.win_matrix``).
Votes until separated, --repeats runs of each. Items are created prompt-major (every pair of prompt 1, then of
prompt 2, ...), so the uniform campaign's depth-first order cycles through the pairs (the balanced uniform design
of bench/fewer_votes.py); the plan of the claiming statement on the full campaign is printed once.

    nice -n 19 .venv/bin/python bench/adaptive_engine.py [--repeats 5] [--prompts 100] [--raters 40] [--seed 13]

Uses BENCH_DATABASE_URL (default postgres://needle:needle@127.0.0.1:5432/needle_adaptive_bench), dropped and re-created.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path[0] = str(BASE_DIR)
URL = os.environ.get("BENCH_DATABASE_URL", "postgres://needle:needle@127.0.0.1:5432/needle_adaptive_bench")
os.environ["DATABASE_URL"] = URL
os.environ["NEEDLE_VAR_DIR"] = str(BASE_DIR / "var" / "bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

from bench.bench_db import models_prompts_images, recreate_database  # noqa: E402  (BASE_DIR on the path first)

STRENGTHS = np.linspace(0, 2.1, 8)
TIE_SHARE = 0.1
BATCH = 50


def setup_world(prompts: int):
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return models_prompts_images([f"m{i}" for i in range(len(STRENGTHS))], prompts)


def new_campaign(name, selection, world):
    from annotation import services
    from annotation.models import ComparisonItem

    models, prompt_set, rows, image = world
    campaign = services.create_campaign(
        name=name,
        models=models,
        prompt_set=prompt_set,
        seeds=[0],
        criteria={"visual_appeal": {}},
        gold_share=0,
        lease_seconds=86_400,
        speeder_seconds=0,
        pair_selection=selection,
    )
    criterion = campaign.criteria.get()
    ComparisonItem.objects.bulk_create(
        ComparisonItem(
            campaign=campaign,
            criterion=criterion,
            image_a=image[a.pk, p.pk],
            image_b=image[b.pk, p.pk],
            remaining=criterion.votes_per_item,
        )
        for p in rows
        for a, b in campaign.model_pairs()
    )
    services.set_status(campaign, "live")
    return campaign


def separated(wins) -> bool:
    from analysis.stats.adaptive_pairs import ranking_separated

    try:
        return ranking_separated(wins)
    except (RuntimeError, np.linalg.LinAlgError):  # comparisons not yet connected: no finite fit
        return False


def run(name, selection, world, raters, rng) -> tuple[int, bool, float]:
    """(votes until the ranking separated, whether it did before the campaign ran out, seconds)."""
    from analysis import services as analysis_services
    from annotation import services
    from annotation.models import ComparisonItem
    from annotation.models import Rater as RaterModel

    campaign = new_campaign(name, selection, world)
    criterion = campaign.criteria.get()
    index = {m.pk: i for i, m in enumerate(world[0])}
    pool = [RaterModel.objects.create(simulated=True) for _ in range(raters)]
    pair_of = {
        i.pk: (index[i.image_a.model_id], index[i.image_b.model_id])
        for i in ComparisonItem.objects.filter(campaign=campaign).select_related("image_a", "image_b")
    }
    started = time.perf_counter()
    votes, idle, turn = 0, 0, 0
    while idle < raters:
        rater = pool[turn % raters]
        turn += 1
        task = services.next_assignment(campaign, rater)
        if task is None:
            idle += 1
            continue
        idle = 0
        a, b = pair_of[task.item_id]
        if rng.random() < TIE_SHARE:
            choice = "tie"
        else:
            a_won = rng.random() < 1 / (1 + np.exp(-(STRENGTHS[a] - STRENGTHS[b])))
            choice = "left" if a_won == task.a_on_left else "right"
        services.submit_vote(rater, task.token, choice)
        votes += 1
        if votes % BATCH == 0:
            if selection == "adaptive":
                analysis_services.refresh_pair_priorities(campaign.pk)
            wins = analysis_services.win_matrix(campaign, criterion, list(index))
            if separated(wins):
                return votes, True, time.perf_counter() - started
    return votes, False, time.perf_counter() - started


def claim_plan(world) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from analysis import services as analysis_services
    from annotation import services
    from annotation.models import ComparisonItem, Rater

    campaign = new_campaign("plan", "adaptive", world)
    rater = Rater.objects.create(simulated=True)
    services.submit_vote(rater, services.next_assignment(campaign, rater).token, "left")
    analysis_services.refresh_pair_priorities(campaign.pk)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ComparisonItem._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        services.next_assignment(campaign, rater)
    claim = next(q["sql"] for q in queries.captured_queries if "claimed AS (" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + claim)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--raters", type=int, default=40)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--plan", action="store_true", help="print the claiming statement's plan first")
    args = parser.parse_args()
    recreate_database(URL)

    import django

    django.setup()
    from django.conf import settings

    settings.DEBUG = False
    world = setup_world(args.prompts)
    print(
        f"bench/adaptive_engine.py --repeats {args.repeats} --prompts {args.prompts} --raters {args.raters} "
        f"--seed {args.seed}: 8 models, {28 * args.prompts} items x k=5"
    )
    if args.plan:
        print(claim_plan(world))
    results = {"uniform": [], "adaptive": []}
    for repeat in range(args.repeats):
        for selection in results:
            rng = np.random.default_rng([args.seed, repeat])
            votes, done, seconds = run(f"{selection}-{repeat}", selection, world, args.raters, rng)
            results[selection].append((votes, done))
            print(f"  run {repeat} {selection}: {votes} votes{'' if done else ' (campaign ran out)'} ({seconds:.0f} s)")
    print("\n| assignment (real engine) | median votes | 10th-90th percentile | runs separated |")
    print("|---|---|---|---|")
    medians = {}
    for selection, rows in results.items():
        votes = np.array([v for v, _ in rows])
        medians[selection] = np.median(votes)
        low, high = np.percentile(votes, [10, 90])
        print(
            f"| {selection} | {medians[selection]:.0f} | {low:.0f}-{high:.0f} | {sum(d for _, d in rows)}/{len(rows)} |"
        )
    print(f"\nuniform / adaptive (medians): {medians['uniform'] / medians['adaptive']:.2f}x")


if __name__ == "__main__":
    main()
