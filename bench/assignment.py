"""Rater round trips per second (next task + vote) on PostgreSQL vs bare SQL inserts of the same votes.

A campaign of 1,000 visual-appeal items x 5 raters per item is filled by
--raters concurrent rater processes (as web workers would be), each looping next_assignment + submit_vote
until it gets no task. The baseline, in the same run, inserts the same number
of vote rows with one bare autocommitted INSERT each. Images are database rows
sharing one real PNG: the engine never reads image files.

    python bench/assignment.py [--items 1000] [--raters 8]

Uses BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/needle_bench), dropped and re-created.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/needle_bench")
os.environ["DATABASE_URL"] = URL
os.environ["NEEDLE_VAR_DIR"] = str(BASE_DIR / "var" / "bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")

from bench.bench_db import models_prompts_images, recreate_database  # noqa: E402  (BASE_DIR on the path first)


def run_processes(target, shares) -> tuple[float, list]:
    """Run target(share, results) in one forked process per share; (wall seconds, what each put)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=target, args=(share, results)) for share in shares]
    started = time.perf_counter()
    for p in processes:
        p.start()
    collected = [results.get() for _ in processes]  # drain before join, or a full pipe blocks the child
    for p in processes:
        p.join()
    seconds = time.perf_counter() - started
    if any(p.exitcode for p in processes):
        raise SystemExit(f"a rater process failed: exit codes {[p.exitcode for p in processes]}")
    return seconds, collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--raters", type=int, default=8, help="concurrent rater processes")
    args = parser.parse_args()
    recreate_database(URL)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections

    from annotation import services
    from annotation.models import Assignment, Campaign, ComparisonItem, Rater, Vote

    call_command("migrate", verbosity=0)
    models, prompt_set, _, image = models_prompts_images(["a", "b"], args.items)
    images = {m.pk: [image[m.pk, p.pk] for p in prompt_set.prompts.order_by("position")] for m in models}
    campaign = services.create_campaign(
        name="bench", models=models, prompt_set=prompt_set, seeds=[0], criteria={"visual_appeal": {}}, gold_share=0
    )
    criterion = campaign.criteria.get()
    ComparisonItem.objects.bulk_create(
        ComparisonItem(campaign=campaign, criterion=criterion, image_a=a, image_b=b, remaining=criterion.votes_per_item)
        for a, b in zip(images[models[0].pk], images[models[1].pk])
    )
    services.set_status(campaign, "live")
    total = args.items * criterion.votes_per_item
    raters = [Rater.objects.create() for _ in range(max(args.raters, criterion.votes_per_item))]
    campaign_id = campaign.pk
    connections.close_all()  # children must not share the parent's connection

    def rate(my_rater_ids, results):
        # One OS process per web worker, as gunicorn would run them: each has its own connection and GIL.
        campaign = Campaign.objects.get(pk=campaign_id)
        latencies = []
        for rater in Rater.objects.filter(pk__in=my_rater_ids).order_by("pk"):
            while True:
                t0 = time.perf_counter()
                a = services.next_assignment(campaign, rater)
                if a is None:
                    break
                services.submit_vote(rater, a.token, "left", seconds_on_task=1.0)
                latencies.append(time.perf_counter() - t0)
        results.put(latencies)

    # Each process works through its share of raters one after another, so that
    # --raters raters are active at any moment and every item can reach k.
    shares = [[r.pk for r in raters[i :: args.raters]] for i in range(args.raters)]
    needle_seconds, per_process = run_processes(rate, shares)
    latencies = [x for part in per_process for x in part]
    assert Vote.objects.count() == total == len(latencies), (Vote.objects.count(), total, len(latencies))

    # Baseline: the same number of vote rows, one bare autocommitted INSERT each, same number of processes.
    assignment_ids = list(Assignment.objects.values_list("id", flat=True))
    Vote.objects.all().delete()
    connections.close_all()

    def insert(ids, results):
        with connection.cursor() as cursor:
            for aid in ids:
                cursor.execute(
                    "INSERT INTO annotation_vote (assignment_id, choice, winner, seconds_on_task, excluded, created_at) "
                    "VALUES (%s, 'left', 'a', 1.0, false, now())",
                    [aid],
                )
        results.put([])

    bare_seconds, _ = run_processes(insert, [assignment_ids[i :: args.raters] for i in range(args.raters)])
    assert Vote.objects.count() == total

    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(0.99 * (len(lat) - 1))] * 1000
    print(
        f"{args.items} items x {criterion.votes_per_item} votes = {total} round trips, {args.raters} concurrent raters "
        f"(one process each), PostgreSQL, {os.cpu_count()} CPU cores shared by client and server"
    )
    print(
        f"Needle round trips (next task + vote): {total / needle_seconds:8.1f}/s   p50 {p50:.1f} ms   p99 {p99:.1f} ms"
    )
    print(f"bare SQL vote inserts:                 {total / bare_seconds:8.1f}/s")
    print(f"ratio Needle / bare inserts: {bare_seconds / needle_seconds:.3f}")


if __name__ == "__main__":
    main()
