"""The curation funnel as the web app runs it: collections, funnel runs on a real 'training' worker, frozen
selections, aesthetic heads from ratings, pages and the ``curate`` command."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import shutil
import time

import numpy as np
import pytest
import torch
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from PIL import Image

from training import curation, services
from training.aesthetic import AestheticHead, AestheticMLP
from training.clip_scoring import save_tiny_clip
from training.datasets import load_curated_dataset
from training.models import CandidateCollection, CurationRun, FunnelOutcome
from training.tests.curated_datasets import FUNNEL_STAGES, picture

CHEAP_STAGES = [{"kind": "ResolutionStage", "min_side": 64}, {"kind": "NearDuplicateStage"}]


def make_candidates(folder):
    """Seven importable candidates (a near-duplicate pair, a too-small image, one in a subfolder) and two bad files."""
    (folder / "sub").mkdir(parents=True)
    for seed in range(1, 5):
        picture(seed).save(folder / f"p{seed}.png")
    picture(1).resize((160, 120), Image.Resampling.LANCZOS).save(folder / "p1-large.png")  # p1 bigger: a near duplicate
    picture(9, (40, 40)).save(folder / "small.png")
    picture(5).save(folder / "sub" / "p5.jpg", quality=90)
    (folder / "notes.jpg").write_text("not an image")
    picture(6).save(folder / "uncaptioned.png")
    rows = [{"file": f"p{s}.png", "caption": f"pattern number {s}"} for s in range(1, 5)]
    rows += [
        {"file": "p1-large.png", "caption": "pattern number 1, large"},
        {"file": "small.png", "caption": "a tiny one"},
        {"file": "sub/p5.jpg", "caption": "pattern five"},
        {"file": "notes.jpg", "caption": "oops"},
    ]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def candidate_folder(tmp_path_factory):
    return make_candidates(tmp_path_factory.mktemp("candidates") / "photos")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A tiny random-weight CLIP (32-d embeddings) and a random LAION-layout head on it."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_clip(root / "clip", seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        AestheticHead(AestheticMLP(32)).save(root / "head.pth")
    return root


@pytest.fixture
def collection(db, candidate_folder):
    return services.import_candidate_collection("photos", str(candidate_folder))


def wait_until_ended(run, worker, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in (CurationRun.Status.FINISHED, CurationRun.Status.FAILED):
            return run
        time.sleep(0.05)
    raise AssertionError(f"curation run {run.pk} still {run.status}:\n{worker.log()}")


# --- import and configuration -------------------------------------------------------------------------------


def test_import_stores_the_good_files_and_reports_each_bad_one(collection, candidate_folder):
    assert collection.candidate_count == 7
    assert sorted(collection.candidates.values_list("relative_path", flat=True)) == [
        "p1-large.png",
        "p1.png",
        "p2.png",
        "p3.png",
        "p4.png",
        "small.png",
        "sub/p5.jpg",
    ]
    small = collection.candidates.get(relative_path="small.png")
    assert (small.width, small.height, small.format, small.caption) == (40, 40, "PNG", "a tiny one")
    assert len(collection.problems) == 2
    assert any(p.startswith("notes.jpg: is not an image file") for p in collection.problems)
    assert any(p.startswith("uncaptioned.png: has no caption") for p in collection.problems)


def test_import_refuses_what_cannot_become_a_collection(collection, candidate_folder, tmp_path):
    with pytest.raises(services.TrainingError, match="already exists; choose another name"):
        services.import_candidate_collection("photos", str(candidate_folder))
    with pytest.raises(services.TrainingError, match="Candidate folder not found"):
        services.import_candidate_collection("elsewhere", str(tmp_path / "nowhere"))
    picture(1).save(tmp_path / "a.png")
    with pytest.raises(services.TrainingError, match="No captions.csv"):
        services.import_candidate_collection("uncaptioned", str(tmp_path))
    (tmp_path / "captions.csv").write_text("file,caption\nmissing.png,gone\n")
    with pytest.raises(services.TrainingError, match=r"No candidate in .* could be imported: .*missing\.png"):
        services.import_candidate_collection("nothing", str(tmp_path))
    assert list(CandidateCollection.objects.values_list("name", flat=True)) == ["photos"]


def test_stage_configuration_and_run_creation_refuse_with_the_fix(collection, models_dir):
    assert [type(s).__name__ for s in services.stages_from_config(FUNNEL_STAGES)] == [e["kind"] for e in FUNNEL_STAGES]
    for config, message in [
        ([{"kind": "BlurStage"}], "unknown kind 'BlurStage'; use one of ResolutionStage"),
        ([{"kind": "ResolutionStage", "min_height": 3}], "unknown field 'min_height'; it takes min_side"),
        ([{"kind": "ResolutionStage", "min_side": "big"}], "min_side must be an integer"),
        ([{"kind": "ResolutionStage", "min_side": 0}], r"stage 1 \(ResolutionStage\): min_side must be >= 1"),
        ([{"kind": "NearDuplicateStage"}, {"kind": "NearDuplicateStage"}], "'near_duplicate' is used twice"),
        ([], "non-empty JSON list"),
    ]:
        with pytest.raises(services.TrainingError, match=message):
            services.stages_from_config(config)
    with pytest.raises(services.TrainingError, match=r"clip_score, aesthetic need a CLIP model: give the path"):
        services.create_curation_run(collection)  # Emu's default stages
    with pytest.raises(services.TrainingError, match="aesthetic stage needs an aesthetic head"):
        services.create_curation_run(collection, FUNNEL_STAGES, clip_model_path=str(models_dir / "clip"))
    with pytest.raises(services.TrainingError, match="Aesthetic head not found"):
        services.create_curation_run(
            collection,
            FUNNEL_STAGES,
            clip_model_path=str(models_dir / "clip"),
            aesthetic_head_path=str(models_dir / "nohead.pth"),
        )
    run = services.create_curation_run(collection, CHEAP_STAGES)
    assert run.status == "queued" and run.stages[0] == {
        "kind": "ResolutionStage",
        "min_side": 64,
        "max_aspect_ratio": 2.0,
        "name": "resolution",
    }


# --- the funnel on a worker -----------------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_funnel_runs_on_the_worker_and_records_every_outcome_once(
    training_worker, collection, models_dir, staff_client
):
    run = services.create_curation_run(
        collection,
        FUNNEL_STAGES,
        clip_model_path=str(models_dir / "clip"),
        aesthetic_head_path=str(models_dir / "head.pth"),
    )
    services.start_curation_run(run)
    from training.tasks import run_curation_funnel

    run_curation_funnel.apply_async(args=[run.pk])  # a duplicate delivery of the same run
    wait_until_ended(run, training_worker)
    assert run.status == "finished", f"{run.error}\n{training_worker.log()}"

    stages = {s["name"]: s for s in run.report["stages"]}
    assert [(s["count_in"], s["count_out"]) for s in run.report["stages"]] == [(7, 6), (6, 6), (6, 5), (5, 5), (5, 5)]
    ocr = stages["text_in_image"]
    if curation.ocr_unavailable_reason() is None:  # tesseract here (CI installs it): it ran and found no words
        assert ocr["status"] == "ran"
    else:
        assert ocr["status"] == "skipped" and "OCR is unavailable" in ocr["skipped_reason"]
    assert run.report["histograms"]["aesthetic_score"]["n"] == 6  # the pair was scored to pick the better copy
    assert (run.count_in, run.count_kept) == (7, 5)

    outcomes = {o.candidate.relative_path: o for o in FunnelOutcome.objects.filter(run=run).select_related("candidate")}
    assert len(outcomes) == 7
    assert (
        outcomes["small.png"].stage == "resolution"
        and "short side 40 px < minimum 64 px" in outcomes["small.png"].reason
    )
    pair = [outcomes["p1.png"], outcomes["p1-large.png"]]
    duplicate = next(o for o in pair if not o.kept)
    keeper = next(o for o in pair if o.kept)
    assert duplicate.stage == "near_duplicate" and duplicate.duplicate_of == keeper.candidate.relative_path
    assert all(o.clip_score is not None and o.aesthetic_score is not None for o in outcomes.values() if o.kept)
    assert "phash" in outcomes["p2.png"].scores

    # A late delivery after the end changes nothing.
    assert services.execute_curation_run(run.pk) == f"curation run {run.pk} had finished already"
    assert FunnelOutcome.objects.filter(run=run).count() == 7
    with pytest.raises(services.TrainingError, match="has finished; create a new run"):
        services.start_curation_run(run)

    # Pages, sheets and CSV for staff only.
    client = Client()  # anonymous; staff_client is the test's own client, logged in
    urls = [
        reverse("training:curation_collections"),
        reverse("training:curation_collection", args=[collection.pk]),
        reverse("training:curation_run_new", args=[collection.pk]),
        reverse("training:curation_run", args=[run.pk]),
        reverse("training:curation_sheet", args=[run.pk, "kept"]),
        reverse("training:curation_sheet", args=[run.pk, "rejected"]),
        reverse("training:curation_outcomes_csv", args=[run.pk]),
    ]
    for url in urls:
        assert client.get(url).status_code in (302, 403), url
    page = staff_client.get(urls[3]).content.decode()
    assert "finished" in page and "near_duplicate" in page and "text_in_image" in page and "short side 40 px" in page
    assert ("OCR is unavailable" in page) == (ocr["status"] == "skipped")
    assert 'id="histogram-clip_score"' in page
    for url in urls[4:6]:
        response = staff_client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(b"".join(response.streaming_content))).width > 0
    assert (services.curation_run_dir(run) / "sheet-kept.png").is_file()
    csv_text = staff_client.get(urls[6]).content.decode()
    assert csv_text.splitlines()[0].startswith("file,caption,kept,stage,reason") and len(csv_text.splitlines()) == 8
    assert "Import problems (2)" in staff_client.get(urls[1]).content.decode()

    other = get_user_model().objects.create_user("rater", password="pw-long-enough-2")
    client.force_login(other)
    assert client.get(urls[3]).status_code in (302, 403)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_clip_model_gone_at_execution_fails_the_run_with_the_fix_and_it_can_start_again(
    training_worker, collection, models_dir, tmp_path
):
    clip = shutil.copytree(models_dir / "clip", tmp_path / "clip")
    run = services.create_curation_run(
        collection, [{"kind": "ClipScoreStage", "min_score": -100.0}], clip_model_path=str(clip)
    )
    shutil.rmtree(clip)
    services.start_curation_run(run)
    wait_until_ended(run, training_worker)
    assert run.status == "failed"
    assert (
        run.error.startswith("The CLIP model cannot be loaded: CLIP weights not found")
        and "start the run again" in run.error
    )
    assert not FunnelOutcome.objects.filter(run=run).exists()

    shutil.copytree(models_dir / "clip", clip)
    services.start_curation_run(run)
    wait_until_ended(run, training_worker)
    assert run.status == "finished" and run.error == "" and run.outcomes.count() == 7


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_curate_command_imports_runs_and_reports(training_worker, candidate_folder, tmp_path):
    out = io.StringIO()
    call_command("curate", "import", "cmd-photos", str(candidate_folder), stdout=out)
    assert "Imported 7 candidates into cmd-photos" in out.getvalue() and "problem: notes.jpg" in out.getvalue()
    with pytest.raises(CommandError, match="already exists"):
        call_command("curate", "import", "cmd-photos", str(candidate_folder))

    stages_file = tmp_path / "stages.json"
    stages_file.write_text(json.dumps(CHEAP_STAGES))
    with pytest.raises(CommandError, match="need a CLIP model"):
        call_command("curate", "funnel", "cmd-photos")
    with pytest.raises(CommandError, match="No candidate collection named 'nope'"):
        call_command("curate", "funnel", "nope", "--stages", str(stages_file))
    out = io.StringIO()
    call_command(
        "curate", "funnel", "cmd-photos", "--stages", str(stages_file), "--wait", "--timeout", "60", stdout=out
    )
    assert "resolution: 7 -> 6" in out.getvalue() and "near_duplicate: 6 -> 5" in out.getvalue()
    run = CurationRun.objects.get()
    assert "finished: 5 of 7 kept" in out.getvalue()

    out = io.StringIO()
    call_command("curate", "report", str(run.pk), stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["count_kept"] == 5 and len(summary["outcomes"]) == 7
    call_command(
        "curate", "report", str(run.pk), "--format", "csv", "--out", str(tmp_path / "r.csv"), stdout=io.StringIO()
    )
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 8
    with pytest.raises(CommandError, match="No curation run 999999"):
        call_command("curate", "report", "999999")


def test_a_duplicate_delivery_while_another_worker_computes_writes_nothing(collection):
    run = services.create_curation_run(collection, CHEAP_STAGES)
    folder = services.curation_run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / services.CURATION_LOCK_FILE, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # the first delivery, still computing
        CurationRun.objects.filter(pk=run.pk).update(status="running")
        assert "being computed by another worker" in services.execute_curation_run(run.pk)
        assert not FunnelOutcome.objects.filter(run=run).exists()
    # Its worker died (the lock went with it): the redelivered task takes the run over.
    assert services.execute_curation_run(run.pk) == f"curation run {run.pk} finished"
    run.refresh_from_db()
    assert run.status == "finished" and run.outcomes.count() == 7 and run.count_kept == 5


# --- freezing a selection, a head from ratings ------------------------------------------------------------


def test_freeze_copies_the_selection_into_a_dataset_that_loads_with_the_same_hash(collection, settings, tmp_path):
    settings.NEEDLE_TRAINING_DIR = tmp_path / "training"
    chosen = list(collection.candidates.filter(relative_path__in=["p2.png", "sub/p5.jpg", "p3.png"]))
    entries = [(c, f"edited: {c.caption}") for c in chosen]
    dataset = services.freeze_curated_dataset("best-three", entries, description="hand-picked")

    folder = tmp_path / "training" / "datasets" / "best-three"
    assert dataset.path == str(folder) and dataset.image_count == 3
    loaded = load_curated_dataset(folder)
    assert loaded.content_hash == dataset.content_hash
    assert sorted(i.file_name for i in loaded.images) == ["p2.png", "p3.png", "sub__p5.jpg"]
    assert "edited: pattern five" in loaded.captions
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left behind

    with pytest.raises(services.TrainingError, match="A curated dataset named 'best-three' already exists"):
        services.freeze_curated_dataset("best-three", entries)
    (folder.parent / "stray").mkdir()
    with pytest.raises(services.TrainingError, match="stray already exists; choose another dataset name"):
        services.freeze_curated_dataset("stray", entries)
    with pytest.raises(services.TrainingError, match="empty caption"):
        services.freeze_curated_dataset("blank", [(chosen[0], "  ")])


def test_an_aesthetic_head_trained_from_ratings_loads_and_scores(collection, models_dir, tmp_path):
    rows = list(collection.candidates.all())
    ratings = [(row, 1 + i % 5) for i, row in enumerate(rows)] + [(rows[0], 3)]
    path = services.train_aesthetic_head_from_ratings(
        ratings, clip_model_path=str(models_dir / "clip"), out_path=tmp_path / "head.pth"
    )
    head = AestheticHead.load(path)
    assert head.input_dim == 32 and head.predict(np.ones((2, 32), np.float32)).shape == (2,)
    with pytest.raises(services.TrainingError, match="ratings run from 1 to 5"):
        services.train_aesthetic_head_from_ratings(
            [(rows[0], 7)], clip_model_path=str(models_dir / "clip"), out_path=tmp_path / "x.pth"
        )


def test_the_forms_import_a_folder_and_show_a_run_s_refusal_next_to_its_field(
    db, staff_client, candidate_folder, tmp_path
):
    url = reverse("training:curation_collections")
    page = staff_client.post(url, {"name": "web-photos", "path": str(tmp_path / "nowhere")}).content.decode()
    assert "Candidate folder not found" in page
    response = staff_client.post(url, {"name": "web-photos", "path": str(candidate_folder)})
    collection = CandidateCollection.objects.get(name="web-photos")
    assert response.status_code == 302 and response["Location"] == reverse(
        "training:curation_collection", args=[collection.pk]
    )

    new_run = reverse("training:curation_run_new", args=[collection.pk])
    form = staff_client.get(new_run).content.decode()
    assert 'name="min_side" value="512"' in form and 'name="aesthetic_min_score" value="5.0"' in form
    data = {
        "use_resolution": "on",
        "min_side": 512,
        "max_aspect_ratio": 2.0,
        "max_words": 5,
        "max_hamming": 6,
        "use_clip_score": "on",
        "clip_min_score": 28,
        "aesthetic_min_score": 5,
    }
    page = staff_client.post(new_run, data).content.decode()
    assert 'id="clip_model_path-error"' in page and "need a CLIP model" in page
    assert not CurationRun.objects.exists()


def test_the_outcomes_csv_neutralises_formulas_in_captions_and_reasons_and_keeps_negative_scores(db, tmp_path):
    from training.models import Candidate
    from training.selectors import write_outcomes_csv
    from training.tests.test_review_stages import make_funnel

    run = make_funnel(tmp_path / "photos", [(-2.5, -0.125)], rejected=1)
    formulas = ['=HYPERLINK("http://x")', "\rx"]
    for candidate, caption in zip(Candidate.objects.order_by("pk"), formulas):
        Candidate.objects.filter(pk=candidate.pk).update(caption=caption)
    FunnelOutcome.objects.filter(run=run, kept=False).update(reason="-2+3", stage="@SUM(A1)")
    stream = io.StringIO(newline="")
    assert write_outcomes_csv(run, stream) == 2
    kept, rejected = csv.DictReader(io.StringIO(stream.getvalue(), newline=""))
    assert (kept["caption"], kept["aesthetic_score"], kept["clip_score"]) == ("'" + formulas[0], "-2.5", "-0.125")
    assert (rejected["caption"], rejected["reason"], rejected["stage"]) == ("'\rx", "'-2+3", "'@SUM(A1)")
