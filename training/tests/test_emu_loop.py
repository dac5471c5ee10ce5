"""The whole Emu loop as a researcher drives it, through public services and commands only.

Candidate folder -> ``curate import`` -> ``curate funnel`` -> ``curation_stage`` generalist and specialist stages
(a reviewer deciding through the same services as the review pages) -> ``curation_stage freeze`` -> a quality-tuning
run of a tiny random-weight SD pipeline on the frozen dataset -> raters compare its checkpoints with the base -> the
preferred step registered as a model -> the tuned-vs-base campaign on both of Emu's criteria.

No Celery worker: where a worker would pick a task up, the test calls the task's body (``execute_curation_run``,
``execute_run``, ``generate_batch_in_process`` and ``finish_launch``) in this process; the worker paths have their
own tests. The quality-tuning trainer still runs as the subprocess that ``execute_run`` starts.
"""

import csv
import io
import json
import re

import pytest
import torch
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from PIL import Image

from annotation import services as annotation_services
from annotation.models import Campaign, Rater
from generation import services as generation_services
from generation.models import TextToImageModel
from training import selectors, services
from training.aesthetic import AestheticHead, AestheticMLP
from training.clip_scoring import save_tiny_clip
from training.datasets import load_curated_dataset
from training.models import CuratedDataset, CurationReview, CurationRun, FunnelOutcome, QualityTuningRun
from training.services import reviews
from training.tests.curated_datasets import FUNNEL_STAGES, TINY_VALIDATED_RUN, picture

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]

TWO_PROMPTS = "prompt,category\na lighthouse at dusk,Outdoor Scenes\na bowl of lemons,Food\n"
TARGET = 5


