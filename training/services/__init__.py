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
import re
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

from core.errors import ServiceError
from core.task_queue import enqueue_on_commit
from generation import services as generation_services
from generation.models import TextToImageModel
from generation.pipelines import PipelineDirectoryError, WeightsChangedError, fingerprint_directory
from training import checkpoints
from training.config import InvalidConfigError, QualityTuningConfig
from training.datasets import CuratedDatasetError, load_curated_dataset

from training.models import CuratedDataset, QualityTuningRun, RunCheckpoint

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


class TrainingError(ServiceError):
    """Refused or failed; the message says why in words the researcher can act on; ``field``/``errors`` name the
    settings it is about."""


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
        raise TrainingError("Give the dataset a name.", field="name")
    try:
        validate_slug(name)
    except ValidationError:
        raise TrainingError(f"{name!r} is not a valid name: use letters, digits, hyphens and underscores.",
                            field="name") from None
    if CuratedDataset.objects.filter(name=name).exists():
        raise TrainingError(f"A curated dataset named {name!r} already exists; choose another name.", field="name")
    folder = Path(path).expanduser()
    try:
        dataset = load_curated_dataset(folder)
    except CuratedDatasetError as exc:
        raise TrainingError(str(exc), field="path") from None
    try:
        return CuratedDataset.objects.create(
            name=name, path=str(folder.resolve()), content_hash=dataset.content_hash, image_count=len(dataset),
            description=description, created_by=created_by,
        )
    except IntegrityError:
        raise TrainingError(f"A curated dataset named {name!r} already exists; choose another name.", field="name") from None


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
    """Emu's defaults overridden by ``overrides``; TrainingError naming every setting that cannot work.

    Every setting is checked here (types, finite numbers, ranges, how they combine), so a bad value is refused when
    the run is made or started, not by the trainer hours later.
    """
    if not isinstance(overrides, dict):
        raise TrainingError(f"invalid quality-tuning config: expected settings by name, not {type(overrides).__name__}.")
    try:
        config = QualityTuningConfig.from_dict(dict(overrides))
    except InvalidConfigError as exc:
        raise TrainingError(str(exc), errors=exc.problems) from None
    except TypeError as exc:
        raise TrainingError(f"invalid quality-tuning config: {exc}") from None
    for name in sorted(_NOT_NONE_ON_COMMAND_LINE):
        if getattr(config, name) is None:
            raise TrainingError(f"invalid quality-tuning config: {name} cannot be empty (its default is "
                                f"{getattr(QualityTuningConfig(), name)!r}).", field=name)
    return config


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
    base_model: TextToImageModel, dataset: CuratedDataset, *, created_by=None, aesthetic_head_path: str = "",
    clip_model_path: str = "", clip_model_name: str = "", **config_overrides,
) -> QualityTuningRun:
    """A queued run of ``base_model`` on ``dataset`` (not started: see start_run). Emu's defaults for what is not given.

    With an aesthetic head and its CLIP model, each checkpoint's validation images
    are scored as the run goes (the automatic pick); they are loaded here once, so a
    wrong file is refused now rather than found out after hours of training.
    """
    config = build_config(config_overrides)
    aesthetic_head_path, clip_model_path, clip_model_name = (
        (aesthetic_head_path or "").strip(), (clip_model_path or "").strip(), (clip_model_name or "").strip())
    if aesthetic_head_path or clip_model_path or clip_model_name:
        load_aesthetic_scoring(aesthetic_head_path, clip_model_path, clip_model_name)
    check_base_model(base_model)
    verify_dataset(dataset)
    with transaction.atomic():
        run = QualityTuningRun.objects.create(
            base_model=base_model, base_fingerprint=base_model.weights_fingerprint, dataset=dataset,
            config=json.loads(json.dumps(config.to_dict())), run_dir="", max_steps=config.max_steps,
            aesthetic_head_path=aesthetic_head_path, clip_model_path=clip_model_path, clip_model_name=clip_model_name,
            created_by=created_by,
        )
        # Unique even if the database is recreated while run directories stay: a new run never resumes an old one.
        run.run_dir = str(training_dir() / "runs" / f"run-{run.pk:05d}-{secrets.token_hex(4)}")
        run.save(update_fields=["run_dir"])
    return run


def _last_report(run: QualityTuningRun) -> datetime:
    return run.heartbeat_at or run.started_at or run.created_at


def is_stale(run: QualityTuningRun, now: datetime | None = None) -> bool:
    """A running run whose task stopped reporting for NEEDLE_TRAINING_STALE_SECONDS: its worker is probably gone."""
    if run.status not in (Status.RUNNING, Status.CANCELLING):
        return False
    return (now or timezone.now()) - _last_report(run) > timedelta(seconds=settings.NEEDLE_TRAINING_STALE_SECONDS)


def resumable_at(run: QualityTuningRun) -> datetime:
    """When a running run that stopped reporting counts as stale (and may be resumed or cancelled)."""
    return _last_report(run) + timedelta(seconds=settings.NEEDLE_TRAINING_STALE_SECONDS)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _run_processes(run: QualityTuningRun) -> tuple[str | None, set[int]]:
    """The host the run's task ran on and the pids that may be training it there: the task's (``worker``), the
    trainer's, and the one in the run directory's lock file (``pid N on HOST``)."""
    host, pids = None, set()
    match = re.fullmatch(r"(\S+) pid (\d+)", run.worker or "")
    if match:
        host, pids = match[1], {int(match[2])}
    if run.trainer_pid:
        pids.add(run.trainer_pid)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        lock = (Path(run.run_dir) / checkpoints.LOCK_FILE).read_text(encoding="utf-8")
        found = re.search(r"pid (\d+) on (\S+)", lock)
        if found and found[2] == host:
            pids.add(int(found[1]))
    return host, pids


