"""Issue 13, part 1: the anytime-valid confidence sequence on the campaign page and in the report, and "stop when
decided" (analysis.services.decisions), on real votes in PostgreSQL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.management import call_command

from analysis import services, tasks
from analysis.models import CampaignDecision
from analysis.selectors import item_completions
from analysis.stats import confidence_sequence, prompt_scores
from analysis.tests.small_campaigns import PROMPTS, make_live, vote
from annotation import services as annotation_services
from annotation.models import Campaign
from evalsite.celery import app

pytestmark = pytest.mark.django_db


@pytest.fixture
def favours_b(two_models, twelve_prompts, make_rater):
    campaign = make_live(two_models, twelve_prompts, stop_when_decided=True)
    assert vote(campaign, make_rater(), lambda prompt: "b") == PROMPTS
    return campaign


@pytest.fixture
def null_campaign(two_models, twelve_prompts, make_rater):
    campaign = make_live(two_models, twelve_prompts, name="null", stop_when_decided=True)
    assert vote(campaign, make_rater(), lambda prompt: "ab"[prompt % 2]) == PROMPTS
    return campaign


def test_the_check_closes_a_campaign_whose_votes_clearly_favour_b_and_records_the_look(favours_b):
    assert services.check_decision(favours_b.pk) == "decided: campaign closed"
    favours_b.refresh_from_db()
    assert favours_b.status == Campaign.Status.CLOSED
    decision = CampaignDecision.objects.get(campaign=favours_b)
    # The same numbers as the pure sequence over the same prompt scores (all 1), at the look where it decided.
    reference = confidence_sequence(np.ones(PROMPTS))
    assert (decision.criterion, decision.model_a, decision.model_b) == ("visual_appeal", "base", "tuned")
    assert decision.decision == "B better" and decision.look == reference.decided_at == 10
    assert decision.low == pytest.approx(reference.low[9]) and decision.low > 0.5
    assert decision.votes_at_look == 10 and decision.votes_at_check == PROMPTS  # k = 1: one vote per prompt
    assert decision.level == 0.95 and decision.closed_campaign


def test_the_check_is_idempotent(favours_b):
    services.check_decision(favours_b.pk)
    first = CampaignDecision.objects.get(campaign=favours_b)
    assert services.check_decision(favours_b.pk) == "campaign is closed"
    assert list(CampaignDecision.objects.values_list("pk", "look", "recorded_at")) == [
        (first.pk, first.look, first.recorded_at)
    ]


def test_a_null_campaign_stays_open(null_campaign):
    assert services.check_decision(null_campaign.pk) == "0 of 1 pairs decided"
    null_campaign.refresh_from_db()
    assert null_campaign.status == Campaign.Status.LIVE
    assert not CampaignDecision.objects.exists()


def test_campaigns_without_the_setting_are_left_alone(favours_b):
    annotation_services.update_campaign(favours_b, stop_when_decided=False)
    assert favours_b.pk not in services.campaigns_to_decide()
    assert tasks.check_decisions() == 0
    assert services.check_decision(favours_b.pk) == "stop when decided is off"
    favours_b.refresh_from_db()
    assert favours_b.status == Campaign.Status.LIVE and not CampaignDecision.objects.exists()


def test_the_beat_task_and_the_command_decide(favours_b, monkeypatch, capsys):
    queued = []
    monkeypatch.setattr(tasks.check_decision, "delay", queued.append)
    assert tasks.check_decisions() == 1 and queued == [favours_b.pk]
    call_command("campaign", "decide", str(favours_b.pk))
    out = capsys.readouterr().out
    assert "decided: campaign closed" in out and "decided after 10 complete prompts and 10 counting votes" in out


def test_beat_checks_every_30_seconds_on_the_default_queue(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["check-decisions"]
    assert entry == {"task": "analysis.tasks.check_decisions", "schedule": 30.0}
    assert {"analysis.tasks.check_decisions", "analysis.tasks.check_decision"} <= set(app.tasks)
    assert app.amqp.router.route({}, "analysis.tasks.check_decision")["queue"].name == "default"


def test_a_target_width_decides_by_width(two_models, twelve_prompts, make_rater):
    campaign = make_live(two_models, twelve_prompts, stop_when_decided=True, decision_width=0.9)
    vote(campaign, make_rater(), lambda prompt: "ab"[prompt % 2])
    services.check_decision(campaign.pk)
    decision = CampaignDecision.objects.get(campaign=campaign)
    assert decision.decision == "width reached" and decision.high - decision.low <= 0.9
    assert decision.target_width == 0.9


def test_prompts_enter_in_the_order_they_completed(null_campaign):
    items, times = item_completions(null_campaign)
    scores, completed, prompt_ids, total = services.prompt_sequence(items, "visual_appeal", "base", "tuned")
    assert total == PROMPTS and len(scores) == PROMPTS and completed.is_monotonic_increasing
    assert list(scores) == [float(p % 2 == 1) for p in prompt_ids]  # odd prompts: B won (prefer "ab"[p % 2])
    # build_items shuffles the prompts (seeded), and the engine fills items in that order: prompts arrive at random.
    assert prompt_ids != sorted(prompt_ids)
    assert len(times) == PROMPTS


def test_the_page_and_the_report_show_the_sequence_and_the_decision(favours_b, staff_client):
    services.check_decision(favours_b.pk)
    page = staff_client.get(f"/annotation/campaigns/{favours_b.pk}/").content.decode()
    reference = confidence_sequence(prompt_scores(np.ones(PROMPTS), np.ones(PROMPTS)))
    text = f"{100 * reference.low[-1]:.1f}% – {100 * reference.high[-1]:.1f}%"
    assert "Anytime-valid 95% interval" in page and text in page
    assert "valid however often you look" in page and "sample size fixed in advance" in page
    assert "Decided:" in page and "decided after 10 complete prompts" in page

    state = staff_client.get(f"/annotation/campaigns/{favours_b.pk}/progress.json").json()
    row = state["win_rates"][0]
    assert row["sequence_text"] == text and row["sequence_prompts"] == PROMPTS
    assert state["stop_rule"]["stop_when_decided"] and state["decisions"][0]["look"] == 10

    report = json.loads(staff_client.get(f"/analysis/campaigns/{favours_b.pk}/report.json").content)
    (sequence,) = report["sequences"]
    assert sequence["low"] == pytest.approx(reference.low[-1]) and sequence["decided_at"] == 10
    assert report["decisions"][0]["decision"] == "B better"
    html = staff_client.get(f"/analysis/campaigns/{favours_b.pk}/report.html").content.decode()
    assert "Anytime-valid" in html and text in html and "valid however often you look" in html
    pdf = staff_client.get(f"/analysis/campaigns/{favours_b.pk}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
