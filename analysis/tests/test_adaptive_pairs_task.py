"""The adaptive campaign's recomputation: votes -> win matrix -> pair ranking -> the engine's pair priorities."""

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from analysis import services, tasks
from annotation.models import Assignment, ComparisonItem, Rater, Vote
from annotation.tests.campaign_fixtures import rows_only_campaign

pytestmark = pytest.mark.django_db

# (i, j): (i won, j won, ties). Models 0 > 1 and 2 > 3 are clear; the middle gap 1 vs 2 (6 to 4, ties as halves) is
# the ranking's most uncertain adjacent gap, so its pair comes first, before pairs that have no votes at all.
VOTES = {(0, 1): (40, 10, 0), (1, 2): (5, 3, 2), (2, 3): (38, 8, 4), (0, 3): (30, 2, 0)}


def cast(campaign, models, votes):
    items = {
        frozenset((i.image_a.model_id, i.image_b.model_id)): i
        for i in ComparisonItem.objects.filter(campaign=campaign).select_related("image_a", "image_b")
    }
    expires = timezone.now() + timedelta(hours=1)
    for (i, j), outcomes in votes.items():
        item = items[frozenset((models[i].pk, models[j].pk))]
        a_is_i = item.image_a.model_id == models[i].pk
        winners = (
            ["a" if a_is_i else "b"] * outcomes[0] + ["b" if a_is_i else "a"] * outcomes[1] + ["tie"] * outcomes[2]
        )
        raters = Rater.objects.bulk_create(Rater() for _ in winners)
        assignments = Assignment.objects.bulk_create(
            Assignment(item=item, rater=r, campaign=campaign, a_on_left=True, expires_at=expires, state="voted")
            for r in raters
        )
        Vote.objects.bulk_create(
            Vote(assignment=a, choice={"a": "left", "b": "right"}.get(w, "tie"), winner=w)
            for a, w in zip(assignments, winners, strict=True)
        )


def test_the_task_ranks_the_most_uncertain_adjacent_gap_first():
    campaign, models = rows_only_campaign("adaptive", 4, prompts=1, k=3)
    cast(campaign, models, VOTES)
    ids = [m.pk for m in models]
    wins = services.win_matrix(campaign, services.primary_criterion(campaign), ids)
    assert wins[1, 2] == 6 and wins[2, 1] == 4 and wins[2, 3] == 40 and wins[3, 2] == 10
    assert services.pair_ranking(campaign)[0] == (ids[1], ids[2])
    assert tasks.refresh_pair_priorities(campaign.pk) > 0
    priority = {
        frozenset((i.image_a.model_id, i.image_b.model_id)): i.pair_priority
        for i in ComparisonItem.objects.filter(campaign=campaign).select_related("image_a", "image_b")
    }
    assert priority[frozenset(ids[1:3])] == 0
    assert sorted(priority.values()) == list(range(6))
    assert tasks.refresh_pair_priorities(campaign.pk) == 0, "idempotent: nothing changes without new votes"
    assert tasks.refresh_adaptive_pairs() == 1


def test_votes_that_do_not_count_are_left_out_and_uniform_campaigns_are_left_alone():
    campaign, models = rows_only_campaign("adaptive", 3, prompts=1, k=3)
    cast(campaign, models, {(0, 1): (3, 1, 0)})
    Vote.objects.filter(winner="b").update(excluded=True)
    wins = services.win_matrix(campaign, services.primary_criterion(campaign), [m.pk for m in models])
    assert np.array_equal(wins, [[0, 3, 0], [0, 0, 0], [0, 0, 0]])
    uniform, _ = rows_only_campaign("uniform", 3, prompts=1, k=3, pair_selection="uniform")
    assert tasks.refresh_pair_priorities(uniform.pk) is None
    assert not uniform.items.exclude(pair_priority=0).exists()
    assert services.live_adaptive_campaigns() == [campaign.pk]
