"""Adaptive pair choice for all-pairs campaigns (analysis.stats.adaptive_pairs): priorities and the votes they save."""

import numpy as np
import pytest
from scipy.special import expit

from analysis import stats as needle
from analysis.stats.adaptive_pairs import bradley_terry_state, simulate_votes_to_separate


def expected_wins(strengths, votes_per_pair):
    p = expit(np.subtract.outer(strengths, strengths))
    wins = votes_per_pair * p
    np.fill_diagonal(wins, 0)
    return wins


def test_the_unresolved_adjacent_pair_comes_first():
    """Models 0 > 1 >> 2 > 3: the close pairs (0, 1) and (2, 3) are what the ranking still needs, not (0, 3)."""
    wins = expected_wins(np.array([1.6, 1.5, 0.1, 0.0]), 40)
    ranked = needle.next_pair_priorities(wins)
    assert {(ranked[0].first, ranked[0].second), (ranked[1].first, ranked[1].second)} == {(0, 1), (2, 3)}
    assert ranked[0].priority >= ranked[-1].priority
    assert len(ranked) == 6


def test_a_planned_batch_spreads_over_the_pairs_that_matter():
    wins = expected_wins(np.array([1.6, 1.5, 0.1, 0.0]), 40)
    batch = needle.plan_pairs(wins, 20)
    counts = {pair: batch.count(pair) for pair in set(batch)}
    assert counts.get((0, 1), 0) >= 5 and counts.get((2, 3), 0) >= 5
    assert counts.get((0, 3), 0) <= 2


def test_separation_is_judged_on_adjacent_gaps():
    assert needle.ranking_separated(expected_wins(np.array([2.0, 1.0, 0.0]), 400))
    assert not needle.ranking_separated(expected_wins(np.array([2.0, 1.95, 0.0]), 400))
    scores, covariance = bradley_terry_state(expected_wins(np.array([1.0, 0.0]), 100))
    assert scores[0] - scores[1] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="square"):
        needle.next_pair_priorities(np.ones((2, 3)))


def test_adaptive_pairs_need_fewer_votes_than_uniform():
    """8 models, log-strengths 0, 0.3, ..., 2.1; 4 runs each (bench/adaptive_pairs.py runs 30: the >= 2x figure)."""
    strengths = np.linspace(0, 2.1, 8)
    found = {}
    for adaptive in (False, True):
        runs = [
            simulate_votes_to_separate(strengths, np.random.default_rng([run, 7]), adaptive=adaptive)
            for run in range(4)
        ]
        found[adaptive] = np.median([votes for votes, _ in runs])
        assert all(correct for _, correct in runs)
    print(f"median votes to separate: uniform {found[False]:.0f}, adaptive {found[True]:.0f}")
    assert found[True] < found[False] / 1.5
