"""The anytime-valid confidence sequence (analysis.stats.sequential): against confseq, and by simulation.

Reference: confseq 0.0.11 (``confseq.betting.hedged_cs``, the implementation of
Waudby-Smith & Ramdas 2023). It does not install here: its C++ extension needs
Boost's headers (Debian ``libboost-dev``), and its Python code uses ``np.float_``,
gone since numpy 2. Its pure-Python ``betting`` module was run from the sdist in
a scratch environment (numpy 2 with ``np.float_`` aliased back) on the data below,
and matched this implementation exactly at every look (max difference 0.0 on six
sequences of 30-1,000 prompts); the frozen values pin that, and the live test runs
wherever confseq imports.
"""

import numpy as np
import pytest

from analysis import stats as needle
from analysis.stats import sequential
from analysis.stats.simulation import campaign_model, null_campaign_model, simulate_campaigns

# 60 prompts x 4 items, ties as halves: scores in eighths.
EIGHTHS = [8, 3, 2, 4, 6, 5, 6, 0, 7, 6, 5, 5, 6, 6, 4, 4, 6, 6, 5, 8, 5, 7, 5, 0, 2, 7, 4, 5, 7, 4]
EIGHTHS += [8, 8, 8, 5, 0, 3, 5, 4, 7, 6, 2, 4, 2, 3, 1, 1, 5, 8, 7, 7, 8, 0, 3, 3, 6, 2, 6, 5, 0, 4]
# confseq.betting.hedged_cs(x, alpha=0.05, breaks=1000, running_intersection=True) at these looks.
CONFSEQ_EIGHTHS = {
    1: (0.0, 1.0),
    2: (0.0, 1.0),
    5: (0.165, 0.96),
    10: (0.275, 0.824),
    20: (0.43, 0.767),
    30: (0.46, 0.739),
    45: (0.5, 0.712),
    60: (0.5, 0.694),
}
# The same on 1,000 one-item prompts won at a 0.6 rate (a Weyl sequence, so no RNG is involved).
CONFSEQ_WEYL = {
    10: (0.165, 0.907),
    50: (0.394, 0.787),
    100: (0.444, 0.746),
    250: (0.49, 0.703),
    500: (0.516, 0.68),
    1000: (0.536, 0.662),
}
# alpha = 0.1, breaks = 200 on the eighths.
CONFSEQ_EIGHTHS_90 = {10: (0.305, 0.8), 30: (0.48, 0.73), 60: (0.515, 0.685)}


def weyl():
    return ((np.arange(1, 1001) * 0.6180339887498949) % 1 < 0.6).astype(float)


@pytest.mark.parametrize(
    "scores, level, grid, expected",
    [
        (np.array(EIGHTHS) / 8, 0.95, 1000, CONFSEQ_EIGHTHS),
        (weyl(), 0.95, 1000, CONFSEQ_WEYL),
        (np.array(EIGHTHS) / 8, 0.90, 200, CONFSEQ_EIGHTHS_90),
    ],
)
def test_the_sequence_matches_confseq_hedged_cs(scores, level, grid, expected):
    low, high = needle.confidence_sequence_bounds(scores, level=level, grid=grid)
    for look, (confseq_low, confseq_high) in expected.items():
        assert low[look - 1] == pytest.approx(confseq_low, abs=1e-9)
        assert high[look - 1] == pytest.approx(confseq_high, abs=1e-9)


def test_the_sequence_matches_confseq_live_where_it_imports():
    betting = pytest.importorskip("confseq.betting")
    rng = np.random.default_rng(7)
    for scores in (rng.beta(2, 1, 300), rng.binomial(4, 0.3, 200) / 4, weyl()[:400]):
        expected = betting.hedged_cs(scores, alpha=0.05, breaks=1000, running_intersection=True)
        found = needle.confidence_sequence_bounds(scores)
        np.testing.assert_allclose(found, expected, atol=1e-12)


