"""Quality-tuning runs as the web app sees them: frozen curated datasets, runs, and their checkpoints.

The training itself happens in ``python -m training.quality_tuning`` (a
subprocess the Celery task starts and follows, see services.execute_run); the
rows here mirror what that process leaves in its run directory, so a page or a
command can show a run without reading the files.

Run states::

    queued ──► running ──► finished
      │          │  └────► failed ──(resume)──► queued
      │          ▼
      │      cancelling ──► cancelled ──(resume)──► queued
      └──────────────────► cancelled

A finished run registers a checkpoint with
generation.services.register_model(source="quality_tuned", parent=base_model).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from generation.models import TextToImageModel


class CuratedDataset(models.Model):
    """A frozen snapshot of a curated dataset folder: the content hash at import names exactly what trains."""

    name = models.SlugField(max_length=100, unique=True, help_text="Short unique name, e.g. emu-2k-v1.")
    path = models.CharField(max_length=1000, help_text="Folder of images plus captions.jsonl.")
    content_hash = models.CharField(max_length=64, editable=False, help_text="sha256 over (file, file sha256, caption).")
    image_count = models.PositiveIntegerField(editable=False)
    description = models.TextField(blank=True)
    frozen_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["name"]
        verbose_name = "curated dataset"

    def __str__(self) -> str:
        return self.name


class QualityTuningRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        CANCELLING = "cancelling", "cancelling"
        CANCELLED = "cancelled", "cancelled"
        FAILED = "failed", "failed"
        FINISHED = "finished", "finished"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.CANCELLING)
    TERMINAL = (Status.CANCELLED, Status.FAILED, Status.FINISHED)

    base_model = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT, related_name="quality_tuning_runs")
    base_fingerprint = models.CharField(max_length=64, editable=False, help_text="The base weights the run was created on.")
    dataset = models.ForeignKey(CuratedDataset, on_delete=models.PROTECT, related_name="runs")
    config = models.JSONField(help_text="QualityTuningConfig.to_dict(); None fields resolve from the base model.")
    run_dir = models.CharField(max_length=1000, editable=False)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    step = models.PositiveIntegerField(default=0)
    max_steps = models.PositiveIntegerField()
    loss = models.FloatField(null=True, blank=True, help_text="Loss of the last step.")
    seconds_per_step = models.FloatField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the run stopped, in words a researcher can act on.")

    celery_task_id = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker started (or resumed) the trainer.")
    worker = models.CharField(max_length=255, blank=True, help_text="host and pid of the task following the trainer")
    trainer_pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last time the following task reported.")

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "quality-tuning run"
        indexes = [models.Index(fields=["status"], name="qt_run_status")]

    def __str__(self) -> str:
        return f"run {self.pk}: {self.base_model.name} on {self.dataset.name}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def percent(self) -> int:
        return int(100 * self.step / self.max_steps) if self.max_steps else 0

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


class RunCheckpoint(models.Model):
    """A complete checkpoint of a run (``checkpoints/step-NNNNNN``), recorded once it existed on disk."""

    run = models.ForeignKey(QualityTuningRun, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    path = models.CharField(max_length=1000)
    saved_at = models.DateTimeField(help_text="When the trainer finished writing it (its training state file).")
    loss = models.FloatField(null=True, blank=True, help_text="Loss of the step that ended at this checkpoint.")
    exported_path = models.CharField(max_length=1000, blank=True, help_text="The pipeline exported from it, if any.")
    registered_model = models.ForeignKey(
        TextToImageModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="source_checkpoints"
    )
    lineage = models.JSONField(default=dict, blank=True, help_text="Base fingerprint, dataset hash, hyperparameters, step.")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="run_checkpoint_unique_step")]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.step}"

    @property
    def exists(self) -> bool:
        """False once keep_last_checkpoints pruned it (or someone deleted it)."""
        return Path(self.path).is_dir()
