"""Adaptive pairs in the assignment engine: the claim follows the pair priorities, and nothing else changes."""

import random
import threading
from collections import Counter

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from annotation import services
from annotation.models import Assignment, Campaign, ComparisonItem, Rater, Vote
from annotation.services import assignment
from annotation.tests.campaign_fixtures import rows_only_campaign
from generation.models import TextToImageModel

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("both_write_paths")]


def models_of(item) -> frozenset:
    return frozenset((item.image_a.model_id, item.image_b.model_id))


def vote(rater, campaign):
    task = services.next_assignment(campaign, rater)
    if task is None:
        return None
    services.submit_vote(rater, task.token, "left")
    return models_of(ComparisonItem.objects.select_related("image_a", "image_b").get(pk=task.item_id))


def test_raters_get_the_top_pairs_items_first_depth_first_within_the_pair():
    campaign, (m0, m1, m2, m3) = rows_only_campaign("adaptive", 4, prompts=6, k=3)
    # Unordered: (m3, m2) names the items whose model A is m2.
    changed = services.set_pair_priorities(campaign, [(m3, m2), (m1.pk, m3.pk)])
    assert changed == 6 * 6 - 6  # the top pair's items stay at 0; the unranked pairs come after both ranked ones
    priorities = Counter(campaign.items.values_list("pair_priority", flat=True))
    assert priorities == {0: 6, 1: 6, 2: 24}
    raters = [Rater.objects.create() for _ in range(4)]
    # Each rater meets an item once: six tasks each of the top pair (its 6 items x k=3 = 18 slots for 3 raters).
    got = [[vote(rater, campaign) for _ in range(6)] for rater in raters[:3]]
    assert all(pair == {m2.pk, m3.pk} for tasks in got for pair in tasks)
    top = campaign.items.filter(pair_priority=0)
    assert all(item.votes == 3 and item.remaining == 0 for item in top), "the top pair's items filled to k first"
    # Then the second-ranked pair, then the rest.
    assert vote(raters[3], campaign) == {m1.pk, m3.pk}
    assert all(pair == {m1.pk, m3.pk} for pair in (vote(raters[0], campaign) for _ in range(5)))


def test_new_priorities_redirect_the_next_claims():
    campaign, (m0, m1, m2) = rows_only_campaign("adaptive", 3, prompts=4, k=2)
    rater = Rater.objects.create()
    services.set_pair_priorities(campaign, [(m0, m1), (m1, m2), (m0, m2)])
    assert vote(rater, campaign) == {m0.pk, m1.pk}
    assert services.set_pair_priorities(campaign, [(m0, m2), (m1, m2), (m0, m1)]) == 8
    assert services.set_pair_priorities(campaign, [(m0, m2), (m1, m2), (m0, m1)]) == 0, "idempotent"
    # The open lease (preloaded second task) aside, the next new claim follows the new order.
    assert {vote(rater, campaign) for _ in range(3)} >= {frozenset((m0.pk, m2.pk))}


def test_a_uniform_campaign_claims_in_the_old_order_and_keeps_every_priority_at_zero(make_rater):
    campaign, _ = rows_only_campaign("uniform", 3, prompts=4, k=2, pair_selection="uniform")
    raters = [make_rater() for _ in range(3)]
    claimed = []
    for rater in raters:
        while (task := services.next_assignment(campaign, rater)) is not None:
            claimed.append(task.item_id)
            services.submit_vote(rater, task.token, "right")
    assert not campaign.items.exclude(pair_priority=0).exists()
    # Depth-first in id order, spread over prompts: the first rater's first task is the campaign's first item,
    # the second rater's first task is the item the first one voted on first (remaining 1 < 2).
    ids = list(campaign.items.order_by("id").values_list("id", flat=True))
    assert claimed[0] == ids[0]
    assert Counter(Vote.objects.values_list("assignment__item_id", flat=True)) == dict.fromkeys(ids, 2)
    with pytest.raises(services.AnnotationError) as refused:
        services.set_pair_priorities(campaign, [])
    assert refused.value.field == "pair_selection"