def make_candidate_folder(folder):
    """Twelve captioned candidates: ten distinct, one too small (40 px) and a larger near-duplicate of photo-01."""
    folder.mkdir(parents=True)
    rows = []
    for seed in range(1, 11):
        picture(seed).save(folder / f"photo-{seed:02d}.png")
        rows.append((f"photo-{seed:02d}.png", f"photo number {seed}"))
    picture(1).resize((160, 120), Image.Resampling.LANCZOS).save(folder / "photo-01-large.png")
    rows.append(("photo-01-large.png", "photo number 1, larger"))
    picture(99, (40, 40)).save(folder / "thumbnail.png")
    rows.append(("thumbnail.png", "a thumbnail"))
    with open(folder / "captions.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return folder


def command(name, *args) -> str:
    out = io.StringIO()
    call_command(name, *map(str, args), stdout=out)
    return out.getvalue()


def vote_for(rater: Rater, campaign: Campaign, preferred) -> int:
    """The rater answers every task they are given, picking ``preferred``'s image when it is in the pair, else A's."""
    votes = 0
    while tasks := annotation_services.open_tasks(campaign, rater):
        for task in tasks:
            item = task.item
            winner_is_a = item.image_b.model_id != preferred.pk
            choice = "left" if winner_is_a == task.a_on_left else "right"
            assert not annotation_services.submit_vote(
                rater, task.token, choice, seconds_on_task=3.0, campaign=campaign
            ).duplicate
            votes += 1
    return votes


def test_a_curated_selection_quality_tunes_a_model_whose_preferred_checkpoint_faces_its_base_on_emus_criteria(
    tmp_path, settings, monkeypatch, tiny_pipeline_dir
):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    settings.NEEDLE_TRAINING_POLL_SECONDS = 0.1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the trainer subprocess, on a shared 2-core machine
    folder = make_candidate_folder(tmp_path / "candidates")
    clip = save_tiny_clip(tmp_path / "models" / "clip", seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        head = AestheticHead(AestheticMLP(32)).save(tmp_path / "models" / "head.pth")

    # --- 1. Import the candidates and run the automatic funnel -----------------------------------------------
    out = command("curate", "import", "photos", folder)
    assert out.startswith("Imported 12 candidates into photos")
    stages_file = tmp_path / "stages.json"
    stages_file.write_text(json.dumps(FUNNEL_STAGES))
    out = command("curate", "funnel", "photos", "--stages", stages_file, "--clip", clip, "--aesthetic-head", head)
    run_id = int(re.match(r"Queued curation run (\d+) of photos \(12 candidates\)", out).group(1))
    assert CurationRun.objects.get(pk=run_id).status == "queued"
    assert services.execute_curation_run(run_id) == f"curation run {run_id} finished"
    funnel = CurationRun.objects.get(pk=run_id)
    assert (funnel.status, funnel.count_in, funnel.count_kept) == ("finished", 12, 10)
    assert [s["name"] for s in funnel.report["stages"]] == [
        "resolution",
        "text_in_image",
        "near_duplicate",
        "clip_score",
        "aesthetic",
    ]
    rejected = {
        o.candidate.relative_path: o
        for o in FunnelOutcome.objects.filter(run=funnel, kept=False).select_related("candidate")
    }
    assert rejected.keys() == {"thumbnail.png", "photo-01.png"} or rejected.keys() == {
        "thumbnail.png",
        "photo-01-large.png",
    }
    assert rejected["thumbnail.png"].stage == "resolution"
    duplicate = next(o for path, o in rejected.items() if path != "thumbnail.png")
    assert duplicate.stage == "near_duplicate" and duplicate.duplicate_of in {"photo-01.png", "photo-01-large.png"}

    # --- 2. Generalists keep or reject ---------------------------------------------------------------------
    reviewer = User.objects.create_user("rev", password="pw-rev-long-enough")
    reviewer.user_permissions.add(
        Permission.objects.get(codename="review_curation", content_type__app_label="training")
    )
    reviewer = User.objects.get(pk=reviewer.pk)  # fresh: no stale permission cache
    assert selectors.reviewer_may_review(reviewer) and not reviewer.is_staff

    out = command("curation_stage", "open-generalist", "gen", "--funnel-run", funnel.pk)
    assert "over 10 candidates of funnel run" in out
    generalist = CurationReview.objects.get(name="gen")
    scores = [
        FunnelOutcome.objects.get(run=funnel, candidate=d.candidate).aesthetic_score
        for d in generalist.decisions.order_by("position")
    ]
    assert scores == sorted(scores, reverse=True)  # best automatic aesthetic score reviewed first
    rejected_by_generalist = {4, 9}
    while (decision := reviews.next_decision(generalist, reviewer)) is not None:
        reviews.decide(generalist, decision.pk, reviewer, keep=decision.position not in rejected_by_generalist)
    assert "decided 10/10 (100%), kept 8," in command("curation_stage", "status", "gen")
    assert "  rev: decided 10, kept 8," in command("curation_stage", "status", "gen")

    # --- 3. Specialists select with reasons and corrected captions, up to the target ---------------------------
    out = command("curation_stage", "open-specialist", "final", "--from", "gen", "--target-size", TARGET)
    assert f"over 8 candidates kept by gen; it stops at {TARGET} selected" in out
    specialist = CurationReview.objects.get(name="final")
    corrected, skipped = {}, []
    while (decision := reviews.next_decision(specialist, reviewer)) is not None:
        if decision.position == 2:
            skipped.append(decision.candidate.relative_path)
            reviews.decide(specialist, decision.pk, reviewer, keep=False)
            continue
        caption = f"a sharp, well-lit {decision.candidate.caption}"
        corrected[decision.candidate.relative_path] = caption
        reviews.decide(
            specialist, decision.pk, reviewer, keep=True, reasons=["composition", "colour_contrast"], caption=caption
        )
    assert len(corrected) == TARGET and len(skipped) == 1
    assert (
        specialist.decisions.filter(decided_at__isnull=True).count() == 8 - TARGET - 1
    )  # the target stopped the stage
    assert f"selected {TARGET} of {TARGET}," in command("curation_stage", "status", "final")

    # --- 4. Freeze the selection into a curated dataset ------------------------------------------------------
    out = command("curation_stage", "freeze", "final", "--dataset", "emu-mini")
    dataset = CuratedDataset.objects.get(name="emu-mini")
    assert out.strip().endswith(f"{TARGET} images, content hash {dataset.content_hash}, at {dataset.path}")
    frozen = load_curated_dataset(dataset.path)
    assert frozen.content_hash == dataset.content_hash and dataset.image_count == len(frozen) == TARGET
    assert sorted(image.caption for image in frozen.images) == sorted(corrected.values())
    specialist.refresh_from_db()
    assert specialist.status == "closed" and specialist.dataset == dataset

    # --- 5. Quality-tune the base on it (the trainer subprocess, followed by the task's body) -------------------
    base = generation_services.register_model(
        name="sd-base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=2, guidance_scale=5.0, width=32, height=32
    )
    run = services.create_run(
        base, dataset, aesthetic_head_path=str(head), clip_model_path=str(clip), **TINY_VALIDATED_RUN
    )
    assert (run.status, run.base_fingerprint, run.max_steps) == ("queued", base.weights_fingerprint, 6)
    outcome = services.execute_run(run.pk)
    run.refresh_from_db()
    assert outcome == f"run {run.pk} finished at step 6", f"{outcome}: {run.error}"
    assert (run.status, run.step) == ("finished", 6) and run.loss is not None
    checkpoints = {cp.step: cp for cp in run.checkpoints.all()}
    assert sorted(checkpoints) == [3, 6] and all(cp.exists and cp.loss is not None for cp in checkpoints.values())
    # The automatic pick's signal: every checkpoint's validation images were scored as the run went.
    assert all(cp.validation_aesthetic_score is not None for cp in checkpoints.values())
    assert selectors.automatic_pick(run).step in (3, 6)

    # --- 6. Raters compare every checkpoint with the base; the preferred step is registered ----------------------
    prompts, _ = generation_services.import_prompt_set(name="two", data=TWO_PROMPTS.encode(), filename="two.csv")
    campaign = services.create_checkpoint_campaign(run, prompt_set=prompts, seeds=(0,), gold_share=0)
    step_models = {cp.step: cp.registered_model for cp in run.checkpoints.select_related("registered_model")}
    assert campaign.ordered_models() == [base, step_models[3], step_models[6]]
    assert [(c.criterion, c.votes_per_item) for c in campaign.criteria.all()] == [("visual_appeal", 3)]
    annotation_services.launch_campaign(campaign)
    generation_services.generate_batch_in_process(campaign.generation_batch)  # what the generation workers do
    assert annotation_services.finish_launch(campaign.pk)
    campaign.refresh_from_db()
    assert campaign.status == "live" and campaign.items.count() == 2 * 2  # two checkpoints x two prompts
    # Emu stops early although the loss still falls: these raters prefer the earlier step.
    assert sum(vote_for(Rater.objects.create(), campaign, step_models[3]) for _ in range(3)) == 4 * 3
    win_rates = {row["step"]: row for row in selectors.checkpoint_win_rates(run)}
    assert {step: (row["win_rate"], row["comparisons"]) for step, row in win_rates.items()} == {
        3: (1.0, 2),
        6: (0.0, 2),
    }
    chosen_step = max(win_rates, key=lambda step: win_rates[step]["win_rate"])
    tuned = services.register_checkpoint(checkpoints[chosen_step])
    assert tuned == step_models[3]  # registered once, by the checkpoint campaign
    assert (tuned.source, tuned.parent) == (TextToImageModel.Source.QUALITY_TUNED, base)
    assert tuned.weights_fingerprint != base.weights_fingerprint

    # --- 7. The tuned model against its base, on both of Emu's criteria -----------------------------------------
    final = services.create_tuned_vs_base_campaign(checkpoints[chosen_step], prompts, "0-1")
    assert (final.status, final.seeds, final.prompt_set) == ("draft", [0, 1], prompts)
    assert final.ordered_models() == [base, tuned]
    assert sorted((c.criterion, c.votes_per_item) for c in final.criteria.all()) == [
        ("text_faithfulness", 3),
        ("visual_appeal", 5),
    ]
    lineage = QualityTuningRun.objects.get(pk=run.pk).checkpoints.get(step=chosen_step).lineage
    assert lineage["base_fingerprint"] == base.weights_fingerprint
    assert lineage["dataset_hash"] == dataset.content_hash == frozen.content_hash
    assert (lineage["step"], lineage["dataset"], lineage["model_fingerprint"]) == (
        3,
        "emu-mini",
        tuned.weights_fingerprint,
    )
    assert dataset.content_hash[:12] in tuned.description and "step 3" in tuned.description