def trainer_is_dead(run: QualityTuningRun) -> bool:
    """A running run whose task and trainer are provably gone: they ran on this machine and none of their processes
    is alive, and no task reported a moment ago. (On another machine this cannot be known: see is_stale.)"""
    if run.status not in (Status.RUNNING, Status.CANCELLING) or _follower_alive(run):
        return False
    host, pids = _run_processes(run)
    if host != socket.gethostname() or not pids:
        return False
    return not any(_process_alive(pid) for pid in pids)


def is_lost(run: QualityTuningRun, now: datetime | None = None) -> bool:
    """Running, but nothing trains it any more: its worker died (seen at once on this machine) or went silent."""
    return trainer_is_dead(run) or is_stale(run, now)


def can_start(run: QualityTuningRun) -> bool:
    return run.status in (Status.QUEUED, Status.FAILED, Status.CANCELLED) or is_lost(run)


def _busy_message(run: QualityTuningRun) -> str:
    """Why a running run cannot be started again now, and exactly when it can be if its worker died."""
    when = timezone.localtime(resumable_at(run))
    seen = int((timezone.now() - _last_report(run)).total_seconds())
    host, pids = _run_processes(run)
    if host == socket.gethostname() and any(_process_alive(pid) for pid in pids):
        where = f"its task is alive on this machine (pid {', '.join(map(str, sorted(pids)))})"
    else:
        where = f"it runs on {host or 'another machine'}, where this server cannot see whether it is alive"
    return (f"Run {run.pk} is {run.status} ({where}; last report {seen} s ago), so it cannot be started twice. "
            f"If its worker died, it can be resumed from {when:%Y-%m-%d %H:%M:%S %Z} "
            f"(NEEDLE_TRAINING_STALE_SECONDS={settings.NEEDLE_TRAINING_STALE_SECONDS} after its last report); "
            "or cancel it first.")


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
            raise TrainingError(f"Run {run.pk} cannot start: {exc} Its settings are frozen: create a new run with "
                                "valid settings.", errors=exc.errors) from None
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
        self.scoring = _FollowerScoring(run)

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
        # After the checkpoints: a step's validation images are rendered once its checkpoint is saved.
        self.scoring.sync()

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


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line (a run's error field is read in a table cell and a terminal), at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _trainer_error(output: str, log_path: Path | str | None = None) -> str:
    """One readable line on why the trainer failed: its own ``error:`` lines, else the exception a traceback ends
    with. The traceback itself stays in the trainer's log."""
    where = f" (the full output is in {log_path})" if log_path else ""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    if errors:
        return one_line("; ".join(errors)) + where
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        after = [line for line in lines[tracebacks[-1] + 1 :] if not line.startswith((" ", "\t"))]
        if after:
            return one_line(f"The trainer failed: {after[-1]}") + where
    return one_line(f"The trainer failed: {lines[-1]}" if lines else "The trainer exited without output") + where


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
    _finish(run.pk, Status.FAILED, _trainer_error(output, log_path))
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


# --- Choosing a checkpoint: raters per step, and the validation images' aesthetic score ----------
#
# Emu stops quality-tuning early although the loss still falls: past some step the
# model overfits the small curated set, and only the images show it. Two signals
# guide the pick: a small campaign where raters compare every checkpoint with the
# base (visual appeal only), and an automatic pick from the aesthetic score of each
# step's fixed validation images (cheap, available while the run trains, but only a
# proxy for what raters prefer).

# Three raters per comparison: enough for a strict majority, and several steps x prompts to judge stays affordable.
CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM = 3
# Where a failed automatic scoring is noted for the run page (the run itself goes on).
SCORING_WARNING_FILE = "aesthetic_scoring_warning.txt"


def _checkpoint_campaign_name(run: QualityTuningRun) -> str:
    from annotation.models import Campaign

    name = stem = f"{run.base_model.name[:80]} run {run.pk} checkpoints"
    number = 2
    while Campaign.objects.filter(name=name).exists():
        name, number = f"{stem} ({number})", number + 1
    return name


def _check_base_unchanged(run: QualityTuningRun) -> None:
    base = run.base_model
    path = Path(base.pipeline_path)
    if not path.is_dir():
        raise TrainingError(
            f"Base model {base.name}: {path} no longer exists, so the checkpoints cannot be compared with it. "
            "Mount the model directory here again."
        )
    fingerprint, _ = fingerprint_directory(path)
    if fingerprint != run.base_fingerprint:
        raise TrainingError(
            f"Base model {base.name}: the files in {path} changed since run {run.pk} was created (fingerprint "
            f"{fingerprint[:12]} != {run.base_fingerprint[:12]}), so a campaign against it would not compare the "
            "checkpoints with the weights they were tuned from. Restore the original weights."
        )


def _campaign_checkpoints(run: QualityTuningRun, steps) -> list[RunCheckpoint]:
    recorded = {cp.step: cp for cp in run.checkpoints.select_related("registered_model")}
    if not recorded:
        raise TrainingError(f"Run {run.pk} has no checkpoint yet: one is saved every {run.config.get('checkpoint_every')} "
                            "steps and at the end. Wait for one before comparing checkpoints.")
    # An exported (registered) checkpoint can still be rendered after keep_last_checkpoints pruned its folder.
    usable = {step: cp for step, cp in recorded.items() if cp.exists or cp.registered_model_id is not None}
    if steps is None:
        if not usable:
            raise TrainingError(f"Every checkpoint of run {run.pk} was deleted (keep_last_checkpoints pruned them) and "
                                "none was registered as a model: there is nothing left to compare.")
        return [usable[step] for step in sorted(usable)]
    steps = sorted(set(int(s) for s in steps))
    if not steps:
        raise TrainingError("Choose at least one checkpoint step.")
    unknown = [s for s in steps if s not in recorded]
    if unknown:
        raise TrainingError(f"Run {run.pk} has no checkpoint at step {', '.join(map(str, unknown))} "
                            f"(checkpoints: {', '.join(map(str, sorted(recorded)))}).")
    gone = [s for s in steps if s not in usable]
    if gone:
        raise TrainingError(f"The checkpoint at step {', '.join(map(str, gone))} of run {run.pk} was deleted "
                            f"(keep_last_checkpoints pruned it) and never registered; choose among "
                            f"{', '.join(map(str, sorted(usable))) or 'none'}.")
    return [recorded[s] for s in steps]


def create_checkpoint_campaign(
    run: QualityTuningRun, *, prompt_set, seeds=(0,), steps=None, votes_per_item: int | None = None,
    gold_share: float | None = None, new: bool = False, created_by=None,
):
    """One draft campaign: the base against every chosen checkpoint (each vs the baseline), visual appeal only.

    ``steps`` None takes every checkpoint still on disk (or registered). Each
    checkpoint is registered as a model first (reusing one registered before).
    ``votes_per_item`` defaults to CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM. The
    campaign is remembered on the run: calling again returns it, unless ``new``.
    """
    from annotation import services as annotation_services
    from annotation.models import Criterion
    from generation.models import PromptSet

    given, run = run, QualityTuningRun.objects.select_related("base_model", "dataset", "checkpoint_campaign").get(pk=run.pk)
    if run.checkpoint_campaign is not None and not new:
        given.checkpoint_campaign = run.checkpoint_campaign
        return run.checkpoint_campaign
    if isinstance(prompt_set, str):
        found = PromptSet.objects.filter(name=prompt_set).first()
        if found is None:
            raise TrainingError(f"There is no prompt set named {prompt_set!r}; import it first (manage.py import_prompts).")
        prompt_set = found
    if prompt_set is None or not PromptSet.objects.filter(pk=prompt_set.pk).exists():
        raise TrainingError("Choose a prompt set that exists.")
    if isinstance(seeds, str):
        try:
            seeds = generation_services.parse_seeds(seeds)
        except generation_services.GenerationError as exc:
            raise TrainingError(str(exc)) from None
    chosen = _campaign_checkpoints(run, steps)
    _check_base_unchanged(run)
    models = [register_checkpoint(cp, registered_by=created_by) for cp in chosen]
    options = {"gold_share": gold_share} if gold_share is not None else {}
    votes = CHECKPOINT_CAMPAIGN_VOTES_PER_ITEM if votes_per_item is None else votes_per_item
    try:
        with transaction.atomic():
            campaign = annotation_services.create_campaign(
                name=_checkpoint_campaign_name(run), models=[run.base_model, *models], prompt_set=prompt_set,
                seeds=list(seeds), pairing="vs_baseline", baseline=run.base_model,
                criteria={Criterion.VISUAL_APPEAL.value: {"votes_per_item": votes}}, created_by=created_by, **options,
            )
            QualityTuningRun.objects.filter(pk=run.pk).update(checkpoint_campaign=campaign)
    except annotation_services.AnnotationError as exc:
        raise TrainingError(str(exc)) from None
    given.checkpoint_campaign = campaign
    return campaign


def checkpoint_win_rates(run: QualityTuningRun) -> list[dict]:
    """Per checkpoint in the run's checkpoint campaign: its visual-appeal win rate against the base, by step.

    The numbers are analysis.services.campaign_win_rates' (item-level majority,
    prompt-clustered bootstrap interval); ``win_rate`` is None until a
    comparison is complete. ``comparisons`` counts complete items, ``incomplete``
    the items with some but fewer than k votes.
    """
    from analysis.services import campaign_win_rates
    from annotation.models import Criterion

    from annotation.models import Campaign

    # Read afresh: the campaign may have been created (or replaced) since this run object was loaded.
    campaign_id = QualityTuningRun.objects.filter(pk=run.pk).values_list("checkpoint_campaign", flat=True).first()
    campaign = Campaign.objects.filter(pk=campaign_id).first() if campaign_id else None
    if campaign is None:
        return []
    step_of = {
        cp.registered_model.name: cp.step
        for cp in run.checkpoints.select_related("registered_model").filter(registered_model__isnull=False)
    }
    rows = []
    for row in campaign_win_rates(campaign):
        if row["criterion"] != Criterion.VISUAL_APPEAL or row["model_a"] != run.base_model.name or row["model_b"] not in step_of:
            continue
        rows.append({
            "step": step_of[row["model_b"]], "model": row["model_b"], "win_rate": row["win_rate"], "low": row["low"],
            "high": row["high"], "comparisons": row["compared"], "incomplete": row["incomplete_items"],
        })
    return sorted(rows, key=lambda r: r["step"])


# -- the automatic pick --


def load_aesthetic_scoring(head_path: str, clip_path: str, clip_name: str = ""):
    """(CLIP, aesthetic head) from local files, checked to fit each other; TrainingError saying what is wrong."""
    from training.aesthetic import AestheticHead, AestheticHeadError
    from training.clip_scoring import ClipLoadError, load_clip

    if not head_path or not clip_path:
        missing, field = ("the aesthetic head", "aesthetic_head_path") if not head_path else ("the CLIP model it sits on", "clip_model_path")
        raise TrainingError(f"Scoring validation images needs both an aesthetic head and its CLIP model; give {missing}.",
                            field=field)
    try:
        head = AestheticHead.load(head_path)
    except AestheticHeadError as exc:
        raise TrainingError(f"Aesthetic head: {exc}", field="aesthetic_head_path") from None
    try:
        clip = load_clip(clip_name or None, clip_path)
    except ClipLoadError as exc:
        raise TrainingError(f"CLIP model: {exc}", field="clip_model_path") from None
    if clip.embed_dim != head.input_dim:
        raise TrainingError(
            f"The aesthetic head {head_path} takes {head.input_dim}-d CLIP embeddings but {clip.model_name} makes "
            f"{clip.embed_dim}-d ones: give the CLIP model the head was trained on.", field="clip_model_path",
        )
    return clip, head


def validation_images(run: QualityTuningRun, step: int) -> list[Path] | None:
    """The step's validation PNGs, or None unless every (prompt, seed) of the run's validation set is there."""
    from training.validation import PROMPTS_FILE, VALIDATION_DIR

    root = Path(run.run_dir) / VALIDATION_DIR
    folder = root / checkpoints.checkpoint_name(step)
    try:
        expected = sorted(json.loads((root / PROMPTS_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        expected = None
    if not folder.is_dir():
        return None
    found = sorted(p.name for p in folder.glob("*.png"))
    if not found or (expected is not None and any(name not in found for name in expected)):
        return None  # still being rendered, or partly deleted
    return [folder / name for name in (expected or found)]


def score_validation_images(run: QualityTuningRun, *, rescore: bool = False, require_all: bool = True, scoring=None) -> dict[int, float]:
    """Store the mean aesthetic score of each checkpoint's validation images; returns {step: score} of those scored now.

    Idempotent: checkpoints scored before are kept unless ``rescore``. With
    ``require_all`` a checkpoint without a complete set of validation images is
    an error (after the others are stored); without it such a checkpoint waits
    (the follow loop: a checkpoint is saved before its images are rendered).
    ``scoring`` is a (CLIP, head) pair from load_aesthetic_scoring, to load them once.
    """
    from PIL import Image

    from training.validation import VALIDATION_DIR

    run = QualityTuningRun.objects.get(pk=run.pk)
    if not run.aesthetic_head_path:
        raise TrainingError(f"Run {run.pk} has no aesthetic head configured: give one (and its CLIP model) when creating "
                            "the run, to score its validation images.")
    pending = list(run.checkpoints.all() if rescore else run.checkpoints.filter(validation_aesthetic_score__isnull=True))
    if not pending:
        return {}
    found = {cp.step: validation_images(run, cp.step) for cp in pending}
    missing = [step for step, images in found.items() if images is None]
    if len(missing) == len(pending) and require_all:
        raise TrainingError(_missing_validation_message(run, missing, VALIDATION_DIR))
    scored = {}
    if len(missing) < len(pending):
        clip, head = scoring or load_aesthetic_scoring(run.aesthetic_head_path, run.clip_model_path, run.clip_model_name)
        for cp in pending:
            if found[cp.step] is None:
                continue
            images = []
            for path in found[cp.step]:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            score = float(head.predict(clip.embed_images(images)).mean())
            RunCheckpoint.objects.filter(pk=cp.pk).update(validation_aesthetic_score=score)
            scored[cp.step] = score
    if missing and require_all:
        raise TrainingError(_missing_validation_message(run, missing, VALIDATION_DIR) +
                            (f" Steps {', '.join(map(str, sorted(scored)))} were scored." if scored else ""))
    with contextlib.suppress(OSError):
        _note_scoring_warning(run, "")  # it works now: an old failure no longer applies
    return scored


def _missing_validation_message(run: QualityTuningRun, steps: list[int], validation_dir: str) -> str:
    folders = ", ".join(str(Path(run.run_dir) / validation_dir / checkpoints.checkpoint_name(s)) for s in sorted(steps))
    return (f"Run {run.pk} has no complete set of validation images for step {', '.join(map(str, sorted(steps)))} "
            f"({folders}). The trainer renders them at every checkpoint it reaches by training; a checkpoint saved "
            "when the run was cancelled has none, and deleted images cannot be scored.")


def automatic_pick(run: QualityTuningRun) -> RunCheckpoint | None:
    """The checkpoint whose validation images score best; on a tie the earlier step (later steps overfit more)."""
    return (run.checkpoints.filter(validation_aesthetic_score__isnull=False)
            .order_by("-validation_aesthetic_score", "step").first())


def scoring_warning(run: QualityTuningRun) -> str:
    """Why the automatic scoring of this run last failed, if it did (the run page shows it)."""
    path = Path(run.run_dir) / SCORING_WARNING_FILE
    try:
        return path.read_text(encoding="utf-8").strip() if run.run_dir else ""
    except FileNotFoundError:
        return ""


def _note_scoring_warning(run: QualityTuningRun, message: str) -> None:
    from training.atomic import atomic_write_text

    path = Path(run.run_dir) / SCORING_WARNING_FILE
    if message:
        atomic_write_text(path, message + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class _FollowerScoring:
    """Scores validation images as the follow loop sees them, loading CLIP and the head once; never fails the run."""

    def __init__(self, run: QualityTuningRun):
        self.run = run
        self.enabled = bool(run.aesthetic_head_path)
        self.scoring = None
        self.failed = False

    def sync(self) -> None:
        if not self.enabled or self.failed:
            return
        try:
            if not RunCheckpoint.objects.filter(run_id=self.run.pk, validation_aesthetic_score__isnull=True).exists():
                return
            if self.scoring is None:
                self.scoring = load_aesthetic_scoring(self.run.aesthetic_head_path, self.run.clip_model_path,
                                                      self.run.clip_model_name)
            score_validation_images(self.run, require_all=False, scoring=self.scoring)
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - a proxy score must never stop a training run
            self.failed = True  # the same files would fail the same way at every poll
            message = exc if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
            logger.warning("run %s: scoring validation images failed: %s", self.run.pk, message)
            with contextlib.suppress(OSError):
                _note_scoring_warning(self.run, f"Scoring the validation images failed; the run goes on without an "
                                                f"automatic pick. {message} Fix it, then score them from the run page.")


# === Curation: candidate collections, the automatic funnel, freezing a selection ===================
#
# training.curation does the work without Django; these functions keep its inputs and results as rows.
# A curation run goes queued -> running -> finished | failed. Its task claims the run under the row lock and
# holds a file lock in the run's folder for as long as it computes, so a duplicate delivery leaves while the
# first still runs, and a delivery after a killed worker (lock released by the kernel) takes the run over.
# Outcomes and the report are written in one transaction at the end: a run has all of its result or none.

import hashlib  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402

from training import curation  # noqa: E402

from training.models import Candidate, CandidateCollection, CurationRun, FunnelOutcome  # noqa: E402

CurationStatus = CurationRun.Status
STAGE_KINDS = {
    cls.__name__: cls
    for cls in (curation.ResolutionStage, curation.TextInImageStage, curation.NearDuplicateStage,
                curation.ClipScoreStage, curation.AestheticStage)
}
CLIP_STAGE_KINDS = ("ClipScoreStage", "AestheticStage")
CURATION_LOCK_FILE = ".running.lock"


def curation_dir() -> Path:
    return training_dir() / "curation"


def curation_run_dir(run: CurationRun) -> Path:
    """Where a run's contact sheets are cached and its lock lives (never under MEDIA_ROOT)."""
    return curation_dir() / f"run-{run.pk:05d}"


def _check_new_name(name: str, what: str, taken) -> str:
    name = (name or "").strip()
    if not name:
        raise TrainingError(f"Give the {what} a name.")
    try:
        validate_slug(name)
    except ValidationError:
        raise TrainingError(f"{name!r} is not a valid name: use letters, digits, hyphens and underscores.") from None
    if taken.filter(name=name).exists():
        raise TrainingError(f"A {what} named {name!r} already exists; choose another name.")
    return name


def import_candidate_collection(name: str, path: str, created_by=None) -> CandidateCollection:
    """Scan a folder of candidate images with captions and store every importable one; problems are kept per file.

    Bad files do not stop the import (they are listed in ``problems``); a folder that gives nothing to curate does.
    """
    name = _check_new_name(name, "candidate collection", CandidateCollection.objects)
    folder = Path(path or "").expanduser()
    if not str(path or "").strip() or not folder.is_dir():
        raise TrainingError(f"Candidate folder not found: {folder} is not a folder. Give a folder the workers can read.")
    scan = curation.scan_candidates(folder)
    missing_captions = [p for p in scan.problems if p.kind == "caption_file_missing"]
    if missing_captions:
        raise TrainingError(missing_captions[0].message[0].upper() + missing_captions[0].message[1:] + ".")
    if not scan.candidates:
        listed = "; ".join(str(p) for p in scan.errors[:5]) or "the folder has no images"
        more = f" (and {len(scan.errors) - 5} more)" if len(scan.errors) > 5 else ""
        raise TrainingError(f"No candidate in {folder} could be imported: {listed}{more}. Fix the files, then import again.")
    try:
        with transaction.atomic():
            collection = CandidateCollection.objects.create(
                name=name, path=str(folder.resolve()), candidate_count=len(scan.candidates),
                problems=[str(p) for p in scan.problems], created_by=created_by,
            )
            Candidate.objects.bulk_create(
                [
                    Candidate(collection=collection, relative_path=c.id, caption=c.caption, width=c.width, height=c.height,
                              sha256=c.sha256, format=c.format, size_bytes=c.size_bytes)
                    for c in scan.candidates
                ],
                batch_size=1000,
            )
    except IntegrityError:
        raise TrainingError(f"A candidate collection named {name!r} already exists; choose another name.") from None
    return collection


def funnel_candidate(row: Candidate, folder: Path | None = None) -> curation.Candidate:
    """A Candidate row as the funnel's dataclass (its id is the path inside the collection folder)."""
    folder = Path(folder or row.collection.path)
    return curation.Candidate(row.relative_path, folder / row.relative_path, row.caption, row.width, row.height,
                              row.sha256, row.format, row.size_bytes)


# --- Stage configuration -----------------------------------------------------------------------------


def _stage_fields(cls) -> dict:
    """Configurable fields of a stage class and their defaults ('name' included; callables such as ocr are not)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get("config", True)}


def stages_from_config(config) -> list:
    """Funnel stages from their JSON form ``[{"kind": "ResolutionStage", "min_side": 512}, ...]``, defaults for
    what is not given. TrainingError names the stage, the field and what is allowed."""
    if not isinstance(config, list) or not config:
        raise TrainingError('Stages must be a non-empty JSON list like [{"kind": "ResolutionStage", "min_side": 512}].')
    stages = []
    for number, entry in enumerate(config, start=1):
        where = f"stage {number}"
        if not isinstance(entry, dict):
            raise TrainingError(f'{where} is a JSON {type(entry).__name__}, not an object like {{"kind": "ResolutionStage"}}.')
        kind = entry.get("kind")
        if kind not in STAGE_KINDS:
            raise TrainingError(f"{where}: unknown kind {kind!r}; use one of {', '.join(STAGE_KINDS)}.")
        fields = _stage_fields(STAGE_KINDS[kind])
        values = {}
        for key, value in entry.items():
            if key == "kind":
                continue
            if key not in fields:
                raise TrainingError(f"{where} ({kind}): unknown field {key!r}; it takes {', '.join(fields)}.")
            expected = type(fields[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool) or (expected is float and not math.isfinite(value)):
                raise TrainingError(f"{where} ({kind}): {key} must be a{'n' if expected is int else ''} "
                                    f"{ {int: 'integer', float: 'number', str: 'string'}[expected]}, not {value!r}.")
            values[key] = value
        if "name" in values and not values["name"].strip():
            raise TrainingError(f"{where} ({kind}): name cannot be empty.")
        if kind == "TextInImageStage" and values.get("max_words", 0) < 0:
            raise TrainingError(f"{where} ({kind}): max_words must be 0 or more.")
        try:
            stages.append(STAGE_KINDS[kind](**values))
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"{where} ({kind}): {exc}.") from None
    names = [stage.name for stage in stages]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TrainingError(f"Stage name {twice[0]!r} is used twice; give each stage its own name.")
    return stages


def stages_to_config(stages) -> list[dict]:
    return [{"kind": type(stage).__name__, **{key: getattr(stage, key) for key in _stage_fields(type(stage))}} for stage in stages]


def default_stage_config() -> list[dict]:
    return stages_to_config(curation.default_stages())


def _uses_aesthetic_head(stage_config: list[dict], head_path: str) -> bool:
    kinds = {entry["kind"] for entry in stage_config}
    # A near-duplicate stage keeps the most aesthetic copy when a head is given, so the head is loaded for it too.
    return "AestheticStage" in kinds or (bool(head_path) and "NearDuplicateStage" in kinds)


def _uses_clip(stage_config: list[dict], head_path: str) -> bool:
    return any(entry["kind"] in CLIP_STAGE_KINDS for entry in stage_config) or _uses_aesthetic_head(stage_config, head_path)


def create_curation_run(
    collection: CandidateCollection, stages=None, *, clip_model_path: str = "", clip_model_name: str = "",
    aesthetic_head_path: str = "", created_by=None,
) -> CurationRun:
    """A queued funnel run over ``collection`` (not started: see start_curation_run). ``stages``: None (Emu's
    default_stages), their JSON form, or FunnelStage objects. Refuses up front what could only fail later."""
    if stages is None:
        stages = curation.default_stages()
    if all(isinstance(stage, curation.FunnelStage) for stage in stages) and stages:
        stage_config = stages_to_config(stages)
        stages_from_config(stage_config)  # same checks as stored JSON (names, values)
    else:
        stage_config = stages_to_config(stages_from_config(stages))
    clip_model_path, clip_model_name = (clip_model_path or "").strip(), (clip_model_name or "").strip()
    aesthetic_head_path = (aesthetic_head_path or "").strip()
    if collection.candidate_count == 0:
        raise TrainingError(f"Collection {collection.name} has no candidates; import a folder with images first.")
    named = [entry["name"] for entry in stage_config if entry["kind"] in CLIP_STAGE_KINDS]
    if _uses_clip(stage_config, aesthetic_head_path) and not clip_model_path:
        raise TrainingError(
            f"The stage(s) {', '.join(named) or 'near_duplicate (with an aesthetic head)'} need a CLIP model: give the "
            "path of a local open_clip checkpoint (an exported folder with open_clip_config.json, or a weights file "
            "plus its architecture name), or leave those stages out."
        )
    if clip_model_path:
        clip_path = Path(clip_model_path).expanduser()
        if not clip_path.exists():
            raise TrainingError(f"CLIP model not found: {clip_path} does not exist. Give a path the workers can read.")
        if clip_path.is_file() and not clip_model_name:
            raise TrainingError(f"{clip_path} is a bare weights file: give its open_clip architecture name too (e.g. ViT-L-14).")
        clip_model_path = str(clip_path.resolve())
    if any(entry["kind"] == "AestheticStage" for entry in stage_config) and not aesthetic_head_path:
        raise TrainingError(
            "The aesthetic stage needs an aesthetic head: give the path of a LAION-format head (.pth or .safetensors) "
            "trained on this CLIP model's embeddings, or leave the stage out."
        )
    if aesthetic_head_path:
        head_path = Path(aesthetic_head_path).expanduser()
        if not head_path.is_file():
            raise TrainingError(f"Aesthetic head not found: {head_path} is not a file. Give a path the workers can read.")
        aesthetic_head_path = str(head_path.resolve())
        if not clip_model_path:
            raise TrainingError("An aesthetic head scores CLIP image embeddings: give the CLIP model it was trained on too.")
    return CurationRun.objects.create(
        collection=collection, stages=stage_config, clip_model_path=clip_model_path, clip_model_name=clip_model_name,
        aesthetic_head_path=aesthetic_head_path, created_by=created_by,
    )


def start_curation_run(run: CurationRun) -> CurationRun:
    """Queue the funnel task (after commit). A failed run can be started again; a finished one cannot."""
    with transaction.atomic():
        run = CurationRun.objects.select_for_update().get(pk=run.pk)
        if run.status == CurationStatus.FINISHED:
            raise TrainingError(f"Curation run {run.pk} has finished; create a new run to change its stages.")
        if run.status == CurationStatus.RUNNING:
            raise TrainingError(f"Curation run {run.pk} is running; it cannot be started twice.")
        task_id = f"curation-{run.pk}-{secrets.token_hex(6)}"
        CurationRun.objects.filter(pk=run.pk).update(status=CurationStatus.QUEUED, error="", celery_task_id=task_id, finished_at=None)
        enqueue_on_commit("training.tasks.run_curation_funnel", run.pk, task_id=task_id)
    run.refresh_from_db()
    return run


@contextlib.contextmanager
def _curation_lock(run: CurationRun):
    """Yields True while this process holds the run's lock, False if another process does (released if it dies)."""
    folder = curation_run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / CURATION_LOCK_FILE, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _finite(value):
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _jsonable_scores(scores: dict) -> dict:
    return {key: (_finite(value) if isinstance(value, float) else value) for key, value in scores.items()}


def _load_funnel_models(run: CurationRun):
    """(scorer, head) that the run's stages need, or None for each; TrainingError saying what to fix."""
    from training.aesthetic import AestheticHead, AestheticHeadError
    from training.clip_scoring import ClipLoadError, load_clip

    scorer = head = None
    if _uses_clip(run.stages, run.aesthetic_head_path):
        try:
            scorer = load_clip(run.clip_model_name or None, run.clip_model_path)
        except ClipLoadError as exc:
            raise TrainingError(
                f"The CLIP model cannot be loaded: {exc}. Restore it and start the run again, or create a new run "
                "with a CLIP model path the workers can read."
            ) from None
    if _uses_aesthetic_head(run.stages, run.aesthetic_head_path):
        try:
            head = AestheticHead.load(run.aesthetic_head_path)
        except AestheticHeadError as exc:
            raise TrainingError(
                f"The aesthetic head cannot be loaded: {exc}. Restore it and start the run again, or create a new run "
                "with another head."
            ) from None
    return scorer, head


def execute_curation_run(run_id: int, task_id: str = "") -> str:
    """The funnel task's body: claim the run, compute, write every outcome and the report at once.

    Idempotent: a finished run is left alone, a run another live worker holds is left to it.
    """
    try:
        run = CurationRun.objects.select_related("collection").get(pk=run_id)
    except CurationRun.DoesNotExist:
        return f"curation run {run_id} no longer exists"
    if run.status == CurationStatus.FINISHED:
        # Before taking the lock: a late duplicate must not report a finished run as "being computed" just
        # because another duplicate holds the lock for its own look at the status.
        return f"curation run {run_id} had finished already"
    with _curation_lock(run) as held:
        if not held:
            return f"curation run {run_id} is being computed by another worker; left it"
        with transaction.atomic():
            run = CurationRun.objects.select_for_update().select_related("collection").get(pk=run_id)
            if run.status == CurationStatus.FINISHED:
                return f"curation run {run_id} had finished already"
            if run.status == CurationStatus.FAILED:
                return f"curation run {run_id} failed before; start it again to retry"
            # queued, or running with its lock free: the worker that claimed it died, so this delivery takes over.
            CurationRun.objects.filter(pk=run_id).update(status=CurationStatus.RUNNING, started_at=timezone.now(), error="")
        # Sheets left by an earlier attempt (or by a run of a recreated database with this id) show other outcomes;
        # none is drawn while the run is not finished.
        for sheet in curation_run_dir(run).glob("sheet-*.png"):
            sheet.unlink(missing_ok=True)
        try:
            _compute_and_record(run)
        except (TrainingError, curation.CurationError) as exc:
            _fail_curation_run(run_id, str(exc))
            return f"curation run {run_id} failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - anything else is a bug; the run must not stay "running"
            logger.exception("curation run %s failed", run_id)
            _fail_curation_run(run_id, f"Unexpected error ({type(exc).__name__}: {exc}); see the worker log.")
            raise
    return f"curation run {run_id} finished"


def _fail_curation_run(run_id: int, error: str) -> None:
    CurationRun.objects.filter(pk=run_id).update(status=CurationStatus.FAILED, error=error, finished_at=timezone.now())


def _compute_and_record(run: CurationRun) -> None:
    stages = stages_from_config(run.stages)
    folder = Path(run.collection.path)
    if not folder.is_dir():
        raise TrainingError(f"The collection folder {folder} is gone; restore it, or import the images as a new collection.")
    rows = list(run.collection.candidates.all())
    by_path = {row.relative_path: row for row in rows}
    scorer, head = _load_funnel_models(run)
    result = curation.run_funnel([funnel_candidate(row, folder) for row in rows], stages, scorer=scorer, aesthetic_head=head)

    outcomes = []
    for candidate in result.kept:
        scores = result.scores.get(candidate.id, {})
        outcomes.append(FunnelOutcome(
            run=run, candidate=by_path[candidate.id], kept=True, clip_score=_finite(scores.get("clip_score")),
            aesthetic_score=_finite(scores.get("aesthetic_score")), scores=_jsonable_scores(scores),
        ))
    for rejection in result.rejected:
        scores = result.scores.get(rejection.candidate.id, {})
        outcomes.append(FunnelOutcome(
            run=run, candidate=by_path[rejection.candidate.id], kept=False, stage=rejection.stage,
            reason=rejection.reason[:500], duplicate_of=rejection.duplicate_of or "",
            clip_score=_finite(scores.get("clip_score")), aesthetic_score=_finite(scores.get("aesthetic_score")),
            scores=_jsonable_scores(scores),
        ))
    report = json.loads(json.dumps(result.report(), allow_nan=False, default=str))
    with transaction.atomic():
        locked = CurationRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != CurationStatus.RUNNING:
            raise TrainingError(f"Curation run {run.pk} is {locked.status}, not running; its results were not written.")
        FunnelOutcome.objects.filter(run=run).delete()  # none, unless an earlier write was rolled back halfway
        FunnelOutcome.objects.bulk_create(outcomes, batch_size=1000)
        CurationRun.objects.filter(pk=run.pk).update(
            status=CurationStatus.FINISHED, report=report, count_in=result.count_in, count_kept=len(result.kept),
            finished_at=timezone.now(), error="",
        )


def funnel_result_from_outcomes(run: CurationRun) -> curation.FunnelResult:
    """The stored outcomes of a finished run as a FunnelResult (for contact sheets), rejections in stage order."""
    folder = Path(run.collection.path)
    outcomes = list(run.outcomes.select_related("candidate"))
    kept = [funnel_candidate(o.candidate, folder) for o in outcomes if o.kept]
    records = []
    for stage in run.report.get("stages", []):
        rejections = [
            curation.Rejection(funnel_candidate(o.candidate, folder), o.stage, o.reason, o.duplicate_of or None)
            for o in outcomes if not o.kept and o.stage == stage["name"]
        ]
        records.append(curation.StageRecord(stage["name"], stage["kind"], stage["config"], stage["status"],
                                            stage["count_in"], stage["count_out"], rejections))
    scores = {o.candidate.relative_path: dict(o.scores) for o in outcomes}
    return curation.FunnelResult(count_in=run.count_in, stages=records, kept=kept, scores=scores)


def curation_contact_sheet(run: CurationRun, kept: bool, n: int = 24) -> Path:
    """The contact sheet of kept (or rejected) examples of a finished run, drawn once and cached in its folder."""
    if run.status != CurationStatus.FINISHED:
        raise TrainingError(f"Curation run {run.pk} is {run.status}; contact sheets are drawn once it has finished.")
    path = curation_run_dir(run) / f"sheet-{'kept' if kept else 'rejected'}.png"
    if not path.is_file():
        try:
            curation.contact_sheet(funnel_result_from_outcomes(run), path, kept=kept, n=n)
        except curation.CurationError as exc:
            raise TrainingError(str(exc)) from None
    return path


# --- Freezing a selection and training an aesthetic head -------------------------------------------


def _flat_file_names(rows) -> list[str]:
    """Plain, unique file names for candidates from nested folders (also unique ignoring case)."""
    names, seen = [], set()
    for row in rows:
        base = row.relative_path.replace("/", "__")
        stem, suffix = os.path.splitext(base)
        name, number = base, 2
        while name.lower() in seen:
            name, number = f"{stem}-{number}{suffix}", number + 1
        seen.add(name.lower())
        names.append(name)
    return names


def freeze_curated_dataset(name: str, entries, *, description: str = "", created_by=None) -> CuratedDataset:
    """Copy the chosen candidates with their (possibly edited) captions into a new curated dataset folder under
    NEEDLE_TRAINING_DIR/datasets/NAME, written whole or not at all, and freeze it (import_curated_dataset).

    ``entries``: (Candidate row, caption) pairs.
    """
    from training.atomic import publish_directory
    from training.datasets import CAPTIONS_FILE

    name = _check_new_name(name, "curated dataset", CuratedDataset.objects)
    entries = list(entries)
    if not entries:
        raise TrainingError("Choose at least one candidate to freeze into a dataset.")
    pks = [row.pk for row, _ in entries]
    if len(set(pks)) != len(pks):
        raise TrainingError("A candidate is chosen twice; each image can appear once in a dataset.")
    for row, caption in entries:
        if not isinstance(caption, str) or not caption.strip():
            raise TrainingError(f"{row.relative_path} has an empty caption; give every chosen image a caption.")
    final = training_dir() / "datasets" / name
    if final.exists():
        raise TrainingError(f"{final} already exists; choose another dataset name (or move that folder away).")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{name}.staging-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        lines = []
        for (row, caption), file_name in zip(entries, _flat_file_names([row for row, _ in entries])):
            source = Path(row.collection.path) / row.relative_path
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise TrainingError(f"{source} cannot be read ({exc}); restore it or leave it out.") from None
            if hashlib.sha256(data).hexdigest() != row.sha256:
                raise TrainingError(f"{source} changed since the collection {row.collection.name} was imported; "
                                    "restore it or re-import the collection.")
            (staging / file_name).write_bytes(data)
            lines.append(json.dumps({"file_name": file_name, "text": caption.strip()}, ensure_ascii=False))
        (staging / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            publish_directory(staging, final)
        except OSError as exc:
            raise TrainingError(f"{final} could not be created ({exc}); choose another name.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        return import_curated_dataset(name, str(final), description=description, created_by=created_by)
    except TrainingError:
        shutil.rmtree(final, ignore_errors=True)  # a folder nobody can train from: do not leave it behind
        raise


def train_aesthetic_head_from_ratings(ratings, *, clip_model_path, clip_model_name: str = "", out_path) -> Path:
    """Fit a LAION-format aesthetic head on the CLIP image embeddings of rated candidates and save it to ``out_path``.

    ``ratings``: (Candidate row, rating 1-5) pairs; several ratings of one candidate are averaged.
    """
    import numpy as np

    from training.aesthetic import AestheticHeadError, train_aesthetic_head
    from training.clip_scoring import ClipLoadError, load_clip

    out_path = Path(out_path).expanduser()
    if out_path.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
        raise TrainingError(f"{out_path}: name the head file .pth or .safetensors (the LAION layout).")
    by_candidate: dict[int, list[float]] = {}
    rows: dict[int, Candidate] = {}
    for row, rating in ratings:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
            raise TrainingError(f"{row.relative_path} has the rating {rating!r}; ratings run from 1 to 5.")
        by_candidate.setdefault(row.pk, []).append(float(rating))
        rows[row.pk] = row
    if len(by_candidate) < 2:
        raise TrainingError(f"{len(by_candidate)} rated image(s): rate at least 2 different images to train a head.")
    try:
        scorer = load_clip(clip_model_name or None, clip_model_path)
    except ClipLoadError as exc:
        raise TrainingError(f"The CLIP model cannot be loaded: {exc}") from None
    order = list(by_candidate)
    try:
        images = [funnel_candidate(rows[pk]).open_image() for pk in order]
    except curation.CurationError as exc:
        raise TrainingError(str(exc)) from None
    embeddings = scorer.embed_images(images)
    targets = np.array([np.mean(by_candidate[pk]) for pk in order])
    try:
        training = train_aesthetic_head(embeddings, targets, kind="absolute", validation_fraction=0.2 if len(order) >= 10 else 0.0)
    except AestheticHeadError as exc:
        raise TrainingError(str(exc)) from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return training.head.save(out_path)