def test_pair_selection_is_refused_where_it_means_nothing(two_models, prompt_set):
    with pytest.raises(services.AnnotationError, match="three or more models") as refused:
        services.create_campaign(
            name="x", models=two_models, prompt_set=prompt_set, seeds=[0], pair_selection="adaptive"
        )
    assert refused.value.field == "pair_selection"
    with pytest.raises(services.AnnotationError) as refused:
        services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0], pair_selection="ucb")
    assert refused.value.field == "pair_selection"
    third = TextToImageModel.objects.create(
        name="third", pipeline_path="/none", pipeline_class="StableDiffusionPipeline", weights_fingerprint="3"
    )
    three = [*two_models, third]
    with pytest.raises(services.AnnotationError, match="each against the baseline") as refused:
        services.create_campaign(
            name="x",
            models=three,
            prompt_set=prompt_set,
            seeds=[0],
            pairing="vs_baseline",
            baseline=third,
            pair_selection="adaptive",
        )
    assert refused.value.field == "pair_selection"
    draft = services.create_campaign(
        name="y", models=three, prompt_set=prompt_set, seeds=[0], pair_selection="adaptive"
    )
    with pytest.raises(services.AnnotationError, match="each against the baseline"):
        services.update_campaign(draft, pairing="vs_baseline", baseline=third)
    campaign = services.create_campaign(name="x", models=two_models, prompt_set=prompt_set, seeds=[0])
    assert campaign.pair_selection == Campaign.PairSelection.UNIFORM
    with pytest.raises(services.AnnotationError, match="three or more models"):
        services.update_campaign(campaign, pair_selection="adaptive")


def test_switching_back_to_uniform_resets_priorities_and_votes_freeze_the_choice():
    campaign, models = rows_only_campaign("adaptive", 3, prompts=2, k=2)
    services.set_pair_priorities(campaign, [(models[1], models[2])])
    assert campaign.items.exclude(pair_priority=0).exists()
    with pytest.raises(services.AnnotationError, match="not a pair"):
        services.set_pair_priorities(campaign, [(models[1], models[1])])
    services.update_campaign(campaign, pair_selection="uniform")
    assert not campaign.items.exclude(pair_priority=0).exists()
    services.update_campaign(campaign, pair_selection="adaptive")
    vote(Rater.objects.create(), campaign)
    with pytest.raises(services.AnnotationError, match="frozen"):
        services.update_campaign(campaign, pair_selection="uniform")


def test_the_claim_walks_the_priority_index_without_sorting_the_campaigns_items(both_write_paths):
    if both_write_paths != "single statement":
        pytest.skip("the plan of PostgreSQL's claiming statement")
    campaign, models = rows_only_campaign("adaptive", 8, prompts=40, k=5)  # 28 pairs x 40 prompts: 1,120 items
    services.set_pair_priorities(campaign, [(models[i], models[i + 1]) for i in range(7)])
    rater = Rater.objects.create()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ComparisonItem._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        services.next_assignment(campaign, rater)
    claim = next(q["sql"] for q in queries.captured_queries if "claimed AS (" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + claim)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "item_open_depth_first" in plan, plan
    assert "Sort" not in plan, plan


@pytest.mark.django_db(transaction=True)
def test_concurrent_raters_under_changing_priorities_never_overfill_never_repeat():
    if connection.vendor != "postgresql":
        pytest.skip("row locks with SKIP LOCKED are a PostgreSQL feature; SQLite serialises writers instead")
    campaign, models = rows_only_campaign("adaptive", 4, prompts=5, k=3)  # 6 pairs x 5 prompts x k=3: 90 slots
    pairs = [(a.pk, b.pk) for i, a in enumerate(models) for b in models[i + 1 :]]
    raters = [Rater.objects.create() for _ in range(20)]
    errors: list[BaseException] = []
    done = threading.Event()
    start = threading.Barrier(len(raters) + 1)

    def rate(rater):
        try:
            start.wait()
            while (task := services.next_assignment(campaign, rater)) is not None:
                services.submit_vote(rater, task.token, random.choice(["left", "right", "tie"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def reprioritise():
        rng = random.Random(13)
        try:
            start.wait()
            while not done.is_set():
                services.set_pair_priorities(campaign, rng.sample(pairs, len(pairs)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=rate, args=(r,)) for r in raters]
    writer = threading.Thread(target=reprioritise)
    for t in [*threads, writer]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    done.set()
    writer.join(timeout=60)
    assert not errors, errors[:3]
    votes_per_item = Counter(Vote.objects.values_list("assignment__item_id", flat=True))
    items = list(ComparisonItem.objects.filter(campaign=campaign))
    assert all(votes_per_item[i.pk] == 3 for i in items), "every item full, none over k"
    assert max(Counter(Assignment.objects.values_list("rater_id", "item_id")).values()) == 1
    for item in items:
        assert (item.votes, item.open_leases, item.remaining) == (3, 0, 0)


def test_the_orm_claim_orders_like_the_statement(monkeypatch):
    # The ORM path's order is (pair_priority, remaining, id) too: a lower-priority item with fewer slots left waits.
    campaign, (m0, m1, m2) = rows_only_campaign("adaptive", 3, prompts=3, k=3)
    services.set_pair_priorities(campaign, [(m1, m2), (m0, m2), (m0, m1)])
    started = campaign.items.filter(pair_priority=2).first()
    ComparisonItem.objects.filter(pk=started.pk).update(remaining=1)
    first = services.next_assignment(campaign, Rater.objects.create())
    assert ComparisonItem.objects.get(pk=first.item_id).pair_priority == 0
    assert assignment.single_statement_writes() in (True, False)
