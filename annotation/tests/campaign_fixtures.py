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


def rows_only_campaign(name: str, n_models: int, prompts: int, *, k: int = 3, pair_selection: str = "adaptive"):
    """A live all-pairs visual-appeal campaign of ``n_models`` models x ``prompts`` prompts (seed 0), no gold, whose
    images are database rows only (the engine and the votes never read image files); items in build_items' order."""
    from annotation.models import ComparisonItem
    from generation.models import GeneratedImage, Prompt, PromptSet, TextToImageModel

    models = [
        TextToImageModel.objects.create(
            name=f"{name}-m{i}",
            pipeline_path="/none",
            pipeline_class="StableDiffusionPipeline",
            weights_fingerprint=f"{name}-m{i}",
        )
        for i in range(n_models)
    ]
    prompt_set = PromptSet.objects.create(name=f"{name}-prompts")
    rows = Prompt.objects.bulk_create(
        Prompt(prompt_set=prompt_set, position=i, text=f"prompt {i}") for i in range(prompts)
    )
    image = {
        (m.pk, p.pk): GeneratedImage.objects.create(
            model=m,
            prompt=p,
            seed=0,
            parameters={},
            parameters_hash="h",
            weights_fingerprint=m.weights_fingerprint,
            file="00/00/x.png",
            sha256="0" * 64,
            width=64,
            height=64,
            seconds=0,
            device="cpu",
        )
        for m in models
        for p in rows
    }
    campaign = services.create_campaign(
        name=name,
        models=models,
        prompt_set=prompt_set,
        seeds=[0],
        criteria={"visual_appeal": {"votes_per_item": k}},
        gold_share=0,
        pair_selection=pair_selection,
    )
    criterion = campaign.criteria.get()
    ComparisonItem.objects.bulk_create(
        ComparisonItem(
            campaign=campaign, criterion=criterion, image_a=image[a.pk, p.pk], image_b=image[b.pk, p.pk], remaining=k
        )
        for a, b in campaign.model_pairs()
        for p in rows
    )
    services.set_status(campaign, "live")
    return campaign, models
