"""Read-only views of runs for pages, progress.json and the command: nothing here changes a row or a file."""

from __future__ import annotations

import json
from pathlib import Path

from django.urls import reverse

from training import checkpoints
from training.validation import GRID_FILE, LOSS_CURVE_FILE, VALIDATION_DIR

from . import services
from .models import QualityTuningRun

TRAINER_LOG_TAIL_BYTES = 20_000


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run_image(run: QualityTuningRun, kind: str) -> Path | None:
    """The loss curve ("loss") or validation grid ("grid") of a run, if it was drawn yet."""
    path = Path(run.run_dir) / (LOSS_CURVE_FILE if kind == "loss" else f"{VALIDATION_DIR}/{GRID_FILE}")
    return path if run.run_dir and path.is_file() else None


def image_version(path: Path | None) -> str:
    """Changes whenever the file is redrawn, so the page can refresh the image."""
    if path is None:
        return ""
    try:
        return str(path.stat().st_mtime_ns)
    except FileNotFoundError:
        return ""


def resolved_config(run: QualityTuningRun) -> dict:
    """The settings the trainer actually uses (resolution and prediction type filled in), once it has started."""
    record = checkpoints.read_run_record(run.run_dir) if run.run_dir and Path(run.run_dir).is_dir() else None
    return record["config"] if record else run.config


def trainer_log_tail(run: QualityTuningRun, max_bytes: int = TRAINER_LOG_TAIL_BYTES) -> str:
    path = Path(run.run_dir) / services.TRAINER_LOG
    if not run.run_dir or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        return handle.read().decode("utf-8", errors="replace")


def checkpoint_rows(run: QualityTuningRun) -> list[dict]:
    rows = []
    for cp in run.checkpoints.select_related("registered_model"):
        rows.append({
            "id": cp.pk,
            "step": cp.step,
            "saved_at": cp.saved_at.isoformat(),
            "loss": cp.loss,
            "exists": cp.exists,
            "registered_model": cp.registered_model.name if cp.registered_model else None,
        })
    return rows


def run_progress(run: QualityTuningRun) -> dict:
    """What progress.json and ``quality_tune status`` show."""
    loss_curve, grid = run_image(run, "loss"), run_image(run, "grid")
    return {
        "id": run.pk,
        "status": run.status,
        "active": run.is_active,
        "stale": services.is_stale(run),
        "step": run.step,
        "max_steps": run.max_steps,
        "percent": run.percent,
        "loss": run.loss,
        "seconds_per_step": run.seconds_per_step,
        "eta_seconds": run.eta_seconds if run.is_active else None,
        "eta": format_duration(run.eta_seconds) if run.is_active else "",
        "error": run.error,
        "attempts": run.attempts,
        "worker": run.worker,
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "checkpoints": checkpoint_rows(run),
        "loss_curve": reverse("training:loss_curve", args=[run.pk]) + f"?v={image_version(loss_curve)}" if loss_curve else None,
        "validation_grid": reverse("training:validation_grid", args=[run.pk]) + f"?v={image_version(grid)}" if grid else None,
    }


def config_rows(run: QualityTuningRun) -> list[tuple[str, str]]:
    config = resolved_config(run)
    return [(name, json.dumps(value) if isinstance(value, (list, dict)) else str(value)) for name, value in config.items()]