def test_the_exact_exclusion_and_the_grid_bounds_agree():
    """The grid bounds are conservative: a value the exact capital never excludes stays inside them at every look."""
    rng = np.random.default_rng(3)
    scores = rng.binomial(4, rng.beta(2, 1.2, (20, 300)), (20, 300)) / 4
    low, high = needle.confidence_sequence_bounds(scores)
    for m in (0.5, 0.6, 0.65, 0.7):
        first = needle.first_exclusion(scores, m)
        for campaign in range(20):
            inside = (low[campaign] <= m) & (m <= high[campaign])
            looks = first[campaign] - 1 if first[campaign] else 300
            assert inside[:looks].all()
            if first[campaign]:  # once excluded exactly, the printed bound is on or past m
                assert not ((low[campaign, looks:] < m) & (m < high[campaign, looks:])).any()


def test_a_clear_win_is_decided_and_recorded_at_its_look():
    scores = np.array(EIGHTHS * 4) / 8  # 240 prompts, mean 0.58
    cs = needle.confidence_sequence(scores)
    assert cs.decision == "B better"
    # 1/2 is a grid point, so the exact exclusion and the printed lower bound reaching 1/2 happen at the same look.
    assert cs.decided_at == np.flatnonzero(cs.low >= 0.5)[0] + 1 == 34
    assert cs.estimate[-1] == pytest.approx(scores.mean())
    by_width = needle.confidence_sequence(scores, null=0.58, target_width=0.5)
    assert by_width.decision == "width reached"
    assert by_width.high[by_width.decided_at - 1] - by_width.low[by_width.decided_at - 1] <= 0.5
    undecided = needle.confidence_sequence(np.full(50, 0.5))
    assert (undecided.decision, undecided.decided_at) == ("", None)
    assert needle.confidence_sequence(1 - scores).decision == "A better"


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        needle.confidence_sequence([0.2, 1.5])
    with pytest.raises(ValueError, match="at least one"):
        needle.confidence_sequence([])
    with pytest.raises(ValueError, match="level"):
        needle.confidence_sequence([0.5], level=1.0)
    with pytest.raises(ValueError, match="1-D"):
        needle.confidence_sequence(np.ones((2, 3)) / 2)
    assert needle.prompt_scores([3, 1], [4, 2], [1, 0]).tolist() == [0.875, 0.5]
    assert needle.prompt_scores([3, 1], [4, 2], [1, 0], ties_as_half=False).tolist() == [0.75, 0.5]


@pytest.mark.parametrize("rate", [0.5, 0.6, 0.7, 0.8, 0.9])
def test_the_truth_stays_inside_at_every_look(rate):
    """Strong prompt effects (vote-level concentration 2), 4 items x 5 votes per prompt, looks after every prompt.

    300 campaigns of 2,000 prompts per rate; a miss at any look up to 20, 200 or 2,000 prompts counts
    (bench/sequential.py runs more). Monte Carlo standard error of a 95% coverage: 1.3 points.
    """
    model = campaign_model(rate, concentration=2.0)
    wins, _, items = simulate_campaigns(model, np.random.default_rng([13, int(100 * rate)]), 300, 2000, 4)
    first = needle.first_exclusion(wins / items, model.true_rate)
    for horizon in (20, 200, 2000):
        kept = np.mean((first == 0) | (first > horizon))
        print(f"rate {rate}, {horizon} prompts: truth kept at every look in {100 * kept:.1f}%")
        assert kept >= 0.95


def test_naive_peeking_inflates_false_positives_and_the_sequence_does_not():
    """Null campaign (neither model better, strong prompt effects), looked at after every 20 comparisons up to 800."""
    model = null_campaign_model(concentration=4.0)
    wins, half_ties, items = simulate_campaigns(model, np.random.default_rng(2013), 400, 200, 4)
    ties = 2 * (half_ties - wins)
    looks = sequential.look_schedule(4, 200, every_items=20)
    naive = sequential.naive_peeking_first_exclusion(half_ties, items, wins + ties / 4, looks=looks)
    once = sequential.naive_peeking_first_exclusion(half_ties, items, wins + ties / 4, looks=[200])
    cs = needle.first_exclusion(half_ties / items, 0.5)
    naive_rate, once_rate, cs_rate = np.mean(naive > 0), np.mean(once > 0), np.mean(cs > 0)
    print(f"false positives: naive peeking {naive_rate:.3f}, one look {once_rate:.3f}, sequence {cs_rate:.3f}")
    assert naive_rate > 0.15
    assert once_rate < 0.09
    assert cs_rate <= 0.05
