"""Prediction-powered win rates (analysis.stats.ppi): against ppi_py, and by coverage simulation with four judges.

Reference: ppi-python 0.2.3 (``ppi_py.ppi_mean_ci`` with power tuning, ``lam=None``, and
``ppi_mean_pointestimate``), on the same data. Simulation: items whose rater preference
depends on a prompt effect and an item effect (``analysis.stats.simulation.judged_model``),
humans vote (k = 5) on a random quarter of the items, the judge scores all of them.
"""

import numpy as np
import pytest

from analysis import stats as needle
from analysis.stats.simulation import JUDGES, judge_scores, judged_model, simulate_judged


def judged_data(seed, *, rate=0.6, prompts=150, items=4, fraction=0.25, kind="good"):
    model = judged_model(rate)
    rng = np.random.default_rng(seed)
    human, latent = simulate_judged(model, rng, 1, prompts, items)
    judge = judge_scores(kind, model, latent, rng)
    prompt = np.broadcast_to(np.arange(prompts)[:, None], (prompts, items)).ravel()
    labelled = rng.random(prompts * items) < fraction
    return model, human.ravel(), judge.ravel(), prompt, labelled


@pytest.mark.parametrize("kind", JUDGES)
def test_item_level_ppi_matches_ppi_py(kind):
    ppi_py = pytest.importorskip("ppi_py")
    _, human, judge, _, labelled = judged_data(5, kind=kind)
    y, yhat, yhat_u = human[labelled], judge[labelled], judge[~labelled]
    result = needle.prediction_powered_win_rate(y, yhat, yhat_u)
    low, high = ppi_py.ppi_mean_ci(y, yhat, yhat_u, alpha=0.05)
    assert result.estimate == pytest.approx(float(ppi_py.ppi_mean_pointestimate(y, yhat, yhat_u)[0]), abs=1e-12)
    assert (result.interval.low, result.interval.high) == pytest.approx((float(low[0]), float(high[0])), abs=1e-12)
    for lam in (0.0, 0.5, 1.0):
        fixed = needle.prediction_powered_win_rate(y, yhat, yhat_u, lam=lam)
        low, high = ppi_py.ppi_mean_ci(y, yhat, yhat_u, alpha=0.05, lam=lam)
        assert (fixed.interval.low, fixed.interval.high) == pytest.approx((float(low[0]), float(high[0])), abs=1e-12)


def test_clustered_ppi_with_one_item_per_prompt_is_close_to_ppi_py():
    """Singleton prompts: the sandwich differs from ppi_py only by m / (m - 1) and lambda's exact minimiser."""
    _, human, judge, _, labelled = judged_data(6, items=1, prompts=1200)
    prompt = np.arange(len(human))
    items = needle.prediction_powered_win_rate(human[labelled], judge[labelled], judge[~labelled])
    clustered = needle.prediction_powered_win_rate(
        human[labelled],
        judge[labelled],
        judge[~labelled],
        prompts_labelled=prompt[labelled],
        prompts_unlabelled=prompt[~labelled],
    )
    assert clustered.interval.method == needle.PPI and items.interval.method == needle.PPI_ITEMS
    assert clustered.lam == pytest.approx(items.lam, abs=0.05)
    assert clustered.estimate == pytest.approx(items.estimate, abs=2e-3)
    assert clustered.interval.half_width == pytest.approx(items.interval.half_width, rel=0.01)


def test_the_judges_agreement_and_lambda_are_reported():
    _, human, judge, prompt, labelled = judged_data(7)
    good = needle.prediction_powered_win_rate(
        human[labelled],
        judge[labelled],
        judge[~labelled],
        prompts_labelled=prompt[labelled],
        prompts_unlabelled=prompt[~labelled],
    )
    assert 0.6 < good.agreement < 0.95 and 0.5 < good.correlation < 0.8
    assert 0.5 < good.lam <= 1
    assert good.interval.half_width < 0.85 * good.humans_only.half_width
    assert good.effective_labelled > 1.3 * good.labelled
    _, human, judge, prompt, labelled = judged_data(7, kind="inverted")
    inverted = needle.prediction_powered_win_rate(
        human[labelled],
        judge[labelled],
        judge[~labelled],
        prompts_labelled=prompt[labelled],
        prompts_unlabelled=prompt[~labelled],
    )
    assert inverted.lam == 0 and inverted.interval == inverted.humans_only.__class__(
        inverted.humans_only.low, inverted.humans_only.high, 0.95, needle.PPI
    )
    assert inverted.agreement < 0.4


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        needle.prediction_powered_win_rate([0, 2], [0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="one score per labelled"):
        needle.prediction_powered_win_rate([0, 1], [0.1], [0.3])
    with pytest.raises(ValueError, match="both"):
        needle.prediction_powered_win_rate([0, 1], [0.1, 0.2], [0.3], prompts_labelled=[1, 2])
    with pytest.raises(ValueError, match="lam"):
        needle.prediction_powered_win_rate([0, 1], [0.1, 0.2], [0.3], lam=2)


CAMPAIGNS = 1500


def coverage_run(kind, rate, seed, *, prompts=100, items=4, fraction=0.25):
    model = judged_model(rate)
    rng = np.random.default_rng(seed)
    human, latent = simulate_judged(model, rng, CAMPAIGNS, prompts, items)
    judge = judge_scores(kind, model, latent, rng)
    prompt = np.broadcast_to(np.arange(prompts)[:, None], (prompts, items)).ravel()
    covered, humans_covered, ratio = [], [], []
    for campaign in range(CAMPAIGNS):
        y, j = human[campaign].ravel(), judge[campaign].ravel()
        labelled = rng.random(len(y)) < fraction
        result = needle.prediction_powered_win_rate(
            y[labelled],
            j[labelled],
            j[~labelled],
            prompts_labelled=prompt[labelled],
            prompts_unlabelled=prompt[~labelled],
        )
        covered.append(result.interval.contains(model.true_rate))
        humans_covered.append(result.humans_only.contains(model.true_rate))
        ratio.append(result.interval.half_width / result.humans_only.half_width)
    return model, np.mean(covered), np.mean(humans_covered), np.mean(ratio)


@pytest.mark.parametrize(
    "kind, rate", [("good", 0.6), ("useless", 0.6), ("biased", 0.6), ("inverted", 0.8), ("good", 0.5)]
)
def test_coverage_holds_whatever_the_judge(kind, rate):
    """1,500 campaigns of 100 prompts x 4 items, humans on a random quarter (~100 items): MC error of 95% is 0.56 points."""
    _, covered, humans, ratio = coverage_run(kind, rate, [13, JUDGES.index(kind), int(100 * rate)])
    print(
        f"{kind} judge, rate {rate}: PPI coverage {100 * covered:.1f}%, humans only {100 * humans:.1f}%, width ratio {ratio:.3f}"
    )
    assert 0.935 <= covered <= 0.965
    assert ratio <= 1.0
    if kind == "good":
        assert ratio < 0.85
