"""The aesthetic head as an automatic judge of a campaign's pairs (training.services.judge_scores): a tiny random CLIP
and head saved to files, loaded the way the site loads them, score every pair; the AI-assisted win rate follows."""

from __future__ import annotations

import math

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from analysis import services as analysis_services
from analysis.models import JudgeScore
from annotation import services as annotation_services
from generation.models import GenerationBatch
from training import services
from training.aesthetic import AestheticHead, AestheticMLP
from training.clip_scoring import save_tiny_clip

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("judge")
    clip = save_tiny_clip(root / "tiny-clip", seed=0)
    torch.manual_seed(0)
    head = AestheticHead(AestheticMLP(32)).save(root / "head.pth")
    return str(head), str(clip)


@pytest.fixture
def live_campaign(live_campaign):
    """The shared live campaign, with its generation batch recorded as a launch records it."""
    live_campaign.generation_batch = GenerationBatch.objects.get(name=f"campaign: {live_campaign.name}")
    live_campaign.save(update_fields=["generation_batch"])
    return live_campaign


def test_every_pair_gets_the_logistic_of_its_aesthetic_difference(live_campaign, judge_files, settings):
    settings.NEEDLE_JUDGE_HEAD_PATH, settings.NEEDLE_JUDGE_CLIP_PATH = judge_files
    assert services.score_campaign_pairs(live_campaign) == 20  # 4 prompts x 5 seeds, one pair
    assert services.score_campaign_pairs(live_campaign) == 0  # idempotent: scored pairs are skipped

    clip, head = services.load_aesthetic_scoring(*judge_files)
    row = JudgeScore.objects.filter(campaign=live_campaign).select_related("image_a", "image_b").first()
    pictures = [Image.open(image.file.path).convert("RGB") for image in (row.image_a, row.image_b)]
    score_a, score_b = head.predict(clip.embed_images(pictures))
    assert row.score == pytest.approx(1 / (1 + math.exp(-(score_b - score_a))), abs=1e-6)
    assert row.criterion == "visual_appeal" and row.judge.startswith("aesthetic head head.pth")
    assert services.judge_probability(2.0, 2.0) == 0.5 and services.judge_probability(5.0, 6.0) == pytest.approx(
        0.731, abs=1e-3
    )


def test_the_command_scores_and_the_report_shows_what_is_missing(live_campaign, judge_files, capsys):
    head, clip = judge_files
    call_command("judge_campaign", live_campaign.name, "--head", head, "--clip", clip)
    assert "20 pair(s) scored" in capsys.readouterr().out
    (summary,) = [s for s in analysis_services.prediction_powered_summaries(live_campaign)]
    # No votes yet: the judge alone says nothing about what humans think.
    assert not summary.has_numbers and "too few" in summary.message and summary.unlabelled_items == 20


def test_the_judge_refuses_what_it_cannot_score(two_models, prompt_set, judge_files):
    head, clip = judge_files
    draft = annotation_services.create_campaign(
        name="draft", models=two_models, prompt_set=prompt_set, seeds=[0], criteria={"text_faithfulness": {}}
    )
    with pytest.raises(services.TrainingError, match="visual appeal"):
        services.score_campaign_pairs(draft, head_path=head, clip_path=clip)
    with pytest.raises(CommandError, match="visual appeal"):
        call_command("judge_campaign", "draft", "--head", head, "--clip", clip)
    with pytest.raises(CommandError, match="no campaign"):
        call_command("judge_campaign", "nope")
