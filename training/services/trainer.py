"""The quality-tuning task's body: claim the run, start the trainer, follow what it writes, record how it ended.

A run trains in a subprocess, ``python -m training.quality_tuning`` (or the
launcher in NEEDLE_TRAINING_LAUNCHER, e.g. ``accelerate launch``), never in the
worker process itself: accelerate keeps per-process state, and a separate
process can be stopped with SIGTERM (it checkpoints and exits) without
touching the worker. ``execute_run`` (the task's body) starts that process and
follows it through the files it writes: ``metrics.jsonl`` for step, loss and
speed, ``checkpoints/step-*`` for checkpoints, which are recorded as
RunCheckpoint rows once they are complete on disk.

The task is idempotent. A redelivered task (the worker was killed, acks_late)
starts the trainer again on the same run directory, which resumes from its
newest checkpoint. A duplicate delivery while a trainer still runs finds the
run directory's lock held and leaves. The trainer dies with the process that
started it (PR_SET_PDEATHSIG on Linux, and it shares the worker's process
group), so a killed worker never leaves an orphan training behind. Starting and
reading the process (no database) is ``training.trainer_process``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import signal
import socket
import sys
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from training import checkpoints
from training.config import QualityTuningConfig
from training.models import QualityTuningRun, RunCheckpoint
from training.selectors import follower_alive
from training.services.aesthetic_scoring import FollowerScoring
from training.services.common import TrainingError, cache_dir
from training.services.datasets import verify_dataset
from training.services.runs import build_config, check_base_unchanged
from training.trainer_process import (
    IN_USE_MESSAGE,
    STOP_GRACE_SECONDS,
    TRAINER_LOG,
    MetricsTail,
    log_section,
    one_line,
    signal_name,
    spawn_trainer,
    stop_trainer,
    trainer_error,
    trainer_is_running,
    trainer_result,
)

logger = logging.getLogger(__name__)

Status = QualityTuningRun.Status
TRAINER_MODULE = "training.quality_tuning"
# How long a redelivered task waits for a killed trainer to release the run directory (see _wait_for_a_dying_trainer).
DYING_TRAINER_WAIT_SECONDS = 60


def config_flags(config: dict) -> list[str]:
    """The trainer's command-line flags for a stored config (None fields are left to the trainer's resolution)."""
    flags = []
    for field in dataclasses.fields(QualityTuningConfig):
        value = config.get(field.name)
        if value is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + field.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, repr(value) if isinstance(value, float) else str(value)]
    return flags


def trainer_command(run: QualityTuningRun) -> list[str]:
    launcher = shlex.split(settings.NEEDLE_TRAINING_LAUNCHER) or [sys.executable]
    return [
        *launcher,
        "-m",
        TRAINER_MODULE,
        "--base",
        run.base_model.pipeline_path,
        "--dataset",
        run.dataset.path,
        "--run-dir",
        run.run_dir,
        "--cache-dir",
        str(cache_dir()),
        *config_flags(run.config),
    ]


class Follower:
    """Mirrors what the trainer writes into the run's row and its RunCheckpoint rows."""

    def __init__(self, run: QualityTuningRun):
        self.run = run
        self.run_dir = Path(run.run_dir)
        self.metrics = MetricsTail(self.run_dir)
        self.recorded = set(run.checkpoints.values_list("step", flat=True))
        self.scoring = FollowerScoring(run)

    def sync(self) -> None:
        changed = self.metrics.poll()
        fields = {"heartbeat_at": timezone.now()}
        if changed and self.metrics.last:
            last = self.metrics.last
            seconds = last.get("seconds_per_step")
            fields.update(
                step=last["step"],
                loss=last.get("loss"),
                seconds_per_step=seconds,
                eta_seconds=seconds * max(0, self.run.max_steps - last["step"]) if seconds is not None else None,
            )
        QualityTuningRun.objects.filter(pk=self.run.pk).update(**fields)
        for path in checkpoints.list_checkpoints(self.run_dir):
            step = checkpoints.checkpoint_step(path)
            if step not in self.recorded:
                self.record_checkpoint(path, step)
        # After the checkpoints: a step's validation images are rendered once its checkpoint is saved.
        self.scoring.sync()

    def record_checkpoint(self, path: Path, step: int) -> None:
        try:
            saved = (path / checkpoints.TRAINING_STATE_FILE).stat().st_mtime
        except FileNotFoundError:  # pruned between the listing and now
            return
        RunCheckpoint.objects.get_or_create(
            run_id=self.run.pk,
            step=step,
            defaults={
                "path": str(path),
                "saved_at": datetime.fromtimestamp(saved, tz=dt_timezone.utc),
                "loss": self.metrics.losses.get(step),
            },
        )
        self.recorded.add(step)
        logger.info("run %s: checkpoint at step %s recorded", self.run.pk, step)

    def status(self) -> str:
        return QualityTuningRun.objects.filter(pk=self.run.pk).values_list("status", flat=True).first()


