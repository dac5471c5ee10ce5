"""Operations of the training app: datasets, quality-tuning runs, registering checkpoints, tuned-vs-base campaigns.

Views, admin actions, the ``quality_tune`` command and the Celery task call
these and nothing else, so every entry point validates and behaves the same way.

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
group), so a killed worker never leaves an orphan training behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from generation import services as generation_services
from generation.models import TextToImageModel
from generation.pipelines import PipelineDirectoryError, WeightsChangedError, fingerprint_directory
from training import checkpoints
from training.config import InvalidConfigError, QualityTuningConfig
from training.datasets import CuratedDatasetError, load_curated_dataset

from .models import CuratedDataset, QualityTuningRun, RunCheckpoint

logger = logging.getLogger(__name__)

Status = QualityTuningRun.Status
BASE_DIR = Path(settings.BASE_DIR)
TRAINER_MODULE = "training.quality_tuning"
TRAINER_LOG = "trainer.log"
# What the trainer prints (exit 2) when another process holds the run directory.
IN_USE_MESSAGE = "is being trained by another process"
# How long a SIGTERMed trainer may take to checkpoint and exit before it is killed.
STOP_GRACE_SECONDS = 900
# How long a redelivered task waits for a killed trainer to release the run directory (see _wait_for_a_dying_trainer).
DYING_TRAINER_WAIT_SECONDS = 60
# Config fields whose default is not None but which the trainer's command line cannot set to None.
_NOT_NONE_ON_COMMAND_LINE = {f.name for f in dataclasses.fields(QualityTuningConfig) if f.default is not None}


class TrainingError(Exception):
    """Refused or failed; the message says why in words the researcher can act on."""


# --- Places ---------------------------------------------------------------------------------------


def training_dir() -> Path:
    return Path(settings.NEEDLE_TRAINING_DIR)


def cache_dir() -> Path:
    """Encoded latents and text embeddings, shared by every run (keyed by what changes them)."""
    return training_dir() / "cache"


def models_dir() -> Path:
    """Pipelines exported from checkpoints and registered as models."""
    return training_dir() / "models"


# --- Curated datasets -----------------------------------------------------------------------------


def import_curated_dataset(name: str, path: str, *, description: str = "", created_by=None) -> CuratedDataset:
    """Check a curated dataset folder and freeze it under ``name``: its content hash is what runs will train on."""
    name = (name or "").strip()
    if not name:
        raise TrainingError("Give the dataset a name.")
    try:
        validate_slug(name)
    except ValidationError:
        raise TrainingError(f"{name!r} is not a valid name: use letters, digits, hyphens and underscores.") from None
    if CuratedDataset.objects.filter(name=name).exists():
        raise TrainingError(f"A curated dataset named {name!r} already exists; choose another name.")
    folder = Path(path).expanduser()
    try:
        dataset = load_curated_dataset(folder)
    except CuratedDatasetError as exc:
        raise TrainingError(str(exc)) from None
    try:
        return CuratedDataset.objects.create(
            name=name, path=str(folder.resolve()), content_hash=dataset.content_hash, image_count=len(dataset),
            description=description, created_by=created_by,
        )
    except IntegrityError:
        raise TrainingError(f"A curated dataset named {name!r} already exists; choose another name.") from None


def verify_dataset(dataset: CuratedDataset) -> None:
    """Raise TrainingError unless the folder still holds exactly the snapshot frozen at import."""
    try:
        current = load_curated_dataset(dataset.path)
    except CuratedDatasetError as exc:
        raise TrainingError(f"Curated dataset {dataset.name}: {exc}") from None
    if current.content_hash != dataset.content_hash:
        raise TrainingError(
            f"Curated dataset {dataset.name} changed since it was frozen on {dataset.frozen_at:%Y-%m-%d %H:%M} "
            f"({dataset.path}: {len(current)} images now, {dataset.image_count} then; content hash "
            f"{current.content_hash[:12]} != {dataset.content_hash[:12]}). Runs train on the frozen snapshot only: "
            "restore the folder, or import the new contents as a new dataset."
        )


# --- Creating, starting, cancelling runs ----------------------------------------------------------


def build_config(overrides: dict) -> QualityTuningConfig:
    """Emu's defaults overridden by ``overrides``; TrainingError with the config's own message if it cannot work."""
    try:
        config = QualityTuningConfig.from_dict({k: v for k, v in overrides.items()})
    except InvalidConfigError as exc:
        raise TrainingError(str(exc)) from None
    except TypeError as exc:
        raise TrainingError(f"invalid quality-tuning config: {exc}") from None
    for name in sorted(_NOT_NONE_ON_COMMAND_LINE):
        if getattr(config, name) is None:
            raise TrainingError(f"invalid quality-tuning config: {name} cannot be empty (its default is {getattr(QualityTuningConfig(), name)!r}).")
    if any(p.startswith("-") for p in config.validation_prompts):
        raise TrainingError("invalid quality-tuning config: a validation prompt cannot start with '-'.")
    return config


def check_base_model(base_model: TextToImageModel):
    """The base model must still be a complete SD 1.x/2.x pipeline with the weights it was registered with."""
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


def create_run(base_model: TextToImageModel, dataset: CuratedDataset, *, created_by=None, **config_overrides) -> QualityTuningRun:
    """A queued run of ``base_model`` on ``dataset`` (not started: see start_run). Emu's defaults for what is not given."""
    config = build_config(config_overrides)
    check_base_model(base_model)
    verify_dataset(dataset)
    with transaction.atomic():
        run = QualityTuningRun.objects.create(
            base_model=base_model, base_fingerprint=base_model.weights_fingerprint, dataset=dataset,
            config=json.loads(json.dumps(config.to_dict())), run_dir="", max_steps=config.max_steps,
            created_by=created_by,
        )
        # Unique even if the database is recreated while run directories stay: a new run never resumes an old one.
        run.run_dir = str(training_dir() / "runs" / f"run-{run.pk:05d}-{secrets.token_hex(4)}")
        run.save(update_fields=["run_dir"])
    return run


