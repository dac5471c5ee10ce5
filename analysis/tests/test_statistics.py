"""analysis.stats against independent references, hand-computed cases and bad input.

Plain pytest: no database. Each reference comparison asserts a maximum
absolute difference; the figures measured are in bench/README.md.
"""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import stats as needle
from analysis.stats.votes import A, B, TIE

# --- building votes frames -------------------------------------------------------------------------------------


def votes_frame(items, *, criterion="visual_appeal", k=None, model_a="base", model_b="tuned"):
    """A schema-valid frame from {item_id: (prompt_id, [winner, ...])}; raters are numbered per item."""
    rows = []
    for item_id, (prompt_id, winners) in items.items():
        for position, winner in enumerate(winners):
            rows.append(
                {
                    "item_id": item_id,
                    "prompt_id": prompt_id,
                    "category": f"category {prompt_id % 2}",
                    "challenge": "",
                    "criterion": criterion,
                    "model_a": model_a,
                    "model_b": model_b,
                    "rater_id": position + 1,
                    "winner": winner,
                    "a_on_left": position % 2 == 0,
                    "seconds_on_task": 3.0,
                    "votes_per_item": k if k is not None else len(winners),
                }
            )
    return pd.DataFrame(rows)


def random_campaign(rng, *, prompts=60, items_per_prompt=2, k=5, win=0.5, tie=0.15, models=("base", "tuned")):
    """Votes of a campaign with prompt-level random effects, as a frame (raters drawn from a pool of 40)."""
    n_items = prompts * items_per_prompt
    item = np.repeat(np.arange(n_items), k)
    prompt = item // items_per_prompt
    prompt_win = rng.beta(8 * win, 8 * (1 - win), prompts)[prompt] * (1 - tie)
    draw = rng.random(len(item))
    winner = np.where(draw < prompt_win, "b", np.where(draw < 1 - tie, "a", "tie"))
    rater = np.array([rng.choice(40, k, replace=False) for _ in range(n_items)]).ravel()
    pair = rng.integers(0, len(models) - 1, n_items)  # an item compares neighbours models[pair], models[pair + 1]
    model_a = np.asarray(models)[pair][item]
    model_b = np.asarray(models)[pair + 1][item]
    return pd.DataFrame(
        {
            "item_id": item + 1000,
            "prompt_id": prompt,
            "category": np.array(["Animals", "Food", "Outdoor Scenes"])[prompt % 3],
            "challenge": np.array(["Basic", "Quantity"])[prompt % 2],
            "criterion": "visual_appeal",
            "model_a": model_a,
            "model_b": model_b,
            "rater_id": rater,
            "winner": winner,
            "a_on_left": rng.random(len(item)) < 0.5,
            "seconds_on_task": rng.exponential(5.0, len(item)),
            "votes_per_item": k,
        }
    )


# --- hand-computable cases ------------------------------------------------------------------------------------


def test_majority_rule_on_hand_cases():
    counts = np.array(
        [
            # a, b, tie
            [1, 2, 0],  # k=3: b has 2 of 3 -> B
            [2, 0, 1],  # k=3: A
            [1, 1, 1],  # k=3: no majority -> tie
            [2, 2, 1],  # k=5: no majority -> tie
            [1, 2, 2],  # k=5: b and tie share the top: no majority -> tie
            [0, 3, 2],  # k=5: B
            [1, 1, 3],  # k=5: tie by majority
            [1, 2, 1],  # k=4: b has half, not more -> tie (stricter than plurality)
        ]
    )
    assert needle.majority_outcomes(counts).tolist() == [B, A, TIE, TIE, TIE, B, TIE, TIE]


def test_item_and_vote_level_shares_on_three_items_and_an_incomplete_one():
    votes = votes_frame(
        {
            1: (10, ["b", "b", "a"]),  # B wins
            2: (10, ["a", "a", "tie"]),  # A wins
            3: (11, ["b", "a", "tie"]),  # no majority: tie
            4: (12, ["b", "b"]),  # incomplete: 2 of k = 3 votes
        },
        k=3,
    )
    report = needle.win_rate_report(votes, rounds=200)
    assert (report.items.wins, report.items.ties, report.items.losses) == (1, 1, 1)
    assert report.items.win_rate == pytest.approx(1 / 3)
    assert report.items.tie_share == pytest.approx(1 / 3)
    assert report.items.loss_share == pytest.approx(1 / 3)
    assert report.items.win_rate_half_ties == pytest.approx(0.5)
    assert report.incomplete_items == 1
    assert report.prompts == 2
    # Vote level over the same (complete) items: b b a / a a tie / b a tie.
    assert (report.votes.wins, report.votes.ties, report.votes.losses) == (3, 2, 4)
    assert report.sign_test.p_value == 1.0

    with_incomplete = needle.win_rate_report(votes, rounds=200, include_incomplete=True)
    assert (with_incomplete.items.wins, with_incomplete.items.comparisons) == (2, 4)
    assert with_incomplete.votes.wins == 5
    assert with_incomplete.incomplete_items == 1


