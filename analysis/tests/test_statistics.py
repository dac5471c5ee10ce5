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
from analysis.stats.votes import TIE, A, B

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


def per_prompt_sums(votes):
    """Per prompt: items B won, items won counting ties as halves, their squares' sum, items (an independent pandas count)."""
    items = votes.groupby("item_id").agg(
        prompt=("prompt_id", "first"),
        b=("winner", lambda w: (w == "b").sum()),
        a=("winner", lambda w: (w == "a").sum()),
        n=("winner", "size"),
    )
    items["won"] = (2 * items["b"] > items["n"]).astype(float)
    items["tied"] = ((2 * items["b"] <= items["n"]) & (2 * items["a"] <= items["n"])).astype(float)
    items["half"] = items["won"] + items["tied"] / 2
    items["half_squared"] = items["half"] ** 2
    sums = items.groupby("prompt").agg(
        won=("won", "sum"), half=("half", "sum"), half_squared=("half_squared", "sum"), n=("won", "size")
    )
    return sums


def test_report_names_the_models_and_uses_the_clustered_score_interval():
    votes = random_campaign(np.random.default_rng(1))
    report = needle.win_rate_report(votes, rounds=300)
    assert (report.model_a, report.model_b, report.criterion) == ("base", "tuned", "visual_appeal")
    assert needle.HEADLINE_INTERVAL == needle.headline_interval() == report.headline.method == "cluster_score"
    sums = per_prompt_sums(votes)
    assert report.headline == report.interval == needle.clustered_score_interval(sums["won"], sums["n"])
    assert report.interval_half_ties == needle.clustered_score_interval(sums["half"], sums["n"], sums["half_squared"])
    assert report.headline.contains(report.items.win_rate) and report.interval_note == ""
    assert report.vote_wilson.method == "wilson_votes_naive"
    assert needle.win_rate_report(votes, rounds=0).bootstrap is None  # rounds=0: no comparison bootstrap


def test_fewer_than_six_prompts_get_no_interval_but_a_reason():
    four_prompts = votes_frame({item: (item % 4, ["b", "b", "a"]) for item in range(12)})
    report = needle.win_rate_report(four_prompts, rounds=0)
    assert report.interval is None and report.interval_half_ties is None and report.headline is None
    assert report.interval_note.startswith("no interval: 4 prompts") and "from 6 prompts on" in report.interval_note
    single_prompt = votes_frame({1: (7, ["b", "b", "a"]), 2: (7, ["a", "a", "a"])})
    assert needle.win_rate_report(single_prompt, rounds=0).interval_note.startswith("no interval: 1 prompt,")
    table = needle.win_rates_by(four_prompts, "category", rounds=0)
    assert table["low"].isna().all() and (table["interval_method"] == "").all()
    assert table["interval_note"].str.startswith("no interval: 2 prompts").all()


def test_all_won_still_gets_an_interval_that_says_how_uncertain_it_is():
    all_won = votes_frame({item: (item, ["b", "b", "a"]) for item in range(13)})  # 13 prompts, one item each
    interval = needle.win_rate_report(all_won, rounds=0).interval
    assert interval.high == 1.0 and interval.low == pytest.approx(13 / (13 + stats.norm.ppf(0.975) ** 2), abs=1e-9)


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
        assert (row.low, row.high, row.interval_method) == (subset.headline.low, subset.headline.high, "cluster_score")
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