def is_stale(run: QualityTuningRun, now: datetime | None = None) -> bool:
    """A running run whose task stopped reporting: its worker is probably gone."""
    if run.status not in (Status.RUNNING, Status.CANCELLING):
        return False
    seen = run.heartbeat_at or run.started_at or run.created_at
    return (now or timezone.now()) - seen > timedelta(seconds=settings.NEEDLE_TRAINING_STALE_SECONDS)


def can_start(run: QualityTuningRun) -> bool:
    return run.status in (Status.QUEUED, Status.FAILED, Status.CANCELLED) or is_stale(run)


def start_run(run: QualityTuningRun) -> QualityTuningRun:
    """Queue the training task (after commit). A failed or cancelled run resumes from its newest checkpoint.

    Safe to repeat on a queued run: a second task finds the first one's trainer
    (the run directory lock) and leaves.
    """
    from .tasks import run_quality_tuning

    with transaction.atomic():
        run = QualityTuningRun.objects.select_for_update().get(pk=run.pk)
        if run.status == Status.FINISHED:
            raise TrainingError(f"Run {run.pk} has finished; create a new run (or one with more steps) instead.")
        if not can_start(run):
            raise TrainingError(f"Run {run.pk} is {run.status} on {run.worker or 'a worker'}; it cannot be started twice.")
        task_id = f"quality-tuning-{run.pk}-{secrets.token_hex(6)}"
        QualityTuningRun.objects.filter(pk=run.pk).update(
            status=Status.QUEUED, queued_at=timezone.now(), finished_at=None, error="", celery_task_id=task_id
        )
        transaction.on_commit(lambda: run_quality_tuning.apply_async(args=[run.pk], task_id=task_id))
    run.refresh_from_db()
    return run


