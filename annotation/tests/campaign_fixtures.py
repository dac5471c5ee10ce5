"""Campaigns with their images and items, and with votes: shared by the tests of annotation, analysis and training."""

import pytest
from django.contrib.auth import get_user_model

from annotation import services
from annotation.models import Participation
from annotation.services import assignment
from generation import services as generation_services

# The researchers' new-campaign form filled in for the two_models and prompt_set fixtures: appeal only, k = 5, 10% gold.
CAMPAIGN_FORM = {
    "name": "x",
    "models": ["base", "tuned"],
    "pairing": "all_pairs",
    "prompt_set": "four",
    "seeds": "0-1",
    "visual_appeal_enabled": "on",
    "visual_appeal_votes_per_item": "5",
    "visual_appeal_choices": ["left", "right", "tie"],
    "gold_share": "0.1",
    "gold_min_accuracy": "0.7",
    "gold_min_answers": "4",
    "quota_per_rater": "0",
    "lease_seconds": "600",
    "rater_title": "Compare",
}


def built(campaign, *, live: bool = True):
    """The campaign with its images generated (in this process, by the tiny pipelines) and its items built; opened to
    raters unless ``live=False``. Refreshed from the database."""
    batch = services.generation_batch_for(campaign)
    generation_services.generate_batch_in_process(batch)
    services.build_items(campaign, batch)
    if live:
        services.set_status(campaign, "live")
    campaign.refresh_from_db()
    return campaign


@pytest.fixture
def make_campaign(two_models, prompt_set):
    """``make_campaign(name=..., seeds=[...], **settings, live=True)``: a campaign of the two tiny models over the four
    prompts, built (see ``built``)."""

    def make(*, live: bool = True, **settings):
        return built(services.create_campaign(models=two_models, prompt_set=prompt_set, **settings), live=live)

    return make


def vote_everything(campaign, rater, prefer: str) -> int:
    """The rater answers every task they get, always for model ``prefer`` ("a" or "b"), wherever it is shown."""
    n = 0
    while tasks := services.open_tasks(campaign, rater):
        for task in tasks:
            a_side, b_side = ("left", "right") if task.a_on_left else ("right", "left")
            services.submit_vote(rater, task.token, a_side if prefer == "a" else b_side, seconds_on_task=2.0 + n % 3)
            n += 1
    return n


@pytest.fixture
def voted_campaign(live_campaign, make_rater, monkeypatch):
    """Six raters over the 40 items (20 pairs, each under appeal, k=5, and faithfulness, k=3), each pair once per
    rater: three answer faithfulness for every pair, then three appeal; in each three, two always pick model A and
    one model B.

    So every faithfulness item is complete with an A majority (2 to 1); no appeal item is complete (3 of 5).
    """
    criterion = {c.criterion: c.pk for c in live_campaign.criteria.all()}
    link = services.create_invite_link(live_campaign, label="Prolific pilot")
    first = services.join_with_invite(
        link.token, {"PROLIFIC_PID": "pid-1", "STUDY_ID": "study-1", "SESSION_ID": "session-1"}
    )
    account = get_user_model().objects.create_user("lab-member", password="pw-long-enough-2")
    second = services.invite_account(live_campaign, account)
    third = make_rater()  # enrolled by the engine on first use

    def answer(rater, question, prefer):
        # The schedule fixed to one question: a rater then meets every pair under it, and none under the other.
        with monkeypatch.context() as patched:
            patched.setattr(assignment, "_scheduled_criterion", lambda *args: criterion[question])
            assert vote_everything(live_campaign, rater, prefer) == 20

    answer(first.rater, "text_faithfulness", "a")
    answer(second.rater, "text_faithfulness", "a")
    answer(third, "text_faithfulness", "b")
    for prefer in ("a", "a", "b"):
        answer(make_rater(), "visual_appeal", prefer)
    return live_campaign, first, second, Participation.objects.get(campaign=live_campaign, rater=third)


def win_rate_row(win_rates, criterion):
    return next(w for w in win_rates if w["criterion"] == criterion)
