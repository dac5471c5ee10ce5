"""Reads for pages, progress.json and the commands: runs, whether they are alive, checkpoints' win rates and the
automatic pick, curation runs, human curation stages. Nothing here changes a row or a file.

(About 550 lines: one module of reads for the whole training app, grouped by section; the next to split if it
grows.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from analysis.services import campaign_win_rates
from annotation.models import Campaign, Criterion
from core import csv_export
from training import checkpoints
from training.trainer_process import TRAINER_LOG, process_alive
from training.validation import GRID_FILE, LOSS_CURVE_FILE, VALIDATION_DIR

from .models import CurationDecision, CurationReview, QualityTuningRun, RunCheckpoint

Status = QualityTuningRun.Status

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
    path = Path(run.run_dir) / TRAINER_LOG
    if not run.run_dir or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - max_bytes))
        return handle.read().decode("utf-8", errors="replace")


# --- Whether a run is alive, stale or lost --------------------------------------------------------


def last_report(run: QualityTuningRun) -> datetime:
    return run.heartbeat_at or run.started_at or run.created_at


def is_stale(run: QualityTuningRun, now: datetime | None = None) -> bool:
    """A running run whose task stopped reporting for NEEDLE_TRAINING_STALE_SECONDS: its worker is probably gone."""
    if run.status not in (Status.RUNNING, Status.CANCELLING):
        return False
    return (now or timezone.now()) - last_report(run) > timedelta(seconds=settings.NEEDLE_TRAINING_STALE_SECONDS)


def resumable_at(run: QualityTuningRun) -> datetime:
    """When a running run that stopped reporting counts as stale (and may be resumed or cancelled)."""
    return last_report(run) + timedelta(seconds=settings.NEEDLE_TRAINING_STALE_SECONDS)


def follower_alive(run: QualityTuningRun) -> bool:
    """Whether some task reported on the run a moment ago (it polls every NEEDLE_TRAINING_POLL_SECONDS)."""
    fresh = timedelta(seconds=max(10.0, 5 * settings.NEEDLE_TRAINING_POLL_SECONDS))
    return run.heartbeat_at is not None and timezone.now() - run.heartbeat_at < fresh


def run_processes(run: QualityTuningRun) -> tuple[str | None, set[int]]:
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
    if run.status not in (Status.RUNNING, Status.CANCELLING) or follower_alive(run):
        return False
    host, pids = run_processes(run)
    if host != socket.gethostname() or not pids:
        return False
    return not any(process_alive(pid) for pid in pids)


def is_lost(run: QualityTuningRun, now: datetime | None = None) -> bool:
    """Running, but nothing trains it any more: its worker died (seen at once on this machine) or went silent."""
    return trainer_is_dead(run) or is_stale(run, now)


def can_start(run: QualityTuningRun) -> bool:
    return run.status in (Status.QUEUED, Status.FAILED, Status.CANCELLED) or is_lost(run)


# --- Choosing a checkpoint: raters' win rates per step, the automatic pick -------------------------

# Where a failed automatic scoring is noted for the run page (the run itself goes on).
SCORING_WARNING_FILE = "aesthetic_scoring_warning.txt"


def checkpoint_win_rates(run: QualityTuningRun) -> list[dict]:
    """Per checkpoint in the run's checkpoint campaign: its visual-appeal win rate against the base, by step.

    The numbers are analysis.services.campaign_win_rates' (item-level majority,
    prompt-clustered bootstrap interval); ``win_rate`` is None until a
    comparison is complete. ``comparisons`` counts complete items, ``incomplete``
    the items with some but fewer than k votes.
    """
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
        if (
            row["criterion"] != Criterion.VISUAL_APPEAL
            or row["model_a"] != run.base_model.name
            or row["model_b"] not in step_of
        ):
            continue
        rows.append(
            {
                "step": step_of[row["model_b"]],
                "model": row["model_b"],
                "win_rate": row["win_rate"],
                "low": row["low"],
                "high": row["high"],
                "comparisons": row["compared"],
                "incomplete": row["incomplete_items"],
            }
        )
    return sorted(rows, key=lambda r: r["step"])


def automatic_pick(run: QualityTuningRun) -> RunCheckpoint | None:
    """The checkpoint whose validation images score best; on a tie the earlier step (later steps overfit more)."""
    return (
        run.checkpoints.filter(validation_aesthetic_score__isnull=False)
        .order_by("-validation_aesthetic_score", "step")
        .first()
    )


def scoring_warning(run: QualityTuningRun) -> str:
    """Why the automatic scoring of this run last failed, if it did (the run page shows it)."""
    path = Path(run.run_dir) / SCORING_WARNING_FILE
    try:
        return path.read_text(encoding="utf-8").strip() if run.run_dir else ""
    except FileNotFoundError:
        return ""


def checkpoint_rows(run: QualityTuningRun, win_rates: list[dict] | None = None) -> list[dict]:
    """One row per checkpoint, with its validation aesthetic score, the automatic pick, and raters' win rate vs base."""
    if win_rates is None:
        win_rates = checkpoint_win_rates(run)
    by_step = {row["step"]: row for row in win_rates}
    pick = automatic_pick(run)
    rows = []
    for cp in run.checkpoints.select_related("registered_model"):
        rows.append(
            {
                "id": cp.pk,
                "step": cp.step,
                "saved_at": cp.saved_at.isoformat(),
                "loss": cp.loss,
                "exists": cp.exists,
                "registered_model": cp.registered_model.name if cp.registered_model else None,
                "validation_aesthetic_score": cp.validation_aesthetic_score,
                "automatic_pick": pick is not None and pick.pk == cp.pk,
                "win_rate": by_step.get(cp.step),
            }
        )
    return rows