def _wait_for_a_dying_trainer(run_id: int) -> None:
    """A SIGKILLed trainer holds the run directory's lock until its last thread has exited, which can take a while
    (a thread blocked writing a checkpoint). When nothing reports on the run any more, give it time to go."""
    run = QualityTuningRun.objects.filter(pk=run_id).first()
    deadline = time.monotonic() + DYING_TRAINER_WAIT_SECONDS
    while (
        run is not None
        and run.status not in QualityTuningRun.TERMINAL
        and time.monotonic() < deadline
        and trainer_is_running(run.run_dir)
        and not follower_alive(run)
    ):
        time.sleep(0.5)
        run.refresh_from_db()


def _claim(run_id: int, task_id: str) -> tuple[QualityTuningRun | None, str]:
    """Take the run for this task, or say why not (finished, cancelled, another trainer alive)."""
    with transaction.atomic():
        run = (
            QualityTuningRun.objects.select_for_update()
            .select_related("base_model", "dataset")
            .filter(pk=run_id)
            .first()
        )
        if run is None:
            return None, f"run {run_id} no longer exists"
        if run.status in QualityTuningRun.TERMINAL:
            return None, f"run {run_id} is {run.status}"
        if trainer_is_running(run.run_dir):
            return None, f"run {run_id} is being trained by another task (duplicate delivery)"
        now = timezone.now()
        if run.status == Status.CANCELLING:
            QualityTuningRun.objects.filter(pk=run_id).update(status=Status.CANCELLED, finished_at=now)
            return None, f"run {run_id} was cancelled while no trainer ran"
        QualityTuningRun.objects.filter(pk=run_id).update(
            status=Status.RUNNING,
            attempts=run.attempts + 1,
            started_at=run.started_at or now,
            heartbeat_at=now,
            celery_task_id=task_id or run.celery_task_id,
            worker=f"{socket.gethostname()} pid {os.getpid()}",
            trainer_pid=None,
            error="",
            finished_at=None,
        )
    run.refresh_from_db()
    return run, ""


def _finish(run_id: int, status: str, error: str = "", *, only_if_active: bool = True) -> None:
    runs = QualityTuningRun.objects.filter(pk=run_id)
    if only_if_active:
        runs = runs.filter(status__in=QualityTuningRun.ACTIVE)
    now = timezone.now()
    changes = {"status": status, "error": error[:5000], "trainer_pid": None, "heartbeat_at": now}
    if status in QualityTuningRun.TERMINAL:
        changes.update(finished_at=now, eta_seconds=None)
    runs.update(**changes)


def execute_run(run_id: int, *, task_id: str = "", requeue=None) -> str:
    """Train the run to its end in a subprocess and follow it; returns what happened, in words (for the task's log).

    ``requeue`` is called (after commit) when the trainer was stopped from
    outside, e.g. a worker's warm shutdown sent it SIGTERM: the run goes back
    to the queue and resumes elsewhere.
    """
    for _ in range(3):
        _wait_for_a_dying_trainer(run_id)
        run, reason = _claim(run_id, task_id)
        if run is None:
            logger.info("quality-tuning task for run %s does nothing: %s", run_id, reason)
            return reason
        try:
            build_config(run.config)
            check_base_model_files(run)
            verify_dataset(run.dataset)
        except TrainingError as exc:
            _finish(run_id, Status.FAILED, one_line(str(exc)))
            return f"run {run_id} failed: {exc}"
        outcome = _train_and_follow(run, requeue)
        if outcome != "lock-race":
            return outcome
        if trainer_is_running(run.run_dir):  # a genuine second delivery won the lock: it follows the trainer now
            return f"run {run_id} is being trained by another task (duplicate delivery)"
        time.sleep(1)
    _finish(run_id, Status.FAILED, f"Could not take the lock of {run.run_dir} after 3 tries; start the run again.")
    return f"run {run_id} failed: run directory lock"


