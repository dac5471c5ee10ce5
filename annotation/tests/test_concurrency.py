"""Fifty raters at once against PostgreSQL: the assignment engine's invariants under real contention."""

import random
from collections import Counter

import pytest
from django.db import connection

from annotation import services
from annotation.models import Assignment, ComparisonItem, Rater, Vote
from conftest import all_at_once

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("both_write_paths")]

N_RATERS = 50


def test_fifty_concurrent_raters_never_overfill_never_repeat_never_lose_a_vote(live_campaign):
    if connection.vendor != "postgresql":
        pytest.skip("row locks with SKIP LOCKED are a PostgreSQL feature; SQLite serialises writers instead")
    raters = [Rater.objects.create() for _ in range(N_RATERS)]
    accepted: dict[int, list[str]] = {r.pk: [] for r in raters}

    def rate(rater):
        rng = random.Random(rater.pk)
        while (a := services.next_assignment(live_campaign, rater)) is not None:
            if rng.random() < 0.1:  # a double submit, as from a double click
                services.submit_vote(rater, a.token, "left")
            result = services.submit_vote(rater, a.token, "left")
            accepted[rater.pk].append(a.token)
            assert result.vote.assignment_id == a.pk

    all_at_once(rate, raters, timeout=300)

    k = {i.pk: i.criterion.votes_per_item for i in ComparisonItem.objects.select_related("criterion")}
    votes_per_item = Counter(Vote.objects.values_list("assignment__item_id", flat=True))
    assert all(votes_per_item[i] <= k[i] for i in k), "an item collected more than k votes"
    assert all(votes_per_item[i] == k[i] for i in k), "with 50 raters every item should be full"
    seen = Counter(Assignment.objects.values_list("rater_id", "item_id"))
    assert max(seen.values()) == 1, "a rater saw an item twice"
    # Every vote a rater was told was recorded is in the database, exactly once.
    recorded = set(Vote.objects.values_list("assignment__token", flat=True))
    told = [t for tokens in accepted.values() for t in tokens]
    assert len(told) == len(set(told)) == len(recorded) == sum(k.values())
    assert set(told) == recorded
    for item in ComparisonItem.objects.all():
        assert (item.votes, item.open_leases) == (votes_per_item[item.pk], 0)