def checkpoint_campaign_summary(run: QualityTuningRun) -> dict | None:
    campaign = run.checkpoint_campaign
    if campaign is None:
        return None
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "url": reverse("campaigns:detail", args=[campaign.pk]),
    }


def run_progress(run: QualityTuningRun) -> dict:
    """What progress.json and ``quality_tune status`` show."""
    loss_curve, grid = run_image(run, "loss"), run_image(run, "grid")
    win_rates = checkpoint_win_rates(run)
    pick = automatic_pick(run)
    return {
        "id": run.pk,
        "status": run.status,
        "active": run.is_active,
        "stale": is_lost(run),
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
        "checkpoints": checkpoint_rows(run, win_rates),
        "automatic_pick": pick.step if pick is not None else None,
        "aesthetic_scoring": bool(run.aesthetic_head_path),
        "scoring_warning": scoring_warning(run),
        "checkpoint_campaign": checkpoint_campaign_summary(run),
        "checkpoint_win_rates": win_rates,
        "win_rate_curve": (
            reverse("training:win_rate_curve", args=[run.pk]) + "?v=" + win_rate_version(win_rates)
            if any(row["win_rate"] is not None for row in win_rates)
            else None
        ),
        "loss_curve": reverse("training:loss_curve", args=[run.pk]) + f"?v={image_version(loss_curve)}"
        if loss_curve
        else None,
        "validation_grid": reverse("training:validation_grid", args=[run.pk]) + f"?v={image_version(grid)}"
        if grid
        else None,
    }


def win_rate_version(win_rates: list[dict]) -> str:
    """Changes whenever a number on the plot does, so the page can refresh it."""
    return hashlib.sha256(json.dumps(win_rates, sort_keys=True).encode()).hexdigest()[:12]


def config_rows(run: QualityTuningRun) -> list[tuple[str, str]]:
    config = resolved_config(run)
    return [
        (name, json.dumps(value) if isinstance(value, (list, dict)) else str(value)) for name, value in config.items()
    ]


# --- Curation runs ---------------------------------------------------------------------------------

