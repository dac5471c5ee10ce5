"""The mini-Emu loop at CI scale, with the shipped base: curated quality-tuning beats the base on visual appeal.

Everything goes through Needle: candidate collections, the funnel with the world CLIP and an aesthetic head trained
from reviewers' ratings, the review pages (simulated reviewers sign in and decide over HTTP), the quality-tuning
trainer subprocess, a checkpoint campaign, and campaigns voted by simulated raters through invite links on a live
server. The raters judge pixels only; the assertion is on their verdict and on the hidden ground truth.
"""

import pytest
from django.core.cache import cache

from analysis import services as analysis_services
from annotation.models import Campaign, Rater, Vote
from evalsite import mini_emu

pytestmark = pytest.mark.django_db(transaction=True)


def test_quality_tuning_on_curated_needles_beats_the_base_on_appeal_through_the_whole_platform(
    live_server, settings, tmp_path, monkeypatch
):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    settings.NEEDLE_VOTE_RATE_LIMIT_PER_MINUTE = 100_000
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cache.clear()
    loop = mini_emu.Loop(live_server.url, "ci", log=lambda *a: None, workdir=tmp_path / "world")

    results = loop.reproduce()
    print(mini_emu.summary_table(results))  # the figures, for `pytest -s`

    tuned = results["tuned_vs_base"]
    appeal = next(row for row in tuned["win_rates"] if row["criterion"] == "visual_appeal")
    assert appeal["model_a"] == mini_emu.BASE_MODEL and appeal["compared"] > 0 and appeal["win_rate"] is not None
    # The direction, on the hidden ground truth (deterministic: seeded tuning on one thread). The raters' win rate is
    # not asserted: with today's under-trained base and 12 prompts its interval still includes 50% (docs/mini-emu.md).
    truth = tuned["ground_truth"]
    assert truth[appeal["model_b"]]["appeal"] > truth[mini_emu.BASE_MODEL]["appeal"], truth
    # Every vote came through an invite link from a simulated rater, and is recorded as simulated.
    assert Vote.objects.exists()
    assert not Rater.objects.filter(simulated=False).exists()
    campaign = Campaign.objects.get(name=tuned["campaign"])
    report = analysis_services.build_report(campaign)
    assert report.reproducibility.simulated_votes == report.reproducibility.votes > 0
    # A rerun reuses what exists: no second run, campaign or dataset.
    again = loop.reproduce()
    assert again["tuned_vs_base"]["campaign"] == tuned["campaign"]
