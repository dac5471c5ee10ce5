"""Choosing the step to stop at: a campaign of every checkpoint vs the base, its win rates, and the automatic pick
from the validation images' aesthetic score; the run page and the command show both.

One tiny run is trained in this process once per module (files only); each test
gives it a fresh database row by copying its directory into the run's, and
records its checkpoints the way the task's follow loop does. No Celery worker:
campaign images are generated in this process.
"""

import dataclasses
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image

from annotation import services as annotation_services
from annotation.models import Campaign, Rater
from generation import services as generation_services
from training import checkpoints, selectors, services
from training.aesthetic import AestheticHead, AestheticMLP
from training.clip_scoring import load_clip, save_tiny_clip
from training.models import QualityTuningRun, RunCheckpoint
from training.services.trainer import Follower
from training.tests.curated_datasets import TINY_CONFIG
from training.validation import VALIDATION_DIR

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]

STEPS = [3, 6]


@pytest.fixture(scope="module")
def trained_run_dir(tiny_pipeline_dir, curated_dataset, tmp_path_factory):
    """A finished 6-step run with checkpoints and validation images (2 seeds) at steps 3 and 6."""
    from training.quality_tuning import train

    config = dataclasses.replace(TINY_CONFIG, validation_seeds=(0, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(
            config, tiny_pipeline_dir("sd", 0), curated_dataset, tmp_path_factory.mktemp("trained") / "run"
        ).run_dir
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scoring_files(tmp_path_factory):
    """A tiny random open_clip model (32-d embeddings) and a random LAION-layout head on it."""
    root = tmp_path_factory.mktemp("scoring")
    clip = save_tiny_clip(root / "tiny-clip", seed=0)
    torch.manual_seed(0)
    head = AestheticHead(AestheticMLP(32)).save(root / "head.pth")
    return {"aesthetic_head_path": str(head), "clip_model_path": str(clip), "clip_model_name": ""}


@pytest.fixture
def make_run(settings, tmp_path, tiny_pipeline_dir, curated_dataset, trained_run_dir):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    base = generation_services.register_model(
        name="sd-base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=2, guidance_scale=5.0, width=32, height=32
    )
    dataset = services.import_curated_dataset("shapes", str(curated_dataset))

    def make(**scoring) -> QualityTuningRun:
        run = services.create_run(
            base, dataset, resolution=32, batch_size=4, max_steps=6, checkpoint_every=3, validation_every=3, **scoring
        )
        shutil.copytree(trained_run_dir, run.run_dir)
        Follower(run).sync()  # what the task does at every poll: record checkpoints (and score them)
        QualityTuningRun.objects.filter(pk=run.pk).update(status="finished", step=6)
        run.refresh_from_db()
        return run

    return make


def direct_scores(run_dir, files) -> dict[int, float]:
    clip = load_clip(None, files["clip_model_path"])
    head = AestheticHead.load(files["aesthetic_head_path"])
    scores = {}
    for step in STEPS:
        paths = sorted((run_dir / VALIDATION_DIR / checkpoints.checkpoint_name(step)).glob("*.png"))
        assert len(paths) == 2
        images = [Image.open(p).convert("RGB") for p in paths]
        scores[step] = float(np.mean(head.predict(clip.embed_images(images))))
    return scores


def test_the_checkpoint_campaign_puts_every_checkpoint_against_the_base_on_visual_appeal_once(make_run, prompt_set):
    run = make_run()
    assert sorted(run.checkpoints.values_list("step", flat=True)) == STEPS
    campaign = services.create_checkpoint_campaign(run, prompt_set=prompt_set, seeds=(0,))
    run.refresh_from_db()
    assert run.checkpoint_campaign == campaign and campaign.status == "draft"
    models = campaign.ordered_models()
    registered = [cp.registered_model for cp in run.checkpoints.order_by("step")]
    assert models == [run.base_model, *registered] and all(m.parent == run.base_model for m in registered)
    assert campaign.pairing == "vs_baseline" and campaign.baseline == run.base_model
    assert [(c.criterion, c.votes_per_item) for c in campaign.criteria.all()] == [("visual_appeal", 3)]
    assert campaign.seeds == [0]

    # Asked again: the same campaign, no new models; asked for a new one: another campaign on the same models.
    assert services.create_checkpoint_campaign(run, prompt_set=prompt_set) == campaign
    again = services.create_checkpoint_campaign(
        run, prompt_set="four", seeds="0-1", steps=[6], new=True, votes_per_item=5
    )
    assert again != campaign and again.ordered_models() == [run.base_model, registered[1]] and again.seeds == [0, 1]
    assert [c.votes_per_item for c in again.criteria.all()] == [5]
    run.refresh_from_db()
    assert run.checkpoint_campaign == again and Campaign.objects.count() == 2
    assert run.checkpoints.filter(registered_model__isnull=False).count() == 2


def test_a_checkpoint_campaign_is_refused_when_it_could_not_measure_what_it_says(make_run, prompt_set):
    run = make_run()
    with pytest.raises(services.TrainingError, match="no prompt set named 'nope'"):
        services.create_checkpoint_campaign(run, prompt_set="nope")
    with pytest.raises(services.TrainingError, match=r"no checkpoint at step 4 \(checkpoints: 3, 6\)"):
        services.create_checkpoint_campaign(run, prompt_set=prompt_set, steps=[3, 4])
    # keep_last_checkpoints pruned step 3 before anyone registered it.
    shutil.rmtree(checkpoints.find_checkpoint(run.run_dir, 3))
    with pytest.raises(services.TrainingError, match="step 3 of run .* was deleted .*choose among 6"):
        services.create_checkpoint_campaign(run, prompt_set=prompt_set, steps=[3])
    QualityTuningRun.objects.filter(pk=run.pk).update(base_fingerprint="0" * 64)
    with pytest.raises(services.TrainingError, match="files in .* changed since run .* was created"):
        services.create_checkpoint_campaign(run, prompt_set=prompt_set)
    assert not Campaign.objects.exists() and QualityTuningRun.objects.get(pk=run.pk).checkpoint_campaign is None

    empty = services.create_run(run.base_model, run.dataset, resolution=32, max_steps=6)
    with pytest.raises(services.TrainingError, match="has no checkpoint yet"):
        services.create_checkpoint_campaign(empty, prompt_set=prompt_set)
    RunCheckpoint.objects.filter(run=run, step=6).update(path=str(run.path / "gone"))
    QualityTuningRun.objects.filter(pk=run.pk).update(base_fingerprint=run.base_fingerprint)
    with pytest.raises(services.TrainingError, match="Every checkpoint of run .* was deleted"):
        services.create_checkpoint_campaign(run, prompt_set=prompt_set)


def vote(campaign, rater, wants_b):
    """Vote on every task the rater gets; ``wants_b(item)`` says 'b', 'a' or 'tie'. Returns the items voted on."""
    voted = []
    while (task := annotation_services.next_assignment(campaign, rater)) is not None:
        want = wants_b(task.item)
        choice = "tie" if want == "tie" else "left" if (want == "a") == task.a_on_left else "right"
        annotation_services.submit_vote(rater, task.token, choice)
        voted.append(task.item)
    return voted


def test_the_launched_campaign_gives_each_step_a_win_rate_equal_to_a_count_of_the_votes(
    make_run, prompt_set, staff_client
):
    run = make_run()
    campaign = services.create_checkpoint_campaign(run, prompt_set=prompt_set, gold_share=0)
    annotation_services.launch_campaign(campaign)
    assert campaign.status == "launching"
    generation_services.generate_batch_in_process(campaign.generation_batch)  # what the generation workers do
    assert annotation_services.finish_launch(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == "live" and campaign.items.count() == 2 * 4  # 2 checkpoints x 4 prompts x 1 seed

    step_of = {cp.registered_model_id: cp.step for cp in run.checkpoints.all()}
    prompts = sorted(campaign.prompt_set.prompts.values_list("pk", flat=True))

    def wants(rater_index):
        # Step 3 wins most prompts, step 6 loses most: the overfit step; rater 2 disagrees now and then, ties too.
        def choose(item):
            step, prompt = step_of[item.image_b.model_id], prompts.index(item.image_a.prompt_id)
            liked = prompt != 3 if step == 3 else prompt == 0
            if rater_index == 2 and prompt in (1, 2):
                return "tie" if step == 3 else "b"
            return "b" if liked else "a"

        return choose

    raters = [Rater.objects.create() for _ in range(3)]
    ballots = Counter()
    for index, rater in enumerate(raters[:2]):
        for item in vote(campaign, rater, wants(index)):
            ballots[item.pk, wants(index)(item)] += 1
    rows = selectors.checkpoint_win_rates(run)
    assert [(r["step"], r["win_rate"], r["comparisons"], r["incomplete"]) for r in rows] == [
        (3, None, 0, 4),
        (6, None, 0, 4),
    ]
    for item in vote(campaign, raters[2], wants(2)):
        ballots[item.pk, wants(2)(item)] += 1

    expected = {}
    for step in STEPS:
        items = [i for i in campaign.items.select_related("image_b") if step_of[i.image_b.model_id] == step]
        majority = [max(("a", "b", "tie"), key=lambda w: ballots[i.pk, w]) for i in items]
        assert all(ballots[i.pk, m] >= 2 for i, m in zip(items, majority))  # strict majorities of 3
        expected[step] = majority.count("b") / len(items)
    rows = selectors.checkpoint_win_rates(run)
    assert [r["step"] for r in rows] == STEPS and [r["model"] for r in rows] == [
        cp.registered_model.name for cp in run.checkpoints.order_by("step")
    ]
    for row in rows:
        assert (
            row["win_rate"] == pytest.approx(expected[row["step"]])
            and row["comparisons"] == 4
            and row["incomplete"] == 0
        )
        assert (row["low"], row["high"]) == (None, None)  # 4 prompts: too few for a prompt-clustered interval
    assert expected == {3: 0.75, 6: 0.25}  # the votes were meant to favour the earlier step

    # The run page: each step's win rate with its interval and comparisons, the campaign's link, and the plot.
    page = staff_client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "75%" in page and "4 comparisons" in page and reverse("campaigns:detail", args=[campaign.pk]) in page
    progress = staff_client.get(reverse("training:run_progress", args=[run.pk])).json()
    assert progress["checkpoint_campaign"]["id"] == campaign.pk
    assert [c["win_rate"]["win_rate"] for c in progress["checkpoints"]] == [0.75, 0.25]
    plot = staff_client.get(progress["win_rate_curve"])
    assert plot.status_code == 200 and plot["Content-Type"] == "image/png"
    assert b"".join(plot).startswith(b"\x89PNG")


def test_validation_images_are_scored_as_the_run_is_followed_and_the_best_step_is_the_automatic_pick(
    make_run, scoring_files
):
    run = make_run(**scoring_files)
    scores = {cp.step: cp.validation_aesthetic_score for cp in run.checkpoints.all()}
    expected = direct_scores(run.path, scoring_files)
    assert scores == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert selectors.automatic_pick(run).step == max(expected, key=expected.get)

    assert services.score_validation_images(run) == {}  # nothing new to score
    assert services.score_validation_images(run, rescore=True) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    RunCheckpoint.objects.filter(run=run, step=3).update(validation_aesthetic_score=4.0)
    RunCheckpoint.objects.filter(run=run, step=6).update(validation_aesthetic_score=5.0)
    assert selectors.automatic_pick(run).step == 6
    RunCheckpoint.objects.filter(run=run).update(validation_aesthetic_score=5.0)
    assert selectors.automatic_pick(run).step == 3  # a tie: the earlier step, later ones overfit more
    RunCheckpoint.objects.filter(run=run).update(validation_aesthetic_score=None)
    assert selectors.automatic_pick(run) is None

    # A checkpoint whose validation images are gone: the others are scored, and the error names the folder.
    shutil.rmtree(run.path / VALIDATION_DIR / "step-000006")
    with pytest.raises(
        services.TrainingError,
        match=r"no complete set of validation images for step 6 .*step-000006.*Steps 3 were scored",
    ):
        services.score_validation_images(run)
    assert RunCheckpoint.objects.get(run=run, step=3).validation_aesthetic_score == pytest.approx(expected[3], rel=1e-5)


def test_missing_or_mismatched_scoring_files_are_refused_up_front_and_only_warned_about_while_training(
    make_run, scoring_files, tmp_path, staff_client
):
    files = dict(scoring_files)
    with pytest.raises(services.TrainingError, match="Aesthetic head: aesthetic head not found: .*nope.pth"):
        make_run(**{**files, "aesthetic_head_path": str(tmp_path / "nope.pth")})
    with pytest.raises(services.TrainingError, match="CLIP model: CLIP weights not found"):
        make_run(**{**files, "clip_model_path": str(tmp_path / "no-clip")})
    with pytest.raises(services.TrainingError, match="give the CLIP model it sits on"):
        make_run(aesthetic_head_path=files["aesthetic_head_path"])
    wide = AestheticHead(AestheticMLP(64)).save(tmp_path / "wide.pth")
    with pytest.raises(services.TrainingError, match="takes 64-d CLIP embeddings but .* makes 32-d"):
        make_run(**{**files, "aesthetic_head_path": str(wide)})
    plain = make_run()
    with pytest.raises(services.TrainingError, match="has no aesthetic head configured"):
        services.score_validation_images(plain)
    assert QualityTuningRun.objects.count() == 1

    # The head disappears after the run was created: the follow loop warns on the page; the run is not failed.
    head = tmp_path / "head.pth"
    shutil.copy(files["aesthetic_head_path"], head)
    run = services.create_run(
        plain.base_model,
        plain.dataset,
        resolution=32,
        max_steps=6,
        checkpoint_every=3,
        **{**files, "aesthetic_head_path": str(head)},
    )
    shutil.copytree(plain.path, run.run_dir)
    head.unlink()
    follower = Follower(run)
    follower.sync()
    follower.sync()
    run.refresh_from_db()
    assert run.status == "queued" and run.error == "" and run.checkpoints.count() == 2
    assert not run.checkpoints.filter(validation_aesthetic_score__isnull=False).exists()
    warning = selectors.scoring_warning(run)
    assert "Scoring the validation images failed" in warning and "aesthetic head not found" in warning
    page = staff_client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "aesthetic head not found" in page and "automatic pick</span>" not in page
    # Put back, scored from the page: the warning goes, the pick appears.
    shutil.copy(files["aesthetic_head_path"], head)
    response = staff_client.post(reverse("training:score_validation", args=[run.pk]))
    assert response.status_code == 302 and selectors.scoring_warning(run) == ""
    page = staff_client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    pick = selectors.automatic_pick(run)
    assert pick is not None and f"{pick.validation_aesthetic_score:.3f}" in page and "automatic pick</span>" in page
    progress = staff_client.get(reverse("training:run_progress", args=[run.pk])).json()
    assert progress["automatic_pick"] == pick.step and progress["win_rate_curve"] is None
    assert [c["automatic_pick"] for c in progress["checkpoints"]] == [
        c["step"] == pick.step for c in progress["checkpoints"]
    ]


def test_the_run_form_checks_the_scoring_files_and_the_page_creates_the_checkpoint_campaign(
    make_run, scoring_files, prompt_set, staff_client, tmp_path
):
    run = make_run()
    form = {
        "base_model": "sd-base",
        "dataset": "shapes",
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5,
        "lr_warmup_steps": 0,
        "noise_offset": 0.1,
        "max_steps": 6,
        "checkpoint_every": 3,
        "validation_every": 3,
        "validation_prompts": "a red circle",
        "validation_seeds": "0",
        "validation_inference_steps": 2,
        "seed": 0,
        "resolution": 32,
        "crop": "center",
        "ema_decay": 0.9999,
        "mixed_precision": "no",
        "aesthetic_head_path": str(tmp_path / "nope.pth"),
        "clip_model_path": scoring_files["clip_model_path"],
    }
    response = staff_client.post(reverse("training:run_new"), form)
    assert response.status_code == 200 and "aesthetic head not found" in response.content.decode()
    response = staff_client.post(reverse("training:run_new"), {**form, **scoring_files})
    assert response.status_code == 302, response.content.decode()[:3000]
    created = QualityTuningRun.objects.exclude(pk=run.pk).get()
    assert created.aesthetic_head_path == scoring_files["aesthetic_head_path"] and created.clip_model_path

    url = reverse("training:checkpoint_campaign_create", args=[run.pk])
    response = staff_client.post(url, {"prompt_set": "four", "seeds": "0-1", "steps": "6"})
    run.refresh_from_db()
    assert response["Location"] == reverse("campaigns:detail", args=[run.checkpoint_campaign_id])
    assert run.checkpoint_campaign.seeds == [0, 1] and len(run.checkpoint_campaign.ordered_models()) == 2
    page = staff_client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert run.checkpoint_campaign.name in page and "Create another checkpoint campaign" in page
    assert "Validation aesthetic" in page and "Preferred over base" in page


def test_the_command_creates_the_checkpoint_campaign_and_prints_the_pick(make_run, scoring_files, prompt_set, capsys):
    plain = make_run()
    with pytest.raises(CommandError, match="no prompt set named 'nope'"):
        call_command("quality_tune", "checkpoint-campaign", str(plain.pk), "--prompt-set", "nope")
    with pytest.raises(CommandError, match="no checkpoint at step 4"):
        call_command("quality_tune", "checkpoint-campaign", str(plain.pk), "--prompt-set", "four", "--steps", "3", "4")
    with pytest.raises(CommandError, match="no aesthetic head configured"):
        call_command("quality_tune", "pick", str(plain.pk), "--score")
    call_command("quality_tune", "pick", str(plain.pk))
    assert "No automatic pick: the run has no aesthetic head" in capsys.readouterr().out

    run = make_run(**scoring_files)
    call_command(
        "quality_tune",
        "checkpoint-campaign",
        str(run.pk),
        "--prompt-set",
        "four",
        "--seeds",
        "0-1",
        "--steps",
        "3",
        "6",
    )
    out = capsys.readouterr().out
    run.refresh_from_db()
    assert f"Created draft campaign {run.checkpoint_campaign.name!r}" in out and "each vs sd-base, visual appeal" in out
    assert run.checkpoint_campaign.seeds == [0, 1]
    call_command("quality_tune", "checkpoint-campaign", str(run.pk), "--prompt-set", "four")
    assert "already has its checkpoint campaign" in capsys.readouterr().out

    call_command("quality_tune", "pick", str(run.pk))
    out = capsys.readouterr().out
    pick = selectors.automatic_pick(run)
    lines = {int(line.split()[0]): line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert sorted(lines) == STEPS and "<- automatic pick" in lines[pick.step]
    for cp in run.checkpoints.all():
        assert f"{cp.validation_aesthetic_score:.3f}" in lines[cp.step] and "—" in lines[cp.step]  # no votes yet
    assert f"Automatic pick: step {pick.step}" in out