OUTCOME_CSV_COLUMNS = (
    "file",
    "caption",
    "kept",
    "stage",
    "reason",
    "duplicate_of",
    "clip_score",
    "aesthetic_score",
    "width",
    "height",
    "sha256",
    "scores",
)


def stage_rows(curation_run) -> list[dict]:
    """One row per funnel stage of a finished run: counts in and out, its configuration, why it was skipped."""
    rows = []
    for stage in (curation_run.report or {}).get("stages", []):
        config = ", ".join(f"{key}={value}" for key, value in stage.get("config", {}).items())
        rows.append({**stage, "config_text": config})
    return rows


def histogram_bars(curation_run) -> list[dict]:
    """The report's score histograms as bars for an HTML page: ``[{"score", "n", "bars": [{label, count, percent}]}]``."""
    out = []
    for key, histogram in sorted(((curation_run.report or {}).get("histograms") or {}).items()):
        if not histogram:
            continue
        edges, counts = histogram["bin_edges"], histogram["counts"]
        top = max(counts) or 1
        bars = [
            {"label": f"{edges[i]:.2f} – {edges[i + 1]:.2f}", "count": count, "percent": round(100 * count / top)}
            for i, count in enumerate(counts)
        ]
        out.append({"score": key.replace("_", " "), "key": key, "n": histogram["n"], "bars": bars})
    return out


def outcome_records(curation_run):
    """Every outcome of a run as a dict (file, verdict, stage, reason, scores), kept ones first."""
    for outcome in curation_run.outcomes.select_related("candidate").iterator(chunk_size=2000):
        c = outcome.candidate
        yield {
            "file": c.relative_path,
            "caption": c.caption,
            "kept": outcome.kept,
            "stage": outcome.stage,
            "reason": outcome.reason,
            "duplicate_of": outcome.duplicate_of,
            "clip_score": outcome.clip_score,
            "aesthetic_score": outcome.aesthetic_score,
            "width": c.width,
            "height": c.height,
            "sha256": c.sha256,
            "scores": outcome.scores,
        }


def write_outcomes_csv(curation_run, stream) -> int:
    """Write the run's outcomes as CSV (OUTCOME_CSV_COLUMNS; scores as JSON) to a text stream; returns the row count."""
    writer = csv_export.writer(stream)
    writer.writerow(OUTCOME_CSV_COLUMNS)
    count = 0
    for record in outcome_records(curation_run):
        record["scores"] = json.dumps(record["scores"], sort_keys=True)
        record["kept"] = "yes" if record["kept"] else "no"
        writer.writerow(["" if record[column] is None else record[column] for column in OUTCOME_CSV_COLUMNS])
        count += 1
    return count


def curation_run_summary(curation_run) -> dict:
    """A run, its report and its outcomes as JSON-ready data (``curate report --format json``)."""
    return {
        "id": curation_run.pk,
        "collection": curation_run.collection.name,
        "status": curation_run.status,
        "error": curation_run.error,
        "stages": curation_run.stages,
        "clip_model_path": curation_run.clip_model_path,
        "clip_model_name": curation_run.clip_model_name,
        "aesthetic_head_path": curation_run.aesthetic_head_path,
        "count_in": curation_run.count_in,
        "count_kept": curation_run.count_kept,
        "report": curation_run.report,
        "started_at": curation_run.started_at.isoformat() if curation_run.started_at else None,
        "finished_at": curation_run.finished_at.isoformat() if curation_run.finished_at else None,
        "outcomes": list(outcome_records(curation_run)),
    }


# --- Human curation stages --------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewerCount:
    reviewer: str
    decided: int
    kept: int
    median_seconds: float | None


