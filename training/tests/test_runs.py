"""Quality-tuning runs on a real Celery worker process (queue 'training'): train, register, compare; kill; cancel.

The worker starts the trainer as a subprocess (python -m training.quality_tuning)
and follows its run directory; these tests watch only the database rows and
pages, as a researcher would, plus the files where a kill must leave them intact.
"""

import os
import signal
import time
from pathlib import Path

import pytest
from django.urls import reverse
from safetensors.torch import load_file

from generation import services as generation_services
from generation.models import GeneratedImage, TextToImageModel
from training import checkpoints, services
from training.metrics import read_metrics
from training.models import QualityTuningRun
from training.tests.curated_datasets import TINY_VALIDATED_RUN
from training.trainer_process import TRAINER_LOG, trainer_is_running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


@pytest.fixture
def base_model(tiny_pipeline_dir):
    return generation_services.register_model(
        name="sd-base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=2, guidance_scale=5.0, width=32, height=32
    )


def wait_for(run, condition, what: str, worker, timeout: float = 120, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if condition(run):
            return run
        time.sleep(interval)
    raise AssertionError(
        f"run {run.pk} never {what} (status {run.status}, step {run.step}, error {run.error!r}):\n{worker.log()}"
    )


def ended(run):
    return run.status in QualityTuningRun.TERMINAL


def process_is_gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet (a container's PID 1 may not reap): either way it computes nothing."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def assert_loadable(checkpoint_dir: Path, step: int):
    assert checkpoints.read_training_state(checkpoint_dir)["step"] == step
    assert load_file(checkpoint_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_a_run_trains_on_the_worker_and_a_checkpoint_becomes_a_model_compared_with_its_base(
    training_worker, staff_client, base_model, dataset, prompt_set
):
    run = services.create_run(base_model, dataset, **TINY_VALIDATED_RUN)
    services.start_run(run)
    wait_for(run, ended, "ended", training_worker)
    assert run.status == "finished", f"{run.error}\n{training_worker.log()}"
    assert run.step == 6 and run.loss is not None and run.attempts == 1 and run.finished_at is not None

    progress = staff_client.get(reverse("training:run_progress", args=[run.pk])).json()
    assert progress["status"] == "finished" and progress["step"] == 6 and progress["loss"] == pytest.approx(run.loss)
    assert [c["step"] for c in progress["checkpoints"]] == [3, 6] and all(c["exists"] for c in progress["checkpoints"])
    page = staff_client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "finished" in page and "Register as a model" in page and "Compare with base" in page
    for url in (progress["loss_curve"], progress["validation_grid"]):
        response = staff_client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
        assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    recorded = {cp.step: cp for cp in run.checkpoints.all()}
    assert sorted(recorded) == [3, 6]
    for step, cp in recorded.items():
        assert Path(cp.path) == checkpoints.checkpoints_dir(run.run_dir) / checkpoints.checkpoint_name(step)
        assert cp.loss == pytest.approx(next(m["loss"] for m in read_metrics(run.run_dir) if m["step"] == step))

    # Register the last checkpoint from the page: a quality-tuned model whose parent is the base.
    response = staff_client.post(reverse("training:checkpoint_register", args=[run.pk, 6]), {"name": "sd-base-emu"})
    assert response.status_code == 302
    tuned = TextToImageModel.objects.get(name="sd-base-emu")
    assert tuned.source == TextToImageModel.Source.QUALITY_TUNED and tuned.parent == base_model
    assert tuned.weights_fingerprint != base_model.weights_fingerprint
    assert (tuned.default_width, tuned.default_height, tuned.default_steps) == (32, 32, 2)  # the base's settings
    last = recorded[6]
    last.refresh_from_db()
    assert last.registered_model == tuned and Path(last.exported_path) == Path(tuned.pipeline_path)
    lineage = last.lineage
    assert (
        lineage["base_fingerprint"] == base_model.weights_fingerprint
        and lineage["dataset_hash"] == dataset.content_hash
    )
    assert (
        lineage["step"] == 6
        and lineage["hyperparameters"]["batch_size"] == 4
        and lineage["hyperparameters"]["noise_offset"] == 0.1
    )
    assert dataset.content_hash[:12] in tuned.description and "step 6" in tuned.description
    assert services.register_checkpoint(last, "another-name") == tuned  # idempotent
    assert TextToImageModel.objects.filter(source="quality_tuned").count() == 1

    # generation.services renders with it like with any registered model.
    batch = generation_services.create_batch(models=[tuned], prompt_set=prompt_set, seeds=[0], parameters={"steps": 2})
    generation_services.generate_batch_in_process(batch)
    images = GeneratedImage.objects.filter(model=tuned)
    assert images.count() == prompt_set.prompts.count() and {(im.width, im.height) for im in images} == {(32, 32)}

    # One click: the campaign of the registered checkpoint against its base, both of Emu's criteria, as a draft.
    campaign = services.create_tuned_vs_base_campaign(last, prompt_set, "0-1")
    assert campaign.status == "draft" and campaign.seeds == [0, 1]
    assert [cm.model for cm in campaign.campaign_models.order_by("position")] == [base_model, tuned]
    assert set(campaign.criteria.values_list("criterion", flat=True)) == {"visual_appeal", "text_faithfulness"}
    # ... and from the page, for a checkpoint not registered yet: it is registered on the way.
    response = staff_client.post(
        reverse("training:checkpoint_compare", args=[run.pk, 3]), {"prompt_set": "four", "seeds": "0-3"}
    )
    assert response.status_code == 302 and "/annotation/campaigns/" in response["Location"]
    early = run.checkpoints.get(step=3).registered_model
    assert early.name == "sd-base-qt%d-step3" % run.pk and early.parent == base_model
    assert TextToImageModel.objects.filter(source="quality_tuned").count() == 2


def test_a_killed_worker_s_run_resumes_on_a_new_worker_and_leaves_no_orphan_trainer(
    training_worker, base_model, dataset
):
    config = {**TINY_VALIDATED_RUN, "max_steps": 120, "checkpoint_every": 20, "validation_every": 1000}
    run = services.create_run(base_model, dataset, **config)
    services.start_run(run)
    wait_for(run, lambda r: r.checkpoints.exists() or ended(r), "recorded a checkpoint", training_worker, interval=0.02)
    assert run.status == "running", f"{run.status}: {run.error}"
    first = run.checkpoints.get()
    trainer_pid = run.trainer_pid
    assert trainer_pid and not process_is_gone(trainer_pid)

    training_worker.kill()  # SIGKILL to the worker's process group: no cleanup, no acknowledgement
    # SIGKILL reaches the trainer at once; its lock goes when its last thread has exited (one may be mid-write).
    deadline = time.monotonic() + 20
    while (not process_is_gone(trainer_pid) or trainer_is_running(run.run_dir)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_is_gone(trainer_pid), "the trainer outlived its worker"
    assert not trainer_is_running(run.run_dir), "the run directory is still locked"
    trained = len(read_metrics(run.run_dir))
    time.sleep(1.5)
    assert len(read_metrics(run.run_dir)) == trained, "something still trains in the run directory"
    run.refresh_from_db()
    assert run.status == "running" and run.step < 120  # as the dead worker left it
    assert_loadable(Path(first.path), first.step)
    resume_from = checkpoints.checkpoint_step(checkpoints.latest_checkpoint(run.run_dir))

    training_worker.start()  # the broker hands the unacknowledged task to the new worker
    wait_for(run, ended, "ended after the kill", training_worker)
    assert run.status == "finished", f"{run.error}\n{training_worker.log()}"
    assert run.step == 120 and run.attempts == 2
    assert sorted(run.checkpoints.values_list("step", flat=True)) == [20, 40, 60, 80, 100, 120]
    assert_loadable(Path(first.path), first.step)  # the checkpoint reported before the kill is intact
    assert [m["step"] for m in read_metrics(run.run_dir)] == list(range(1, 121))
    first_attempt, second_attempt = (Path(run.run_dir) / TRAINER_LOG).read_text().split("=== attempt 2")
    assert "started at step 0" in first_attempt and f"started at step {resume_from}" in second_attempt


def test_a_duplicate_delivery_leaves_a_preempted_trainer_resumes_and_a_cancel_stops_it_with_a_checkpoint(
    training_worker, staff_client, base_model, dataset
):
    config = {**TINY_VALIDATED_RUN, "max_steps": 100_000, "checkpoint_every": 100_000, "validation_every": 100_000}
    run = services.create_run(base_model, dataset, **config)
    services.start_run(run)
    wait_for(run, lambda r: r.step >= 3 or ended(r), "reached step 3", training_worker, interval=0.1)
    assert run.status == "running", run.error
    trainer_pid = run.trainer_pid

    # The broker delivers the task a second time while the trainer runs: the copy finds the run directory locked.
    assert "duplicate delivery" in services.execute_run(run.pk, task_id="duplicate")
    run.refresh_from_db()
    assert run.status == "running" and run.attempts == 1 and run.trainer_pid == trainer_pid

    # SIGTERM from outside (a worker's warm shutdown, a preemption notice): it checkpoints, the run is queued again
    # and resumes from that checkpoint.
    os.kill(trainer_pid, signal.SIGTERM)
    wait_for(
        run,
        lambda r: (r.attempts == 2 and r.step > r.checkpoints.get().step + 1) or ended(r),
        "resumed after the preemption",
        training_worker,
        interval=0.1,
    )
    preempted_at = run.checkpoints.get().step
    assert run.status == "running" and run.trainer_pid != trainer_pid, run.error
    second_attempt = (Path(run.run_dir) / TRAINER_LOG).read_text().split("=== attempt 2")[1]
    assert f"started at step {preempted_at}" in second_attempt

    # Cancel from the page: the trainer finishes its step, checkpoints and stops.
    response = staff_client.post(reverse("training:run_cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status in ("cancelling", "cancelled")
    wait_for(run, ended, "ended after cancel", training_worker)
    assert run.status == "cancelled", f"{run.error}\n{training_worker.log()}"
    assert preempted_at < run.step < 100_000 and run.error == f"Cancelled at step {run.step}."
    assert sorted(run.checkpoints.values_list("step", flat=True)) == [preempted_at, run.step]
    assert_loadable(Path(run.checkpoints.get(step=run.step).path), run.step)
    progress = staff_client.get(reverse("training:run_progress", args=[run.pk])).json()
    assert (
        progress["status"] == "cancelled" and progress["eta"] == "" and progress["checkpoints"][-1]["step"] == run.step
    )
    with pytest.raises(services.TrainingError, match="already cancelled"):
        services.cancel_run(run)
