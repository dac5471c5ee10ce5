"""Launching a campaign through a real Celery worker, a launch that fails, and the settings freeze."""

import shutil
import time

import pytest
from django.core.management import CommandError, call_command

from annotation import services
from annotation.models import Campaign
from generation import services as generation_services


def wait_for_launch(campaign: Campaign, worker, timeout: float = 180) -> Campaign:
    """Poll the database until the launch is over: live, or back to draft."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if campaign.status != Campaign.Status.LAUNCHING:
            return campaign
        time.sleep(0.2)
    raise AssertionError(f"campaign still launching after {timeout}s\n{worker.log()}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_launched_campaign_goes_live_with_its_items_and_gold_items(celery_worker, two_models, prompt_set, make_rater):
    campaign = services.create_campaign(
        name="launch", models=two_models, prompt_set=prompt_set, seeds=[0, 1], gold_share=0.2
    )
    services.launch_campaign(campaign)
    assert campaign.status == "launching" and campaign.generation_batch is not None and not campaign.items.exists()

    wait_for_launch(campaign, celery_worker)
    assert campaign.status == "live" and campaign.launch_error == "", celery_worker.log()
    regular = campaign.items.filter(gold_image__isnull=True).select_related("image_a", "image_b")
    assert regular.count() == 4 * 2 * 2  # prompts x seeds x criteria, one pair
    for item in regular:
        a, b = item.image_a, item.image_b
        assert (a.model_id, b.model_id) == (two_models[0].pk, two_models[1].pk)
        assert (a.prompt_id, a.seed) == (b.prompt_id, b.seed)  # the two models on the same prompt and seed
    gold = campaign.items.filter(gold_image__isnull=False)
    assert gold.count() == 2 * services.gold_items_needed(8, 0.2) > 0  # per criterion
    assert all(item.image_a_id == item.image_b_id for item in gold)
    assert services.next_assignment(campaign, make_rater()) is not None  # open to raters


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_launch_whose_generation_fails_returns_to_draft_with_the_reason(
    celery_worker, tiny_pipeline_dir, tmp_path, prompt_set
):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_pipeline_dir("sd", 0), moved)
    base = generation_services.register_model(name="base", pipeline_path=str(tiny_pipeline_dir("sd", 1)), steps=2)
    lost = generation_services.register_model(name="lost", pipeline_path=str(moved), steps=2)
    campaign = services.create_campaign(
        name="doomed", models=[base, lost], prompt_set=prompt_set, seeds=[0], gold_share=0
    )
    shutil.rmtree(moved)  # the model's directory disappears after registration

    # `launch --wait` follows the launch and reports the campaign's launch error as it is.
    with pytest.raises(CommandError, match="no longer exists on this worker"):
        call_command("campaign", "launch", "doomed", "--wait", "--timeout", "180")
    campaign.refresh_from_db()
    assert campaign.status == "draft" and not campaign.items.exists()
    assert (
        campaign.launch_error.startswith("Image generation failed:")
        and "Fix it and launch again." in campaign.launch_error
    )


@pytest.mark.django_db
def test_settings_freeze_structure_once_items_exist_and_operations_once_votes_exist(
    two_models, prompt_set, live_campaign, make_rater
):
    draft = services.create_campaign(name="draft", models=two_models, prompt_set=prompt_set, seeds=[0])
    services.update_campaign(draft, seeds=[0, 1], gold_share=0.2)  # nothing generated yet: anything goes
    assert Campaign.objects.get(pk=draft.pk).seeds == [0, 1]

    for structural in ({"seeds": [0]}, {"gold_share": 0.3}, {"pairing": "vs_baseline"}):
        with pytest.raises(services.AnnotationError, match="comparisons exist"):
            services.update_campaign(live_campaign, **structural)
    services.update_campaign(live_campaign, lease_seconds=120, rater_title="Which do you prefer?")  # no votes yet

    rater = make_rater()
    services.submit_vote(rater, services.next_assignment(live_campaign, rater).token, "left")
    for operational in ({"lease_seconds": 300}, {"quota_per_rater": 10}, {"gold_min_accuracy": 0.5}):
        with pytest.raises(services.AnnotationError, match="has votes"):
            services.update_campaign(live_campaign, **operational)
    services.update_campaign(
        live_campaign, name="renamed", completion_url="https://example.org/done"
    )  # always editable

    live_campaign.refresh_from_db()
    assert (live_campaign.name, live_campaign.lease_seconds, live_campaign.rater_title) == (
        "renamed",
        120,
        "Which do you prefer?",
    )
    assert live_campaign.seeds == [0, 1, 2, 3, 4] and live_campaign.quota_per_rater == 0