@dataclass(frozen=True)
class ReviewProgress:
    total: int  # candidates in the stage
    decided: int
    kept: int  # kept (generalist) or selected (specialist)
    leased: int  # open leases right now
    target: int  # specialist: the final size; 0 without a target
    median_seconds: float | None
    reviewers: list[ReviewerCount]

    @property
    def percent(self) -> int:
        return int(100 * self.decided / self.total) if self.total else 0

    @property
    def done(self) -> bool:
        return self.decided >= self.total or bool(self.target and self.kept >= self.target)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def review_progress(review, now: datetime | None = None) -> ReviewProgress:
    now = now or timezone.now()
    decisions = CurationDecision.objects.filter(review=review)
    counts = decisions.aggregate(
        total=Count("id"),
        decided=Count("id", filter=Q(decided_at__isnull=False)),
        kept=Count("id", filter=Q(keep=True)),
        leased=Count("id", filter=Q(decided_at__isnull=True, leased_until__gt=now)),
    )
    per_reviewer: dict[str, list] = defaultdict(list)
    seconds_all = []
    for username, keep, seconds in decisions.filter(decided_at__isnull=False).values_list(
        "reviewer__username", "keep", "seconds_on_task"
    ):
        per_reviewer[username or "(deleted account)"].append((keep, seconds))
        seconds_all.append(seconds)
    reviewers = [
        ReviewerCount(name, len(rows), sum(1 for keep, _ in rows if keep), _median(s for _, s in rows))
        for name, rows in sorted(per_reviewer.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    return ReviewProgress(
        total=counts["total"],
        decided=counts["decided"],
        kept=counts["kept"],
        leased=counts["leased"],
        target=review.target_size if review.stage == "specialist" else 0,
        median_seconds=_median(seconds_all),
        reviewers=reviewers,
    )


def peek_next_decision(review, user, after, now: datetime | None = None):
    """The candidate this reviewer will most likely get after ``after``, without leasing it: for preloading only."""

    now = now or timezone.now()
    return (
        CurationDecision.objects.filter(review=review, decided_at__isnull=True)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now) | Q(reviewer=user))
        .exclude(pk=after.pk)
        .filter(position__gt=after.position)
        .order_by("position")
        .first()
    )


def open_reviews_for(user):
    """Open stages a reviewer may work on, with their progress."""

    reviews = CurationReview.objects.filter(status=CurationReview.Status.OPEN).order_by("-created_at")
    return [(review, review_progress(review)) for review in reviews]


def reviewer_may_review(user) -> bool:
    return bool(
        user.is_authenticated and user.is_active and (user.is_staff or user.has_perm("training.review_curation"))
    )


DECISION_EXPORT_COLUMNS = [
    "position",
    "candidate_path",
    "caption",
    "decided",
    "decided_at",
    "keep",
    "rating",
    "reasons",
    "corrected_caption",
    "reviewer",
    "seconds_on_task",
]


def decision_export_rows(review):
    """One row per candidate of the stage (DECISION_EXPORT_COLUMNS), in review order, undecided ones included.

    ``caption`` is the candidate's imported caption and ``corrected_caption`` the
    specialist's (blank when none was written); ``reasons`` are joined with ``;``.
    """

    decisions = (
        CurationDecision.objects.filter(review=review)
        .order_by("position")
        .values_list(
            "position",
            "candidate__collection__path",
            "candidate__relative_path",
            "candidate__caption",
            "decided_at",
            "keep",
            "rating",
            "reasons",
            "caption",
            "reviewer__username",
            "seconds_on_task",
        )
    )
    for (
        position,
        folder,
        relative_path,
        caption,
        decided_at,
        keep,
        rating,
        reasons,
        corrected,
        reviewer,
        seconds,
    ) in decisions.iterator(chunk_size=2000):
        yield [
            position,
            str(Path(folder) / relative_path),
            caption,
            decided_at is not None,
            decided_at.isoformat() if decided_at else "",
            "" if keep is None else keep,
            "" if rating is None else rating,
            ";".join(reasons or ()),
            corrected,
            reviewer or "",
            "" if seconds is None else seconds,
        ]