def cancel_run(run: QualityTuningRun) -> QualityTuningRun:
    """Stop a run: queued → cancelled; running → cancelling, and its task SIGTERMs the trainer (which checkpoints)."""
    with transaction.atomic():
        run = QualityTuningRun.objects.select_for_update().get(pk=run.pk)
        now = timezone.now()
        if run.status in QualityTuningRun.TERMINAL:
            raise TrainingError(f"Run {run.pk} is already {run.status}.")
        if run.status == Status.QUEUED or is_stale(run, now):
            # No trainer (or none that reports): nothing to stop. A task delivered later sees 'cancelled' and leaves.
            note = "" if run.status == Status.QUEUED else " (its worker had stopped reporting)"
            QualityTuningRun.objects.filter(pk=run.pk).update(status=Status.CANCELLED, finished_at=now, error=f"Cancelled{note}.")
        elif run.status == Status.RUNNING:
            QualityTuningRun.objects.filter(pk=run.pk).update(status=Status.CANCELLING)
    run.refresh_from_db()
    return run


# --- Running (the Celery task's body) -------------------------------------------------------------


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
        *launcher, "-m", TRAINER_MODULE,
        "--base", run.base_model.pipeline_path, "--dataset", run.dataset.path,
        "--run-dir", run.run_dir, "--cache-dir", str(cache_dir()),
        *config_flags(run.config),
    ]