def test_clustered_score_interval_with_one_item_per_prompt_is_wilson():
    from statsmodels.stats.proportion import proportion_confint

    differences = []
    for n in (6, 12, 30, 200, 5000):
        for successes in sorted({1, n // 3, n // 2, n - 1}):
            for level in (0.9, 0.95, 0.99):
                ones = np.r_[np.ones(successes), np.zeros(n - successes)]
                ours = needle.clustered_score_interval(ones, np.ones(n), level=level)
                low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
                z2 = stats.norm.ppf(1 - (1 - level) / 2) ** 2
                # Wilson's, except where every item won could not reject theta from above (and all lost from below):
                # that tail is empty, and the other gets the whole 1 - level (checked in the next test).
                if high < n / (n + z2):
                    differences.append(abs(ours.high - high))
                if low > z2 / (n + z2):
                    differences.append(abs(ours.low - low))
    assert len(differences) > 40 and max(differences) < 1e-9


def satterthwaite_reference(wins, sizes, theta):
    """The score test's variance and degrees of freedom at theta, written out from the one-way ANOVA (0/1 scores)."""
    wins, sizes = np.asarray(wins, float), np.asarray(sizes, float)
    m, total = len(wins), sizes.sum()
    estimate = wins.sum() / total
    msb = (sizes * (wins / sizes - estimate) ** 2).sum() / (m - 1)
    msw = (wins - wins**2 / sizes).sum() / (total - m)
    n0 = (total - (sizes**2).sum() / total) / (m - 1)
    between = (msb - msw) / n0
    weight = (sizes**2).sum() / total - 1
    variance = theta * (1 - theta) + weight * between
    expected_within = theta * (1 - theta) - between
    expected_between = expected_within + n0 * between
    spread = 2 / n0**2 * (expected_between**2 / (m - 1) + expected_within**2 / (total - m))
    return estimate, variance / total, max(m - 1, 2 * variance**2 / (weight**2 * spread))


def test_clustered_score_interval_ends_are_where_the_score_test_stops_rejecting():
    wins, sizes = [3, 1, 4, 2, 0, 3, 2], [4, 3, 5, 4, 3, 4, 4]
    interval = needle.clustered_score_interval(wins, sizes)
    assert needle.MIN_PROMPTS <= len(wins)
    for end, sign in ((interval.low, 1), (interval.high, -1)):
        estimate, variance, df = satterthwaite_reference(wins, sizes, end)
        assert sign * (estimate - end) / np.sqrt(variance) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-7)
    parts = needle.variance_components(wins, sizes)
    assert parts.degrees_of_freedom(0.5) == pytest.approx(satterthwaite_reference(wins, sizes, 0.5)[2])
    assert np.isinf(needle.variance_components([1, 0, 1], [1, 1, 1]).degrees_of_freedom(0.5))  # one item per prompt


def test_near_one_the_empty_upper_tail_gives_its_share_to_the_lower_one():
    # 10 prompts x 4 items, 38 won: every theta above the all-won data's lower end (about 0.88) could never be
    # rejected from above, so the upper end is where the one-sided 95% test stops rejecting.
    wins, sizes = [4, 4, 4, 3, 4, 4, 4, 3, 4, 4], [4] * 10
    interval = needle.clustered_score_interval(wins, sizes)
    all_won = needle.clustered_score_interval(sizes, sizes)
    assert all_won.high == 1.0 and interval.high > all_won.low
    estimate, variance, df = satterthwaite_reference(wins, sizes, interval.high)
    assert (interval.high - estimate) / np.sqrt(variance) == pytest.approx(stats.t.ppf(0.95, df), abs=1e-7)


def test_variance_components_match_a_statsmodels_anova():
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    rng = np.random.default_rng(30)
    sizes = rng.integers(1, 7, size=12)
    prompt = np.repeat(np.arange(12), sizes)
    scores = rng.choice([0.0, 0.5, 1.0], size=len(prompt), p=[0.3, 0.2, 0.5])  # ties as halves
    table = sm.stats.anova_lm(ols("score ~ C(prompt)", data=pd.DataFrame({"score": scores, "prompt": prompt})).fit())
    mean_between, mean_within = table.loc["C(prompt)", "mean_sq"], table.loc["Residual", "mean_sq"]
    total = len(scores)
    n0 = (total - (sizes**2).sum() / total) / 11
    parts = needle.variance_components(np.bincount(prompt, scores), sizes, np.bincount(prompt, scores**2))
    assert parts.between == pytest.approx((mean_between - mean_within) / n0, abs=1e-12)
    assert parts.estimate == pytest.approx(scores.mean(), abs=1e-12)
    assert parts.estimate * (1 - parts.estimate) - parts.deficit == pytest.approx(scores.var(), abs=1e-12)


def test_the_variance_formula_and_the_between_estimate_hold_in_simulation():
    """Prompts' win chances Beta(2, 3): theta 0.4, between-prompt variance 0.04; 8 prompts of unequal size."""
    rng = np.random.default_rng(31)
    sizes = np.array([1, 2, 3, 4, 5, 6, 3, 4], dtype=float)
    chance = rng.beta(2, 3, size=(40_000, 8))
    parts = needle.variance_components(
        rng.binomial(sizes.astype(int), chance).astype(float), np.broadcast_to(sizes, chance.shape)
    )
    total, weight = sizes.sum(), (sizes**2).sum() / sizes.sum() - 1
    assert parts.between.mean() == pytest.approx(0.04, abs=3 * parts.between.std() / np.sqrt(40_000))
    assert parts.estimate.var() == pytest.approx((0.4 * 0.6 + weight * 0.04) / total, rel=0.03)


def test_quantile_monte_carlo_error_matches_the_spread_between_seeds():
    from analysis.stats.intervals import quantile_mc_error

    rng = np.random.default_rng(32)
    replicates = rng.standard_normal((600, 2000))  # 600 bootstraps of 2,000 rounds each
    quantiles = np.quantile(replicates, [0.025, 0.975], axis=1)
    estimated = np.array([quantile_mc_error(row, [0.025, 0.975]) for row in replicates])
    for side in (0, 1):
        assert estimated[:, side].mean() == pytest.approx(quantiles[side].std(), rel=0.15)


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


def faithfulness_votes(rng, *, items=150, k=3, p=(0.3, 0.3, 0.25, 0.15)):
    """Text-faithfulness votes: answers a, b, both, neither (item-level preferences so raters agree somewhat)."""
    rows = []
    for item in range(items):
        weights = rng.dirichlet(4 * np.asarray(p))
        for rater in rng.choice(30, k, replace=False):
            answer = str(rng.choice(["a", "b", "both", "neither"], p=weights))
            rows.append(
                {
                    "item_id": item,
                    "prompt_id": item // 3,
                    "category": "",
                    "challenge": "",
                    "criterion": "text_faithfulness",
                    "model_a": "base",
                    "model_b": "tuned",
                    "rater_id": int(rater),
                    "winner": answer if answer in ("a", "b") else "tie",
                    "a_on_left": bool(rng.random() < 0.5),
                    "seconds_on_task": 4.0,
                    "votes_per_item": k,
                    "answer": answer,
                }
            )
    return pd.DataFrame(rows)


def test_agreement_keeps_both_and_neither_apart_and_matches_the_references_with_four_categories():
    import krippendorff
    from statsmodels.stats.inter_rater import fleiss_kappa

    rng = np.random.default_rng(21)
    votes = faithfulness_votes(rng)
    agreement = needle.rater_agreement(votes)
    assert agreement.categories == ("a", "b", "both", "neither")
    counts = np.array(
        [
            [(group == answer).sum() for answer in ("a", "b", "both", "neither")]
            for _, group in votes.groupby("item_id")["answer"]
        ]
    )
    assert abs(agreement.fleiss_kappa - fleiss_kappa(counts, method="fleiss")) < 1e-12

    unequal = votes.drop(index=rng.choice(len(votes), 60, replace=False))
    codes = {"a": 0, "b": 1, "both": 2, "neither": 3}
    reliability = unequal.assign(value=unequal["answer"].map(codes)).pivot(
        index="rater_id", columns="item_id", values="value"
    )
    reference = krippendorff.alpha(reliability_data=reliability.to_numpy(dtype=float), level_of_measurement="nominal")
    assert abs(needle.rater_agreement(unequal, include_incomplete=True).krippendorff_alpha - reference) < 1e-12

    # Read as ties, "both" and "neither" would agree with each other: the pooled numbers differ.
    pooled = needle.rater_agreement(votes.drop(columns=["answer"]))
    assert pooled.categories == ("a", "b", "tie")
    pooled_counts = np.column_stack([counts[:, 0], counts[:, 1], counts[:, 2] + counts[:, 3]])
    assert abs(pooled.fleiss_kappa - fleiss_kappa(pooled_counts, method="fleiss")) < 1e-12
    assert abs(pooled.fleiss_kappa - agreement.fleiss_kappa) > 0.01
    # The win rate is unchanged: both and neither are ties there.
    assert needle.win_rate_report(votes).items == needle.win_rate_report(votes.drop(columns=["answer"])).items


def test_both_against_neither_is_disagreement():
    # Every item: two raters say "both are faithful", one says "neither is".
    votes = faithfulness_votes(np.random.default_rng(0), items=4)
    votes["answer"] = np.tile(["both", "both", "neither"], 4)
    votes["winner"] = "tie"
    votes.loc[votes["item_id"] == 3, "answer"] = ["a", "a", "b"]
    votes.loc[votes["item_id"] == 3, "winner"] = ["a", "a", "b"]
    agreement = needle.rater_agreement(votes)
    pooled = needle.rater_agreement(votes.drop(columns=["answer"]))
    assert agreement.fleiss_kappa < pooled.fleiss_kappa  # pooled, the first three items look unanimous
    assert agreement.majority_agreement == pooled.majority_agreement  # the majority outcome is the win rate's


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
    for i, j in battles:
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
    assert (free.ranking["low"] <= free.ranking["score"]).all() and (
        free.ranking["score"] <= free.ranking["high"]
    ).all()
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
    assert needle.comparisons_for_power(0.6, 0.8, tie_share=0.2) == np.ceil(
        needle.comparisons_for_power(0.6, 0.8) / 0.8
    )


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
        (
            lambda v: v.assign(answer=["b", "a", "maybe", "a", "tie", "a"]),
            r"'answer' has unknown value\(s\) \['maybe'\]",
        ),
        (lambda v: v.assign(answer=["b", "a", "both", "a", "neither", "b"]), "answer 'both' contradicts winner 'b'"),
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