def test_report_names_the_models_and_uses_the_headline_interval():
    report = needle.win_rate_report(random_campaign(np.random.default_rng(1)), rounds=300)
    assert (report.model_a, report.model_b, report.criterion) == ("base", "tuned", "visual_appeal")
    assert needle.HEADLINE_INTERVAL == needle.headline_interval() == report.headline.method
    assert report.headline == report.bootstrap.bca
    assert report.headline.contains(report.items.win_rate)
    assert report.vote_wilson.method == "wilson_votes_naive"


def test_headline_falls_back_to_wilson_when_the_bootstrap_sees_no_variation():
    all_won = votes_frame({item: (item, ["b", "b", "a"]) for item in range(13)})
    report = needle.win_rate_report(all_won, rounds=300)
    assert report.bootstrap.percentile.low == report.bootstrap.percentile.high == 1.0
    assert report.headline == report.item_wilson and report.headline.low < 0.8
    single_prompt = votes_frame({1: (7, ["b", "b", "a"]), 2: (7, ["a", "a", "a"])})
    assert needle.win_rate_report(single_prompt, rounds=300).headline.method == "wilson"


def test_bootstrap_is_reproducible_and_seeded():
    votes = random_campaign(np.random.default_rng(2))
    first = needle.win_rate_report(votes, rounds=500, seed=7).bootstrap
    again = needle.win_rate_report(votes, rounds=500, seed=7).bootstrap
    other = needle.win_rate_report(votes, rounds=500, seed=8).bootstrap
    np.testing.assert_array_equal(first.replicates, again.replicates)
    assert first.percentile == again.percentile and first.bca == again.bca
    assert not np.array_equal(first.replicates, other.replicates)


def test_resampled_totals_move_whole_prompts():
    """Same draws as resampling prompt rows by index and summing: a prompt's items and votes travel together."""
    per_prompt = np.random.default_rng(3).integers(0, 9, size=(37, 3)).astype(float)
    totals = needle.resampled_totals(per_prompt, rounds=50, seed=11)
    draws = np.random.default_rng(11).integers(0, 37, size=(50, 37))  # one chunk: the same stream
    np.testing.assert_array_equal(totals, per_prompt[draws].sum(axis=1))


def test_breakdown_rows_match_reports_on_the_subsets():
    votes = random_campaign(np.random.default_rng(4))
    table = needle.win_rates_by(votes, "category", rounds=300, seed=5)
    assert table["comparisons"].sum() == needle.win_rate_report(votes, rounds=10).items.comparisons
    for row in table.itertuples():
        subset = needle.win_rate_report(votes[votes["category"] == row.category], rounds=300, seed=5)
        assert (row.wins, row.ties, row.losses) == (subset.items.wins, subset.items.ties, subset.items.losses)
        assert (row.low, row.high) == (subset.headline.low, subset.headline.high)
    by_challenge = needle.win_rates_by(votes, "challenge", rounds=100)
    assert set(by_challenge["challenge"]) == {"Basic", "Quantity"}


def test_criteria_are_never_pooled():
    appeal = votes_frame({1: (1, ["b", "b", "b"])})
    faithfulness = votes_frame({2: (1, ["a", "a", "a"])}, criterion="text_faithfulness")
    both = pd.concat([appeal, faithfulness], ignore_index=True)
    with pytest.raises(ValueError, match="pass criterion="):
        needle.win_rate_report(both)
    reports = needle.win_rate_reports(both, rounds=50)
    assert reports["visual_appeal"].items.wins == 1
    assert reports["text_faithfulness"].items.losses == 1
    assert set(needle.win_rates_by(both, "category", rounds=50)["criterion"]) == set(needle.CRITERIA)


# --- references ---------------------------------------------------------------------------------------------


def test_sign_test_matches_scipy_binomtest():
    cases = list(itertools.product(range(0, 41), range(0, 41))) + [(600, 520), (1000, 1100), (5, 95), (3117, 2883)]
    differences = [
        abs(needle.sign_test(wins, losses).p_value - stats.binomtest(wins, wins + losses, 0.5).pvalue)
        for wins, losses in cases
        if wins + losses > 0
    ]
    assert max(differences) < 1e-12
    assert needle.sign_test(0, 0).p_value == 1.0