def trainer_is_running(run_dir: str | Path) -> bool:
    """Whether a live process holds the run directory's lock (training.checkpoints.run_directory_lock).

    Only the task that is about to start a trainer may probe: the probe holds
    the lock for an instant, and a trainer starting in that instant gives up
    (its task then sees the lock free and starts it again).
    """
    lock = Path(run_dir) / checkpoints.LOCK_FILE
    if not lock.exists():
        return False
    with open(lock, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


_PR_SET_PDEATHSIG = 1
_libc = None


def _die_with_parent(parent_pid: int):
    """preexec_fn: the trainer gets SIGKILL when the process that started it dies (Linux), even by SIGKILL."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc = _libc

    def preexec():
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn_trainer(command: list[str], log_file, *, env: dict | None = None) -> subprocess.Popen:
    """Start the trainer in this process's process group, tied to this process's life."""
    pythonpath = os.pathsep.join(p for p in (str(BASE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    environment = {
        **os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", **(env or {}),
    }
    return subprocess.Popen(
        command, cwd=BASE_DIR, env=environment, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(os.getpid()),
    )


class MetricsTail:
    """Reads the lines appended to ``metrics.jsonl`` since the last look (and starts over when a resume rewrites it)."""

    def __init__(self, run_dir: Path, remember: int = 5000):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.inode, self.offset, self.pending = None, 0, b""
        self.last: dict | None = None
        self.losses: dict[int, float] = {}
        self.remember = remember

    def poll(self) -> bool:
        """True when new complete lines were read."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        with handle:
            stat = os.fstat(handle.fileno())
            if stat.st_ino != self.inode or stat.st_size < self.offset:
                self.inode, self.offset, self.pending, self.last = stat.st_ino, 0, b"", None
                self.losses.clear()
            if stat.st_size == self.offset:
                return False
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *lines, self.pending = (self.pending + data).split(b"\n")
        new = False
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                self.last, new = record, True
                self.losses[record["step"]] = record.get("loss")
        if len(self.losses) > self.remember:
            for step in sorted(self.losses)[: len(self.losses) - self.remember]:
                del self.losses[step]
        return new


class _Follower:
    """Mirrors what the trainer writes into the run's row and its RunCheckpoint rows."""

    def __init__(self, run: QualityTuningRun):
        self.run = run
        self.run_dir = Path(run.run_dir)
        self.metrics = MetricsTail(self.run_dir)
        self.recorded = set(run.checkpoints.values_list("step", flat=True))

    def sync(self) -> None:
        changed = self.metrics.poll()
        fields = {"heartbeat_at": timezone.now()}
        if changed and self.metrics.last:
            last = self.metrics.last
            seconds = last.get("seconds_per_step")
            fields.update(
                step=last["step"], loss=last.get("loss"), seconds_per_step=seconds,
                eta_seconds=seconds * max(0, self.run.max_steps - last["step"]) if seconds is not None else None,
            )
        QualityTuningRun.objects.filter(pk=self.run.pk).update(**fields)
        for path in checkpoints.list_checkpoints(self.run_dir):
            step = checkpoints.checkpoint_step(path)
            if step not in self.recorded:
                self.record_checkpoint(path, step)

    def record_checkpoint(self, path: Path, step: int) -> None:
        try:
            saved = (path / checkpoints.TRAINING_STATE_FILE).stat().st_mtime
        except FileNotFoundError:  # pruned between the listing and now
            return
        RunCheckpoint.objects.get_or_create(
            run_id=self.run.pk, step=step,
            defaults={"path": str(path), "saved_at": datetime.fromtimestamp(saved, tz=dt_timezone.utc),
                      "loss": self.metrics.losses.get(step)},
        )
        self.recorded.add(step)
        logger.info("run %s: checkpoint at step %s recorded", self.run.pk, step)

    def status(self) -> str:
        return QualityTuningRun.objects.filter(pk=self.run.pk).values_list("status", flat=True).first()


def _follower_alive(run: QualityTuningRun) -> bool:
    """Whether some task reported on the run a moment ago (it polls every NEEDLE_TRAINING_POLL_SECONDS)."""
    fresh = timedelta(seconds=max(10.0, 5 * settings.NEEDLE_TRAINING_POLL_SECONDS))
    return run.heartbeat_at is not None and timezone.now() - run.heartbeat_at < fresh


def _wait_for_a_dying_trainer(run_id: int) -> None:
    """A SIGKILLed trainer holds the run directory's lock until its last thread has exited, which can take a while
    (a thread blocked writing a checkpoint). When nothing reports on the run any more, give it time to go."""
    run = QualityTuningRun.objects.filter(pk=run_id).first()
    deadline = time.monotonic() + DYING_TRAINER_WAIT_SECONDS
    while (run is not None and run.status not in QualityTuningRun.TERMINAL and time.monotonic() < deadline
           and trainer_is_running(run.run_dir) and not _follower_alive(run)):
        time.sleep(0.5)
        run.refresh_from_db()


def _claim(run_id: int, task_id: str) -> tuple[QualityTuningRun | None, str]:
    """Take the run for this task, or say why not (finished, cancelled, another trainer alive)."""
    with transaction.atomic():
        run = QualityTuningRun.objects.select_for_update().select_related("base_model", "dataset").filter(pk=run_id).first()
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
            status=Status.RUNNING, attempts=run.attempts + 1, started_at=run.started_at or now, heartbeat_at=now,
            celery_task_id=task_id or run.celery_task_id, worker=f"{socket.gethostname()} pid {os.getpid()}",
            trainer_pid=None, error="", finished_at=None,
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


def _log_section(log_path: Path, offset: int) -> str:
    with open(log_path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", errors="replace")


def _trainer_result(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                result = json.loads(line)
                if isinstance(result, dict) and "stopped" in result:
                    return result
    return None


def _trainer_error(output: str) -> str:
    errors = [line[len("error: "):] for line in output.splitlines() if line.startswith("error: ")]
    if errors:
        return "\n".join(errors)
    lines = [line for line in output.splitlines() if line.strip()]
    return "\n".join(lines[-15:]) or "the trainer exited without output"


def _signal_name(number: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return str(number)


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
            check_base_model_files(run)
            verify_dataset(run.dataset)
        except TrainingError as exc:
            _finish(run_id, Status.FAILED, str(exc))
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
    base = run.base_model
    path = Path(base.pipeline_path)
    if not path.is_dir():
        raise TrainingError(
            f"Base model {base.name}: {path} no longer exists on this worker. Mount the model directory here or "
            "register the model again."
        )
    fingerprint, _ = fingerprint_directory(path)
    if fingerprint != run.base_fingerprint:
        raise TrainingError(
            f"Base model {base.name}: the files in {path} changed since the run was created (fingerprint "
            f"{fingerprint[:12]} != {run.base_fingerprint[:12]}); the run cannot go on with other weights."
        )


def _train_and_follow(run: QualityTuningRun, requeue) -> str:
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / TRAINER_LOG
    with open(log_path, "ab") as log:
        log.write(f"\n=== attempt {run.attempts} at {timezone.now():%Y-%m-%d %H:%M:%S %Z} on {socket.gethostname()} "
                  f"(task pid {os.getpid()}) ===\n".encode())
        log.flush()
        offset = log.tell()
        command = trainer_command(run)
        log.write(("$ " + shlex.join(command) + "\n").encode())
        log.flush()
        process = spawn_trainer(command, log)
    QualityTuningRun.objects.filter(pk=run.pk).update(trainer_pid=process.pid)
    logger.info("run %s: trainer pid %s started (attempt %s)", run.pk, process.pid, run.attempts)
    follower = _Follower(run)
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
        _stop(process)
        with contextlib.suppress(Exception):
            _finish(run.pk, Status.FAILED, "The task following the trainer stopped unexpectedly; resume the run.")
        raise
    follower.sync()
    output = _log_section(log_path, offset)
    result = _trainer_result(output)
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
                status=Status.QUEUED, trainer_pid=None, queued_at=timezone.now(),
                error=f"The trainer was stopped from outside at step {step}; queued again to resume.",
            )
            if requeue is not None:
                transaction.on_commit(lambda: requeue(run.pk))
        return f"run {run.pk} stopped from outside at step {step}; queued again"
    if code == 2 and IN_USE_MESSAGE in output:
        return "lock-race"
    if code is not None and code < 0:
        latest = checkpoints.latest_checkpoint(run_dir)
        resume = (f" Resuming continues from the checkpoint at step {checkpoints.checkpoint_step(latest)}."
                  if latest else " No checkpoint was saved yet.")
        _finish(run.pk, Status.FAILED, f"The trainer was killed by {_signal_name(-code)} at step {step} "
                                       f"(out of memory?).{resume} Its log: {log_path}")
        return f"run {run.pk} failed: trainer killed by signal {-code}"
    _finish(run.pk, Status.FAILED, _trainer_error(output))
    return f"run {run.pk} failed (exit {code})"


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- Registering checkpoints and comparing them with the base --------------------------------------


def default_model_name(checkpoint: RunCheckpoint) -> str:
    run = checkpoint.run
    suffix = f"-qt{run.pk}-step{checkpoint.step}"
    return run.base_model.name[: 100 - len(suffix)] + suffix


def _lineage(checkpoint: RunCheckpoint, exported: Path) -> dict:
    run = checkpoint.run
    record = checkpoints.read_run_record(run.run_dir) or {}
    unet = "unet_ema" if (Path(checkpoint.path) / checkpoints.EMA_UNET_DIR).is_dir() else "unet"
    return {
        "run": run.pk,
        "run_dir": run.run_dir,
        "step": checkpoint.step,
        "checkpoint": checkpoint.path,
        "weights": unet,
        "exported_path": str(exported),
        "base_model": run.base_model.name,
        "base_fingerprint": record.get("base_pipeline", {}).get("fingerprint", run.base_fingerprint),
        "dataset": run.dataset.name,
        "dataset_path": run.dataset.path,
        "dataset_hash": record.get("dataset", {}).get("content_hash", run.dataset.content_hash),
        "dataset_images": run.dataset.image_count,
        "hyperparameters": record.get("config", run.config),  # resolved by the trainer: resolution, prediction type
    }


def _describe(lineage: dict) -> str:
    h = lineage["hyperparameters"]
    return (
        f"Quality-tuned from {lineage['base_model']} (weights {lineage['base_fingerprint'][:12]}) on curated dataset "
        f"{lineage['dataset']} ({lineage['dataset_images']} images, hash {lineage['dataset_hash'][:12]}): run "
        f"{lineage['run']}, step {lineage['step']} ({lineage['weights']}). batch {h.get('batch_size')}, lr "
        f"{h.get('learning_rate')}, noise offset {h.get('noise_offset')}, resolution {h.get('resolution')}, "
        f"EMA {h.get('use_ema')}, seed {h.get('seed')}, mixed precision {h.get('mixed_precision')}."
    )


def register_checkpoint(checkpoint: RunCheckpoint, name: str | None = None, *, registered_by=None) -> TextToImageModel:
    """Export the checkpoint as a pipeline and register it (source quality_tuned, parent the base). Idempotent.

    A checkpoint registered before returns its model (whatever ``name``). The
    export is kept when registration is refused (e.g. the name is taken), so
    trying again with another name does not copy the pipeline again.
    """
    error = None
    with transaction.atomic():
        checkpoint = (RunCheckpoint.objects.select_for_update(of=("self",))
                      .select_related("run__base_model", "run__dataset", "registered_model").get(pk=checkpoint.pk))
        if checkpoint.registered_model is not None:
            return checkpoint.registered_model
        run = checkpoint.run
        exported = Path(checkpoint.exported_path) if checkpoint.exported_path else None
        if exported is None or not (exported / "model_index.json").is_file():
            exported = models_dir() / f"run-{run.pk:05d}-step-{checkpoint.step:06d}-{secrets.token_hex(4)}"
            try:
                checkpoints.export_pipeline(run.run_dir, checkpoint.step, exported)
            except (checkpoints.CheckpointNotFoundError, WeightsChangedError, FileExistsError, OSError) as exc:
                raise TrainingError(f"Cannot export step {checkpoint.step} of run {run.pk}: {exc}") from None
            checkpoint.exported_path = str(exported)
            checkpoint.save(update_fields=["exported_path"])
        lineage = _lineage(checkpoint, exported)
        base = run.base_model
        try:
            with transaction.atomic():
                model = generation_services.register_model(
                    name=(name or default_model_name(checkpoint)).strip(), pipeline_path=str(exported),
                    steps=base.default_steps, guidance_scale=base.default_guidance_scale, width=base.default_width,
                    height=base.default_height, scheduler=base.default_scheduler, description=_describe(lineage),
                    source=TextToImageModel.Source.QUALITY_TUNED, parent=base, registered_by=registered_by,
                )
                lineage["model_fingerprint"] = model.weights_fingerprint
                checkpoint.registered_model = model
                checkpoint.lineage = lineage
                checkpoint.save(update_fields=["registered_model", "lineage"])
        except generation_services.GenerationError as exc:
            error = exc  # the export stays recorded (outer transaction commits)
    if error is not None:
        raise TrainingError(str(error))
    return model


def create_tuned_vs_base_campaign(
    checkpoint: RunCheckpoint, prompt_set, seeds, name: str | None = None, *, model_name: str | None = None, created_by=None
):
    """A draft campaign, the base against this checkpoint (registered first if it is not), on both of Emu's criteria."""
    from annotation import services as annotation_services

    if isinstance(seeds, str):
        try:
            seeds = generation_services.parse_seeds(seeds)
        except generation_services.GenerationError as exc:
            raise TrainingError(str(exc)) from None
    tuned = register_checkpoint(checkpoint, model_name, registered_by=created_by)
    base = checkpoint.run.base_model
    if name is None:
        name = stem = f"{tuned.name} vs {base.name}"
        number = 2
        from annotation.models import Campaign

        while Campaign.objects.filter(name=name).exists():
            name, number = f"{stem} ({number})", number + 1
    try:
        return annotation_services.create_campaign(
            name=name, models=[base, tuned], prompt_set=prompt_set, seeds=list(seeds), criteria=None, created_by=created_by
        )
    except annotation_services.AnnotationError as exc:
        raise TrainingError(str(exc)) from None
