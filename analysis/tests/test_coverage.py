"""Coverage simulation: does the headline interval cover the true win rate 95% of the time?

Campaigns are drawn from a known truth, each gets the headline interval
(prompt-clustered bootstrap, BCa), and we count how often it covers the truth.
With 2,000 campaigns the Monte Carlo standard error of a 95% coverage is
0.5 percentage points, so the 93.5-96.5% band is three of them either side.

Campaigns are simulated as per-prompt counts (numpy, no frames) and go through
the same function the report uses on them, ``cluster_bootstrap_ratio``; one
test checks that a frame built from such a campaign gives the report exactly
that interval.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import stats as needle

CAMPAIGNS = 2000
ROUNDS = 1000


def headline_coverage(wins_per_prompt, items_per_prompt, truth):
    covered = 0
    for campaign, (wins, items) in enumerate(zip(wins_per_prompt, items_per_prompt, strict=True)):
        result = needle.cluster_bootstrap_ratio(wins, items, rounds=ROUNDS, seed=campaign)
        covered += result.bca.contains(truth)
    return covered / len(wins_per_prompt)


def clustered_campaigns(rng, *, prompts, items_per_prompt, votes_per_item, mean_vote_win, concentration):
    """Each prompt's chance that a vote picks B is Beta(mean * c, (1 - mean) * c); votes are a/b only.

    Returns B's votes per item (campaigns, prompts, items) and the true item-level win rate,
    P(a majority of k votes for B) = the beta-binomial tail.
    """
    alpha, beta = mean_vote_win * concentration, (1 - mean_vote_win) * concentration
    prompt_win = rng.beta(alpha, beta, size=(CAMPAIGNS, prompts, 1))
    b_votes = rng.binomial(votes_per_item, np.broadcast_to(prompt_win, (CAMPAIGNS, prompts, items_per_prompt)))
    truth = stats.betabinom.sf(votes_per_item // 2, votes_per_item, alpha, beta)
    return b_votes, truth


def test_headline_interval_is_the_clustered_bca_bootstrap():
    assert needle.HEADLINE_INTERVAL == needle.headline_interval() == "cluster_bootstrap_bca"


def test_iid_campaigns_are_covered_at_the_nominal_level():
    """(a) 400 prompts, one item each, one vote each: B wins 55%, ties 10%, loses 35%."""
    rng = np.random.default_rng(2024)
    wins = (rng.random((CAMPAIGNS, 400)) < 0.55).astype(float)  # the other 45% are ties and losses
    coverage = headline_coverage(wins, np.ones_like(wins), 0.55)
    print(f"iid coverage of the headline interval: {coverage:.4f}")
    assert 0.935 <= coverage <= 0.965


def test_prompt_random_effects_are_covered_and_naive_wilson_is_not():
    """(b) 200 prompts x 4 items x 5 votes; prompts differ strongly in how much raters prefer B."""
    rng = np.random.default_rng(2025)
    b_votes, truth = clustered_campaigns(
        rng, prompts=200, items_per_prompt=4, votes_per_item=5, mean_vote_win=0.6, concentration=4
    )
    item_wins = (2 * b_votes > 5).sum(axis=2).astype(float)
    coverage = headline_coverage(item_wins, np.full(item_wins.shape, 4.0), truth)

    # The naive interval: Wilson over votes as if independent, for the vote-level win share (truth 0.6).
    votes = 200 * 4 * 5
    naive = np.mean([needle.wilson_interval(int(b), votes).contains(0.6) for b in b_votes.sum(axis=(1, 2))])
    items = 200 * 4
    item_wilson = np.mean([needle.wilson_interval(int(w), items).contains(truth) for w in item_wins.sum(axis=1)])
    print(f"clustered: headline {coverage:.4f}, item-level Wilson {item_wilson:.4f}, vote-level Wilson {naive:.4f}")
    assert 0.935 <= coverage <= 0.965
    assert naive < 0.90
    assert item_wilson < 0.90


def test_few_prompts_and_a_skewed_win_rate_are_covered():
    """(c) Where the percentile interval drifts: 50 prompts, true item-level win rate 0.82."""
    rng = np.random.default_rng(2026)
    b_votes, truth = clustered_campaigns(
        rng, prompts=50, items_per_prompt=4, votes_per_item=5, mean_vote_win=0.75, concentration=4
    )
    item_wins = (2 * b_votes > 5).sum(axis=2).astype(float)
    coverage = headline_coverage(item_wins, np.full(item_wins.shape, 4.0), truth)
    print(f"50 prompts, win rate {truth:.3f}: headline coverage {coverage:.4f}")
    assert 0.935 <= coverage <= 0.965


@pytest.mark.parametrize("campaign", [0, 1])
def test_the_report_gives_a_simulated_campaign_the_same_interval(campaign):
    rng = np.random.default_rng(campaign)
    b_votes = rng.binomial(5, np.broadcast_to(rng.beta(2.4, 1.6, size=(30, 1)), (30, 4)))  # prompts x items
    prompt, seed_index, position = np.indices((30, 4, 5)).reshape(3, -1)
    winner = np.where(position < b_votes[prompt, seed_index], "b", "a")
    votes = pd.DataFrame(
        {
            "item_id": prompt * 4 + seed_index,
            "prompt_id": prompt,
            "category": "",
            "challenge": "",
            "criterion": "visual_appeal",
            "model_a": "base",
            "model_b": "tuned",
            "rater_id": position,
            "winner": winner,
            "a_on_left": position % 2 == 0,
            "seconds_on_task": np.nan,
            "votes_per_item": 5,
        }
    )
    report = needle.win_rate_report(votes, rounds=ROUNDS, seed=campaign)
    direct = needle.cluster_bootstrap_ratio((2 * b_votes > 5).sum(axis=1), np.full(30, 4), rounds=ROUNDS, seed=campaign)
    assert report.headline == direct.bca