def test_wilson_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    differences = []
    for n in (1, 2, 7, 30, 100, 1000, 123457):
        for successes in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
            for level in (0.9, 0.95, 0.99):
                ours = needle.wilson_interval(successes, n, level)
                low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
                differences += [abs(ours.low - low), abs(ours.high - high)]
    assert max(differences) < 1e-12


def test_fleiss_kappa_matches_statsmodels():
    from statsmodels.stats.inter_rater import fleiss_kappa

    votes = random_campaign(np.random.default_rng(6), prompts=80)
    agreement = needle.rater_agreement(votes)
    counts = np.array(
        [[(group == winner).sum() for winner in ("a", "b", "tie")] for _, group in votes.groupby("item_id")["winner"]]
    )
    assert agreement.fleiss_items == len(counts) and agreement.ratings_per_item == 5
    assert abs(agreement.fleiss_kappa - fleiss_kappa(counts, method="fleiss")) < 1e-12

    random_table = np.random.default_rng(7).multinomial(3, [0.5, 0.3, 0.2], size=500)
    assert abs(needle.fleiss_kappa(random_table) - fleiss_kappa(random_table, method="fleiss")) < 1e-12


def test_krippendorff_alpha_matches_the_krippendorff_package():
    import krippendorff

    rng = np.random.default_rng(8)
    votes = random_campaign(rng, prompts=80, k=5)
    votes = votes.drop(index=rng.choice(len(votes), 150, replace=False))  # unequal numbers of ratings
    agreement = needle.rater_agreement(votes, include_incomplete=True)
    reliability = votes.assign(value=votes["winner"].map({"a": 0, "b": 1, "tie": 2})).pivot(
        index="rater_id", columns="item_id", values="value"
    )
    reference = krippendorff.alpha(reliability_data=reliability.to_numpy(dtype=float), level_of_measurement="nominal")
    assert abs(agreement.krippendorff_alpha - reference) < 1e-12


