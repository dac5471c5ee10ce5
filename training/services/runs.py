"""Quality-tuning runs: their settings, their base model, creating, starting and cancelling them.

Whether a run is stale, lost or may start is read by ``training.selectors`` (is_stale, is_lost, can_start); the
task that trains it is ``training.services.trainer``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import socket
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.task_queue import enqueue_on_commit
from generation.models import TextToImageModel
from generation.pipelines import PipelineDirectoryError, fingerprint_directory
from training.config import InvalidConfigError, QualityTuningConfig
from training.models import CuratedDataset, QualityTuningRun
from training.selectors import can_start, is_lost, last_report, resumable_at, run_processes
from training.services.aesthetic_scoring import load_aesthetic_scoring
from training.services.common import TrainingError, training_dir
from training.services.datasets import verify_dataset
from training.trainer_process import process_alive

Status = QualityTuningRun.Status
# Config fields whose default is not None but which the trainer's command line cannot set to None.
_NOT_NONE_ON_COMMAND_LINE = {f.name for f in dataclasses.fields(QualityTuningConfig) if f.default is not None}


def build_config(overrides: dict) -> QualityTuningConfig:
    """Emu's defaults overridden by ``overrides``; TrainingError naming every setting that cannot work.

    Every setting is checked here (types, finite numbers, ranges, how they combine), so a bad value is refused when
    the run is made or started, not by the trainer hours later.
    """
    if not isinstance(overrides, dict):
        raise TrainingError(
            f"invalid quality-tuning config: expected settings by name, not {type(overrides).__name__}."
        )
    try:
        config = QualityTuningConfig.from_dict(dict(overrides))
    except InvalidConfigError as exc:
        raise TrainingError(str(exc), errors=exc.problems) from None
    except TypeError as exc:
        raise TrainingError(f"invalid quality-tuning config: {exc}") from None
    for name in sorted(_NOT_NONE_ON_COMMAND_LINE):
        if getattr(config, name) is None:
            raise TrainingError(
                f"invalid quality-tuning config: {name} cannot be empty (its default is "
                f"{getattr(QualityTuningConfig(), name)!r}).",
                field=name,
            )
    return config


def check_base_unchanged(run: QualityTuningRun, *, missing: str, changed: str) -> None:
    """The run's base model directory still holds the weights the run was created on (fingerprint, no loading);
    else TrainingError ending with ``missing`` (the folder is gone) or ``changed`` (the files differ)."""
    base = run.base_model
    path = Path(base.pipeline_path)
    if not path.is_dir():
        separator = "" if missing.startswith(",") else " "
        raise TrainingError(f"Base model {base.name}: {path} no longer exists{separator}{missing}")
    fingerprint, _ = fingerprint_directory(path)
    if fingerprint != run.base_fingerprint:
        raise TrainingError(
            f"Base model {base.name}: the files in {path} changed since run {run.pk} was created (fingerprint "
            f"{fingerprint[:12]} != {run.base_fingerprint[:12]}); {changed}"
        )


def check_base_model(base_model: TextToImageModel):
    """The base model must still be a complete SD 1.x/2.x or SDXL base pipeline with the weights it was registered with."""
    from training.quality_tuning import check_base_pipeline  # imports torch: only when a run is made

    try:
        base = check_base_pipeline(base_model.pipeline_path)
    except PipelineDirectoryError as exc:
        raise TrainingError(f"Base model {base_model.name}: {exc}") from None
    if base.fingerprint != base_model.weights_fingerprint:
        raise TrainingError(
            f"Base model {base_model.name}: the files in {base_model.pipeline_path} changed since it was registered "
            f"(fingerprint {base.fingerprint[:12]} != {base_model.weights_fingerprint[:12]}); register the new weights "
            "as a new model and train that."
        )
    return base


def create_run(
    base_model: TextToImageModel,
    dataset: CuratedDataset,
    *,
    created_by=None,
    aesthetic_head_path: str = "",
    clip_model_path: str = "",
    clip_model_name: str = "",
    **config_overrides,
) -> QualityTuningRun:
    """A queued run of ``base_model`` on ``dataset`` (not started: see start_run). Emu's defaults for what is not given.

    With an aesthetic head and its CLIP model, each checkpoint's validation images
    are scored as the run goes (the automatic pick); they are loaded here once, so a
    wrong file is refused now rather than found out after hours of training.
    """
    config = build_config(config_overrides)
    aesthetic_head_path, clip_model_path, clip_model_name = (
        (aesthetic_head_path or "").strip(),
        (clip_model_path or "").strip(),
        (clip_model_name or "").strip(),
    )
    if aesthetic_head_path or clip_model_path or clip_model_name:
        load_aesthetic_scoring(aesthetic_head_path, clip_model_path, clip_model_name)
    check_base_model(base_model)
    verify_dataset(dataset)
    with transaction.atomic():
        run = QualityTuningRun.objects.create(
            base_model=base_model,
            base_fingerprint=base_model.weights_fingerprint,
            dataset=dataset,
            config=json.loads(json.dumps(config.to_dict())),
            run_dir="",
            max_steps=config.max_steps,
            aesthetic_head_path=aesthetic_head_path,
            clip_model_path=clip_model_path,
            clip_model_name=clip_model_name,
            created_by=created_by,
        )
        # Unique even if the database is recreated while run directories stay: a new run never resumes an old one.
        run.run_dir = str(training_dir() / "runs" / f"run-{run.pk:05d}-{secrets.token_hex(4)}")
        run.save(update_fields=["run_dir"])
    return run


def _busy_message(run: QualityTuningRun) -> str:
    """Why a running run cannot be started again now, and exactly when it can be if its worker died."""
    when = timezone.localtime(resumable_at(run))
    seen = int((timezone.now() - last_report(run)).total_seconds())
    host, pids = run_processes(run)
    if host == socket.gethostname() and any(process_alive(pid) for pid in pids):
        where = f"its task is alive on this machine (pid {', '.join(map(str, sorted(pids)))})"
    else:
        where = f"it runs on {host or 'another machine'}, where this server cannot see whether it is alive"
    return (
        f"Run {run.pk} is {run.status} ({where}; last report {seen} s ago), so it cannot be started twice. "
        f"If its worker died, it can be resumed from {when:%Y-%m-%d %H:%M:%S %Z} "
        f"(NEEDLE_TRAINING_STALE_SECONDS={settings.NEEDLE_TRAINING_STALE_SECONDS} after its last report); "
        "or cancel it first."
    )


def start_run(run: QualityTuningRun) -> QualityTuningRun:
    """Queue the training task (after commit). A failed or cancelled run resumes from its newest checkpoint.

    Safe to repeat on a queued run: a second task finds the first one's trainer
    (the run directory lock) and leaves.
    """
    with transaction.atomic():
        run = QualityTuningRun.objects.select_for_update().get(pk=run.pk)
        if run.status == Status.FINISHED:
            raise TrainingError(f"Run {run.pk} has finished; create a new run (or one with more steps) instead.")
        if not can_start(run):
            raise TrainingError(_busy_message(run))
        try:
            build_config(run.config)
        except TrainingError as exc:
            raise TrainingError(
                f"Run {run.pk} cannot start: {exc} Its settings are frozen: create a new run with valid settings.",
                errors=exc.errors,
            ) from None
        task_id = f"quality-tuning-{run.pk}-{secrets.token_hex(6)}"
        QualityTuningRun.objects.filter(pk=run.pk).update(
            status=Status.QUEUED, queued_at=timezone.now(), finished_at=None, error="", celery_task_id=task_id
        )
        enqueue_on_commit("training.tasks.run_quality_tuning", run.pk, task_id=task_id)
    run.refresh_from_db()
    return run


def cancel_run(run: QualityTuningRun) -> QualityTuningRun:
    """Stop a run: queued → cancelled; running → cancelling, and its task SIGTERMs the trainer (which checkpoints)."""
    with transaction.atomic():
        run = QualityTuningRun.objects.select_for_update().get(pk=run.pk)
        now = timezone.now()
        if run.status in QualityTuningRun.TERMINAL:
            raise TrainingError(f"Run {run.pk} is already {run.status}.")
        if run.status == Status.QUEUED or is_lost(run, now):
            # No trainer (or none that reports): nothing to stop. A task delivered later sees 'cancelled' and leaves.
            note = "" if run.status == Status.QUEUED else " (its worker had stopped reporting)"
            QualityTuningRun.objects.filter(pk=run.pk).update(
                status=Status.CANCELLED, finished_at=now, error=f"Cancelled{note}."
            )
        elif run.status == Status.RUNNING:
            QualityTuningRun.objects.filter(pk=run.pk).update(status=Status.CANCELLING)
    run.refresh_from_db()
    return run