def check_base_model_files(run: QualityTuningRun) -> None:
    """The base model's directory still holds the weights the run was created on (cheap: no model loading)."""
    check_base_unchanged(
        run,
        missing="on this worker. Mount the model directory here or register the model again.",
        changed="the run cannot go on with other weights.",
    )


def _train_and_follow(run: QualityTuningRun, requeue) -> str:
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / TRAINER_LOG
    with open(log_path, "ab") as log:
        log.write(
            f"\n=== attempt {run.attempts} at {timezone.now():%Y-%m-%d %H:%M:%S %Z} on {socket.gethostname()} "
            f"(task pid {os.getpid()}) ===\n".encode()
        )
        log.flush()
        offset = log.tell()
        command = trainer_command(run)
        log.write(("$ " + shlex.join(command) + "\n").encode())
        log.flush()
        process = spawn_trainer(command, log)
    QualityTuningRun.objects.filter(pk=run.pk).update(trainer_pid=process.pid)
    logger.info("run %s: trainer pid %s started (attempt %s)", run.pk, process.pid, run.attempts)
    follower = Follower(run)
    stop_sent_at = None
    try:
        while process.poll() is None:
            try:
                follower.sync()
                status = follower.status()
                if status == Status.QUEUED:  # re-queued as stale while this task still followed: it is alive
                    QualityTuningRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(status=Status.RUNNING)
                if status in (Status.CANCELLING, Status.CANCELLED) and stop_sent_at is None:
                    logger.info("run %s: cancelling, SIGTERM to trainer pid %s", run.pk, process.pid)
                    process.send_signal(signal.SIGTERM)  # it finishes the step, checkpoints and exits 0
                    stop_sent_at = time.monotonic()
            except DatabaseError:
                logger.exception("run %s: database unavailable; the trainer goes on", run.pk)
                connection.close()
            if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_SECONDS:
                process.kill()
            time.sleep(settings.NEEDLE_TRAINING_POLL_SECONDS)
    except BaseException:
        # The task itself is going away (an error here, a hard time limit): stop the trainer cleanly first.
        stop_trainer(process)
        with contextlib.suppress(Exception):
            _finish(run.pk, Status.FAILED, "The task following the trainer stopped unexpectedly; resume the run.")
        raise
    follower.sync()
    output = log_section(log_path, offset)
    result = trainer_result(output)
    code = process.returncode
    step = QualityTuningRun.objects.values_list("step", flat=True).get(pk=run.pk)
    status = follower.status()
    cancelled = status in (Status.CANCELLING, Status.CANCELLED)
    if code == 0 and result is not None and not result["stopped"]:
        _finish(run.pk, Status.FINISHED)
        return f"run {run.pk} finished at step {result['step']}"
    if cancelled:
        if code == 0:
            note = ""
        elif code == -signal.SIGTERM:
            note = " (before the trainer began training, so without a new checkpoint)"
        else:
            note = f" (the trainer exited with {code} while stopping)"
        _finish(run.pk, Status.CANCELLED, f"Cancelled at step {step}{note}.", only_if_active=status != Status.CANCELLED)
        return f"run {run.pk} cancelled at step {step}"
    if code == 0 and result is not None:
        # SIGTERM from outside (the worker's warm shutdown, a scheduler's preemption): checkpointed; go on elsewhere.
        with transaction.atomic():
            QualityTuningRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
                status=Status.QUEUED,
                trainer_pid=None,
                queued_at=timezone.now(),
                error=f"The trainer was stopped from outside at step {step}; queued again to resume.",
            )
            if requeue is not None:
                transaction.on_commit(lambda: requeue(run.pk))
        return f"run {run.pk} stopped from outside at step {step}; queued again"
    if code == 2 and IN_USE_MESSAGE in output:
        return "lock-race"
    if code is not None and code < 0:
        latest = checkpoints.latest_checkpoint(run_dir)
        resume = (
            f" Resuming continues from the checkpoint at step {checkpoints.checkpoint_step(latest)}."
            if latest
            else " No checkpoint was saved yet."
        )
        _finish(
            run.pk,
            Status.FAILED,
            f"The trainer was killed by {signal_name(-code)} at step {step} "
            f"(out of memory?).{resume} Its log: {log_path}",
        )
        return f"run {run.pk} failed: trainer killed by signal {-code}"
    _finish(run.pk, Status.FAILED, trainer_error(output, log_path))
    return f"run {run.pk} failed (exit {code})"