def test_bradley_terry_matches_choix_and_a_direct_optimisation():
    import choix
    from scipy.optimize import minimize

    rng = np.random.default_rng(9)
    models = ("m0", "m1", "m2", "m3", "m4")
    votes = random_campaign(rng, prompts=200, items_per_prompt=3, k=3, models=models)
    result = needle.bradley_terry(votes, rounds=200)

    # choix on the duplicated battles: each battle twice, a tie as one win each way (= ties as half wins).
    index = {name: i for i, name in enumerate(models)}
    battles = []
    for first, second, winner in votes[["model_a", "model_b", "winner"]].itertuples(index=False):
        i, j = index[first], index[second]
        battles += {"a": [(i, j), (i, j)], "b": [(j, i), (j, i)], "tie": [(i, j), (j, i)]}[winner]
    reference = choix.ilsr_pairwise(len(models), battles, alpha=1e-9, tol=1e-12)
    reference -= reference.mean()
    ours = result.scores.reindex(models).to_numpy()
    assert np.max(np.abs(ours - reference)) < 1e-6

    # The same likelihood minimised by scipy on the win matrix (ties as halves).
    wins = np.zeros((5, 5))
    for (i, j) in battles:
        wins[i, j] += 0.5

    def negative_log_likelihood(scores):
        difference = scores[:, None] - scores[None, :]
        return np.sum(wins * np.logaddexp(0, -difference))

    direct = minimize(negative_log_likelihood, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    direct -= direct.mean()
    assert np.max(np.abs(needle.fit_bradley_terry(wins) - direct)) < 1e-5
    assert np.max(np.abs(ours - direct)) < 1e-5


def test_bradley_terry_exact_two_model_case():
    # Two models, 30 wins to 10: s1 - s0 = log(3) exactly; mean-zero anchor puts them at ±log(3)/2.
    scores = needle.fit_bradley_terry(np.array([[0.0, 10.0], [30.0, 0.0]]))
    np.testing.assert_allclose(scores, [-np.log(3) / 2, np.log(3) / 2], atol=1e-9)
    stacked = needle.fit_bradley_terry(np.stack([np.array([[0.0, 10.0], [30.0, 0.0]])] * 3))
    assert stacked.shape == (3, 2)


def test_bradley_terry_result_anchor_ranking_and_win_fractions():
    rng = np.random.default_rng(10)
    models = ("base", "tuned", "big")
    votes = random_campaign(rng, prompts=150, items_per_prompt=2, k=3, models=models)
    free = needle.bradley_terry(votes, rounds=300, seed=1)
    anchored = needle.bradley_terry(votes, rounds=300, seed=1, anchor="base")
    assert abs(free.scores.sum()) < 1e-9
    assert anchored.scores["base"] == 0
    assert anchored.ranking.loc["base", ["low", "high"]].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(
        (anchored.scores - anchored.scores["base"]).sort_index(), (free.scores - free.scores["base"]).sort_index()
    )
    assert list(free.ranking["rank"]) == [1, 2, 3]
    assert free.ranking["score"].is_monotonic_decreasing
    assert (free.ranking["low"] <= free.ranking["score"]).all() and (free.ranking["score"] <= free.ranking["high"]).all()
    fractions = free.win_fractions
    for first, second in itertools.permutations(fractions.index, 2):
        if not np.isnan(fractions.loc[first, second]):
            assert fractions.loc[first, second] + fractions.loc[second, first] == pytest.approx(1)
    assert free.battles == len(votes) and free.degenerate_rounds == 0
    item_level = needle.bradley_terry(votes, unit="item", rounds=100)
    assert item_level.battles == votes["item_id"].nunique()


def test_bradley_terry_refuses_unidentified_scores():
    # "tuned" won every battle: its maximum-likelihood score is infinite.
    votes = votes_frame({1: (1, ["b", "b", "b"]), 2: (2, ["b", "b", "b"])})
    with pytest.raises(ValueError, match="not identified"):
        needle.bradley_terry(votes, rounds=10)


def test_bca_matches_scipy_bootstrap_on_iid_votes():
    """One prompt = one item = one vote: the prompt-clustered bootstrap is the ordinary one."""
    rng = np.random.default_rng(12)
    n = 2000
    winners = rng.choice(["b", "a", "tie"], size=n, p=[0.55, 0.35, 0.10])
    votes = votes_frame({i: (i, [winner]) for i, winner in enumerate(winners)})
    rounds = 20_000
    ours = needle.win_rate_report(votes, rounds=rounds, seed=13).bootstrap
    won = (winners == "b").astype(float)
    reference = {
        method: stats.bootstrap(
            (won,), np.mean, method=method, n_resamples=rounds, batch=2000, rng=np.random.default_rng(14)
        ).confidence_interval
        for method in ("BCa", "percentile")
    }
    # Monte Carlo error of a 2.5% quantile from 20,000 resamples here is ~0.0003 per side; allow ~6 of them.
    tolerance = 0.002
    assert abs(ours.bca.low - reference["BCa"].low) < tolerance
    assert abs(ours.bca.high - reference["BCa"].high) < tolerance
    assert abs(ours.percentile.low - reference["percentile"].low) < tolerance
    assert abs(ours.percentile.high - reference["percentile"].high) < tolerance


def test_position_bias_per_rater():
    # Rater 1 votes B and rater 2 votes A on every item; both always see A on the right.
    votes = votes_frame({item: (item, ["b", "a"]) for item in range(20)}, k=2).assign(a_on_left=False)
    table = needle.position_bias(votes).set_index("rater_id")
    assert table.loc[1, "left_share"] == 1.0 and table.loc[1, "side_votes"] == 20  # B was on the left
    assert table.loc[1, "p_value"] == pytest.approx(stats.binomtest(20, 20, 0.5).pvalue, abs=1e-15)
    assert table.loc[2, "left_share"] == 0.0


def test_majority_agreement_on_hand_cases():
    votes = votes_frame({1: (1, ["b", "b", "a"]), 2: (2, ["a", "a", "a"]), 3: (3, ["a", "b", "tie"])})
    agreement = needle.rater_agreement(votes)
    assert agreement.majority_items == 2 and agreement.items_without_majority == 1
    assert agreement.majority_agreement == pytest.approx(5 / 6)


# --- planning -----------------------------------------------------------------------------------------------


def test_half_width_planner_is_the_smallest_n():
    from analysis.stats.intervals import wilson_half_width

    for target, share in [(0.05, 0.5), (0.03, 0.6), (0.01, 0.8), (0.1, 0.95)]:
        n = needle.comparisons_for_half_width(target, share)
        assert wilson_half_width(share, n) <= target < wilson_half_width(share, n - 1)
    assert needle.comparisons_for_half_width(0.05, 0.5, design_effect=2.0) == 2 * needle.comparisons_for_half_width(
        0.05, 0.5
    )
    n = needle.comparisons_for_half_width(0.03, 0.6)
    assert needle.additional_comparisons_needed(60, 100, 0.03) == n - 100
    assert needle.additional_comparisons_needed(6000, 10000, 0.03) == 0


def test_sign_test_power_matches_a_direct_sum_over_binomtest():
    for n, p1 in [(10, 0.7), (57, 0.6), (200, 0.55)]:
        rejects = np.array([stats.binomtest(x, n, 0.5).pvalue <= 0.05 for x in range(n + 1)])
        direct = stats.binom.pmf(np.arange(n + 1), n, p1)[rejects].sum()
        assert abs(float(needle.sign_test_power(n, p1)) - direct) < 1e-12


def test_power_planner_is_monotone_safe():
    for p1, power in [(0.6, 0.8), (0.55, 0.9), (0.7, 0.8), (0.35, 0.8)]:
        n = needle.comparisons_for_power(p1, power)
        assert needle.sign_test_power(n - 1, p1) < power
        assert (needle.sign_test_power(np.arange(n, 2 * n + 1), p1) >= power).all()
    # p1 = 0.6, 80%: the normal approximation says ~194; the exact power first reaches 0.8 at n = 199 but dips
    # below it again up to n = 209 (0.798), so the monotone-safe answer is 210.
    assert needle.sign_test_power(199, 0.6) >= 0.8 > needle.sign_test_power(209, 0.6)
    assert needle.comparisons_for_power(0.6, 0.8) == 210
    assert needle.comparisons_for_power(0.6, 0.8, tie_share=0.2) == np.ceil(needle.comparisons_for_power(0.6, 0.8) / 0.8)


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def good_votes():
    return votes_frame({1: (1, ["b", "a", "b"]), 2: (2, ["a", "tie", "a"])})


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda v: v.drop(columns=["winner"]), r"missing column\(s\) \['winner'\]"),
        (lambda v: v.drop(columns=["a_on_left", "rater_id"]), r"missing column\(s\) \['rater_id', 'a_on_left'\]"),
        (lambda v: v.assign(winner=["b", "a", "left", "a", "tie", "a"]), r"unknown value\(s\) \['left'\]"),
        (lambda v: v.assign(winner=["b", "a", None, "a", "tie", "a"]), r"unknown value\(s\) \['<missing>'\]"),
        (lambda v: v.iloc[:0], "empty"),
        (lambda v: v.assign(criterion="beauty"), r"unknown value\(s\) \['beauty'\]"),
        (lambda v: v.assign(item_id=v["item_id"].astype(float)), "'item_id' must hold integers"),
        (lambda v: v.assign(a_on_left="yes"), "'a_on_left' must be boolean"),
        (lambda v: v.assign(votes_per_item=0), "at least 1"),
        (lambda v: v.assign(seconds_on_task=-1.0), "negative"),
        (lambda v: v.assign(model_b="base"), "with itself"),
        (lambda v: v.assign(prompt_id=[1, 1, 3, 2, 2, 2]), "item 1 disagree on 'prompt_id'"),
        (lambda v: v.assign(rater_id=[1, 1, 2, 1, 2, 3]), "voted more than once on item 1"),
        (lambda v: v.values, "must be a pandas DataFrame"),
    ],
)
def test_bad_input_raises_a_clear_value_error(good_votes, spoil, message):
    with pytest.raises(ValueError, match=message):
        needle.validate_votes(spoil(good_votes))
    with pytest.raises(ValueError, match=message):
        needle.win_rate_report(spoil(good_votes))


def test_other_entry_points_reject_bad_input(good_votes):
    with pytest.raises(ValueError, match="missing column"):
        needle.rater_agreement(good_votes.drop(columns=["item_id"]))
    with pytest.raises(ValueError, match="missing column"):
        needle.position_bias(good_votes.drop(columns=["a_on_left"]))
    with pytest.raises(ValueError, match="empty"):
        needle.bradley_terry(good_votes.iloc[:0])
    with pytest.raises(ValueError, match="one model pair"):
        needle.win_rate_report(
            pd.concat([good_votes, good_votes.assign(item_id=good_votes["item_id"] + 100, model_b="other")])
        )
    with pytest.raises(ValueError, match="unknown criterion"):
        needle.win_rate_report(good_votes, "beauty")
    with pytest.raises(ValueError, match="by must be"):
        needle.win_rates_by(good_votes, "prompt")
    with pytest.raises(ValueError, match="no complete items"):
        needle.win_rate_report(good_votes.assign(votes_per_item=5))
    with pytest.raises(ValueError, match="at least one comparison"):
        needle.wilson_interval(0, 0)
