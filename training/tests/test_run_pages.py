"""Training pages and the command without a worker: staff only, queue/cancel/status, the task's no-op paths,
the trainer tied to its parent's life, and following metrics.jsonl."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from generation.models import TextToImageModel
from training import selectors, services
from training.models import CandidateCollection, CurationRun, QualityTuningRun, RunCheckpoint
from training.trainer_process import MetricsTail

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


def training_urls(run, step):
    gets = [
        reverse("training:run_list"),
        reverse("training:run_new"),
        reverse("training:dataset_list"),
        reverse("training:run_detail", args=[run.pk]),
        reverse("training:run_progress", args=[run.pk]),
        reverse("training:loss_curve", args=[run.pk]),
        reverse("training:validation_grid", args=[run.pk]),
        reverse("training:trainer_log", args=[run.pk]),
        reverse("training:win_rate_curve", args=[run.pk]),
    ]
    posts = [
        reverse("training:run_new"),
        reverse("training:dataset_list"),
        reverse("training:run_cancel", args=[run.pk]),
        reverse("training:run_start", args=[run.pk]),
        reverse("training:checkpoint_register", args=[run.pk, step]),
        reverse("training:checkpoint_compare", args=[run.pk, step]),
        reverse("training:checkpoint_campaign_create", args=[run.pk]),
        reverse("training:score_validation", args=[run.pk]),
    ]
    return gets, posts


def test_every_training_url_is_refused_to_anonymous_and_non_staff_users(client, run, tmp_path):
    from django.urls import get_resolver

    checkpoint = RunCheckpoint.objects.create(run=run, step=3, path=str(tmp_path), saved_at=timezone.now())
    gets, posts = training_urls(run, checkpoint.step)
    named = {p.name for p in get_resolver("training.urls").url_patterns}
    assert named == {
        reverse_name.split(":")[1]
        for reverse_name in [
            "training:run_list",
            "training:run_new",
            "training:dataset_list",
            "training:run_detail",
            "training:run_progress",
            "training:loss_curve",
            "training:validation_grid",
            "training:trainer_log",
            "training:run_cancel",
            "training:run_start",
            "training:checkpoint_register",
            "training:checkpoint_compare",
            "training:checkpoint_campaign_create",
            "training:score_validation",
            "training:win_rate_curve",
            "training:curation_collections",
            "training:curation_collection",
            "training:curation_run_new",
            "training:curation_run",
            "training:curation_run_start",
            "training:curation_sheet",
            "training:curation_outcomes_csv",
        ]
    }, "a new URL needs a line here"
    collection = CandidateCollection.objects.create(name="candidates", path=str(tmp_path))
    curation = CurationRun.objects.create(collection=collection, stages=[])
    gets += [
        reverse("training:curation_collections"),
        reverse("training:curation_collection", args=[collection.pk]),
        reverse("training:curation_run", args=[curation.pk]),
        reverse("training:curation_sheet", args=[curation.pk, "kept"]),
        reverse("training:curation_outcomes_csv", args=[curation.pk]),
    ]
    posts += [
        reverse("training:curation_run_new", args=[collection.pk]),
        reverse("training:curation_run_start", args=[curation.pk]),
    ]
    for who in ("anonymous", "non-staff"):
        if who == "non-staff":
            client.force_login(get_user_model().objects.create_user("rater", password="pw-long-enough-1"))
        for url in gets:
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], (who, url)
        for url in posts:
            response = client.post(url, {"name": "x", "path": "/tmp", "prompt_set": "four", "seeds": "0"})
            assert response.status_code == 302 and "/admin/login/" in response["Location"], (who, url)
    run.refresh_from_db()
    assert run.status == "queued" and not run.celery_task_id and QualityTuningRun.objects.count() == 1
    assert not TextToImageModel.objects.filter(source="quality_tuned").exists()


def test_staff_see_the_run_pages_admin_and_progress(client, run):
    client.force_login(
        get_user_model().objects.create_user(
            "researcher", password="pw-long-enough-1", is_staff=True, is_superuser=True
        )
    )
    for name in ("curateddataset", "qualitytuningrun", "runcheckpoint"):
        assert client.get(reverse(f"admin:training_{name}_changelist")).status_code == 200
    assert client.get(reverse("admin:training_qualitytuningrun_change", args=[run.pk])).status_code == 200
    assert client.get(reverse("admin:training_qualitytuningrun_add"))["Location"] == reverse("training:run_new")
    assert "run %d" % run.pk in client.get(reverse("training:run_list")).content.decode()
    page = client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "queued" in page and "No checkpoint yet" in page and "Cancel" in page and run.run_dir in page
    progress = client.get(reverse("training:run_progress", args=[run.pk])).json()
    assert progress["status"] == "queued" and progress["max_steps"] == 6 and progress["loss_curve"] is None
    assert client.get(reverse("training:loss_curve", args=[run.pk])).status_code == 404  # not drawn yet
    response = client.post(reverse("training:run_cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_the_command_queues_cancels_resumes_and_reports(run, capsys):
    call_command(
        "quality_tune",
        "start",
        "--base",
        "sd-base",
        "--dataset",
        "shapes",
        "--max-steps",
        "8",
        "--resolution",
        "32",
        "--batch-size",
        "4",
        "--no-center-crop",
    )
    started = QualityTuningRun.objects.exclude(pk=run.pk).get()
    assert started.status == "queued" and started.celery_task_id and started.max_steps == 8
    assert started.config["center_crop"] is False and started.config["noise_offset"] == 0.1
    call_command("quality_tune", "status", str(started.pk))
    out = capsys.readouterr().out
    assert f"Run {started.pk} queued" in out and "Step 0 / 8 (0%)" in out and "sd-base on shapes: queued" in out
    call_command("quality_tune", "cancel", str(started.pk))
    started.refresh_from_db()
    assert started.status == "cancelled" and started.finished_at is not None
    with pytest.raises(CommandError, match="already cancelled"):
        call_command("quality_tune", "cancel", str(started.pk))
    call_command("quality_tune", "resume", str(started.pk))
    started.refresh_from_db()
    assert started.status == "queued" and started.error == ""
    with pytest.raises(CommandError, match="has no checkpoint at step 3 .checkpoints: none yet"):
        call_command("quality_tune", "register", str(started.pk), "--step", "3", "--name", "x")
    with pytest.raises(CommandError, match="There is no run 999"):
        call_command("quality_tune", "status", "999")
    call_command("quality_tune", "list")
    assert "queued" in capsys.readouterr().out


def test_the_task_does_nothing_for_ended_runs_and_finishes_a_cancel_nobody_followed(run):
    QualityTuningRun.objects.filter(pk=run.pk).update(status="cancelled")
    assert "is cancelled" in services.execute_run(run.pk)
    QualityTuningRun.objects.filter(pk=run.pk).update(status="cancelling")  # its worker died while cancelling
    assert "cancelled while no trainer ran" in services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.attempts == 0
    assert "no longer exists" in services.execute_run(run.pk + 1000)
    # A run whose worker stopped reporting can be cancelled or resumed from the page.
    QualityTuningRun.objects.filter(pk=run.pk).update(
        status="running", heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    run.refresh_from_db()
    assert selectors.is_stale(run) and selectors.can_start(run)
    assert services.cancel_run(run).status == "cancelled"


PARENT = """
import os, sys, time
import django
django.setup()
from training.trainer_process import spawn_trainer
child = spawn_trainer([sys.executable, "-c", "import time; time.sleep(120)"], open(os.devnull, "wb"))
print(child.pid, flush=True)
time.sleep(120)
"""


def process_is_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_trainer_dies_with_the_process_that_started_it():
    """Killing only the task's process (not its group) must not leave the trainer running as an orphan."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "evalsite.settings", "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        child = int(parent.stdout.readline())
        assert not process_is_gone(child)
        assert os.getpgid(child) == os.getpgid(parent.pid)  # killing the worker's group reaches it too
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not process_is_gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_is_gone(child), "the trainer outlived the process that started it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def test_following_metrics_reads_only_new_complete_lines_and_starts_over_after_a_rewrite(tmp_path):
    tail = MetricsTail(tmp_path)
    assert tail.poll() is False and tail.last is None
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "w") as fh:
        fh.write(
            json.dumps({"step": 1, "loss": 0.5})
            + "\n"
            + json.dumps({"step": 2, "loss": 0.4})
            + "\n"
            + '{"step": 3, "lo'
        )
    assert tail.poll() is True and tail.last["step"] == 2 and tail.losses == {1: 0.5, 2: 0.4}
    with open(metrics, "a") as fh:
        fh.write('ss": 0.3}\n')
    assert tail.poll() is True and tail.last == {"step": 3, "loss": 0.3}
    assert tail.poll() is False
    # A resume from step 1 rewrites the file (a new one, renamed into place): reading starts over.
    replacement = tmp_path / ".metrics.new"
    replacement.write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    replacement.replace(metrics)
    assert tail.poll() is True and tail.last["step"] == 1 and tail.losses == {1: 0.5}
