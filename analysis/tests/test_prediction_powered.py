"""Issue 13, part 2: humans vote on a random share of the prompts (Campaign.human_share), an automatic judge scores
every pair (JudgeScore), and the report and the campaign page show the prediction-powered (PPI++) win rate; checked
against analysis.stats.ppi on the same data, built here independently of the service."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from analysis import services
from analysis.models import JudgeScore
from analysis.stats import prediction_powered_win_rate
from analysis.tests.small_campaigns import PROMPTS, make_live, vote
from annotation import services as annotation_services
from annotation.models import Assignment, ComparisonItem
from generation.models import GeneratedImage

pytestmark = pytest.mark.django_db

SHARE = 0.75  # 9 of the 12 prompts get human votes


def judge(prompt_id: int) -> float:
    """A made-up judge that leans towards the side the rater takes (B on odd prompts), imperfectly."""
    return 0.8 if prompt_id % 2 else 0.35 if prompt_id % 3 else 0.6


@pytest.fixture
def judged(two_models, twelve_prompts, make_rater):
    campaign = make_live(two_models, twelve_prompts, name="judged", human_share=SHARE)
    assert vote(campaign, make_rater(), lambda prompt: "ab"[prompt % 2]) == 9
    base, tuned = two_models
    scores = {}
    for image_a in GeneratedImage.objects.filter(model=base, prompt__prompt_set=twelve_prompts):
        image_b = GeneratedImage.objects.get(model=tuned, prompt=image_a.prompt, seed=image_a.seed)
        scores[image_a.pk, image_b.pk] = judge(image_a.prompt_id)
    assert services.record_judge_scores(campaign, "visual_appeal", scores, judge="test judge") == PROMPTS
    return campaign


def test_humans_vote_on_a_seeded_random_share_of_the_prompts(judged, twelve_prompts):
    prompts = sorted(twelve_prompts.prompts.values_list("id", flat=True))
    assert len(judged.human_prompt_ids) == 9 and set(judged.human_prompt_ids) <= set(prompts)
    items = ComparisonItem.objects.regular().filter(campaign=judged)
    assert sorted(items.values_list("image_a__prompt_id", flat=True)) == judged.human_prompt_ids
    # Recorded: building again keeps the draw; the draw is the campaign's seed's, not the vote's or the judge's.
    assert annotation_services.human_prompts(judged, prompts) == judged.human_prompt_ids
    judged.human_prompt_ids = None
    assert sorted(random.Random(f"human_share:{judged.pk}").sample(prompts, 9)) == sorted(
        annotation_services.human_prompts(judged, prompts)
    )


def test_the_service_matches_ppi_on_the_same_data(judged):
    (summary,) = services.prediction_powered_summaries(judged)
    # The same arrays, built from the rows directly: each voted item's single vote (k = 1) is its majority.
    human, judge_labelled, prompts_labelled = [], [], []
    for assignment in Assignment.objects.filter(campaign=judged).select_related("vote", "item__image_a"):
        item = assignment.item
        human.append({"a": 0.0, "b": 1.0, "tie": 0.5}[assignment.vote.winner])
        judge_labelled.append(JudgeScore.objects.get(image_a=item.image_a, image_b=item.image_b).score)
        prompts_labelled.append(item.image_a.prompt_id)
    voted = set(prompts_labelled)
    others = JudgeScore.objects.exclude(image_a__prompt_id__in=voted)
    reference = prediction_powered_win_rate(
        np.array(human),
        np.array(judge_labelled),
        np.array([s.score for s in others]),
        prompts_labelled=np.array(prompts_labelled),
        prompts_unlabelled=np.array([s.image_a.prompt_id for s in others]),
    )
    assert (summary.labelled_items, summary.labelled_prompts, summary.unlabelled_items) == (9, 9, 3)
    assert summary.estimate == pytest.approx(reference.estimate)
    assert (summary.interval.low, summary.interval.high) == pytest.approx(
        (reference.interval.low, reference.interval.high)
    )
    assert (summary.humans_only.low, summary.humans_only.high) == pytest.approx(
        (reference.humans_only.low, reference.humans_only.high)
    )
    assert summary.lam == pytest.approx(reference.lam) and summary.agreement == pytest.approx(reference.agreement)
    assert summary.interval.high - summary.interval.low <= summary.humans_only.high - summary.humans_only.low + 1e-12


def test_recording_scores_is_idempotent_and_checked(judged):
    scores = {(s.image_a_id, s.image_b_id): s.score for s in JudgeScore.objects.all()}
    assert services.record_judge_scores(judged, "visual_appeal", scores, judge="test judge") == PROMPTS
    assert JudgeScore.objects.count() == PROMPTS
    pair = next(iter(scores))
    for bad in (1.5, float("nan"), True):
        with pytest.raises(services.JudgeScoreError):
            services.record_judge_scores(judged, "visual_appeal", {pair: bad}, judge="test judge")


def test_no_judge_no_section(live_campaign, staff_client):
    assert services.prediction_powered_summaries(live_campaign) == ()
    assert "AI-assisted" not in staff_client.get(f"/annotation/campaigns/{live_campaign.pk}/").content.decode()


def test_the_page_and_the_report_show_the_ai_assisted_win_rate(judged, staff_client):
    (summary,) = services.prediction_powered_summaries(judged)
    page = staff_client.get(f"/annotation/campaigns/{judged.pk}/").content.decode()
    assert "AI-assisted win rates" in page and summary.interval_text in page and summary.humans_only_text in page
    assert "unbiased however good or bad" in page and "test judge" in page
    report = json.loads(staff_client.get(f"/analysis/campaigns/{judged.pk}/report.json").content)
    (row,) = report["prediction_powered"]
    assert row["estimate"] == pytest.approx(summary.estimate) and row["lam"] == pytest.approx(summary.lam)
    assert row["agreement"] == pytest.approx(summary.agreement)
    html = staff_client.get(f"/analysis/campaigns/{judged.pk}/report.html").content.decode()
    assert "AI-assisted win rates (prediction-powered)" in html and summary.interval_text in html
