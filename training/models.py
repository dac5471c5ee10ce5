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
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from generation.models import TextToImageModel


class CuratedDataset(models.Model):
    """A frozen snapshot of a curated dataset folder: the content hash at import names exactly what trains."""

    name = models.SlugField(max_length=100, unique=True, help_text="Short unique name, e.g. emu-2k-v1.")
    path = models.CharField(max_length=1000, help_text="Folder of images plus captions.jsonl.")
    content_hash = models.CharField(
        max_length=64, editable=False, help_text="sha256 over (file, file sha256, caption)."
    )
    image_count = models.PositiveIntegerField(editable=False)
    description = models.TextField(blank=True)
    frozen_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

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
    base_fingerprint = models.CharField(
        max_length=64, editable=False, help_text="The base weights the run was created on."
    )
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

    checkpoint_campaign = models.ForeignKey(
        "annotation.Campaign",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Each checkpoint vs the base on a small prompt set (visual appeal): win rates per step guide the pick.",
    )
    aesthetic_head_path = models.CharField(
        max_length=1000,
        blank=True,
        help_text="Optional LAION-format aesthetic head to score validation images per step.",
    )
    clip_model_path = models.CharField(max_length=1000, blank=True, help_text="The open_clip model that head sits on.")
    clip_model_name = models.CharField(max_length=100, blank=True)

    celery_task_id = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker started (or resumed) the trainer.")
    worker = models.CharField(max_length=255, blank=True, help_text="host and pid of the task following the trainer")
    trainer_pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last time the following task reported.")

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
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
    lineage = models.JSONField(
        default=dict, blank=True, help_text="Base fingerprint, dataset hash, hyperparameters, step."
    )
    validation_aesthetic_score = models.FloatField(
        null=True, blank=True, help_text="Mean aesthetic score of this step's validation images (automatic pick)."
    )
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


# --- Curation: candidate collections and the automatic funnel ------------------------------------------------------
#
#   CandidateCollection ──< Candidate ──< FunnelOutcome >── CurationRun (one pass of the automatic funnel)
#
# The human stages that follow the funnel (generalist, then specialist) live in the
# annotation app (annotation.models.CurationReview); the specialist stage's selection
# is frozen into a CuratedDataset above.


class CandidateCollection(models.Model):
    """A folder of candidate images with captions, imported once; problems found at import are kept for the report."""

    name = models.SlugField(max_length=100, unique=True)
    path = models.CharField(max_length=1000, help_text="Folder of images plus captions.csv or captions.jsonl.")
    candidate_count = models.PositiveIntegerField(default=0, editable=False)
    problems = models.JSONField(
        default=list, blank=True, help_text="Import problems, one sentence each (file or line named)."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-imported_at"]

    def __str__(self) -> str:
        return self.name


class Candidate(models.Model):
    """One imported image-caption pair (training.curation.FunnelCandidate as a row); ``relative_path`` is its id."""

    collection = models.ForeignKey(CandidateCollection, on_delete=models.CASCADE, related_name="candidates")
    relative_path = models.CharField(max_length=1000, help_text="POSIX path inside the collection folder.")
    caption = models.TextField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    format = models.CharField(max_length=16)
    size_bytes = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["collection", "relative_path"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "relative_path"], name="candidate_unique_path"),
        ]

    def __str__(self) -> str:
        return self.relative_path

    @property
    def path(self) -> Path:
        return Path(self.collection.path) / self.relative_path


class CurationRun(models.Model):
    """One pass of the automatic funnel over a collection, with its stage configuration and its report.

    ``queued ──► running ──► finished | failed``; a failed run can be started again
    (outcomes are written in one transaction at the end, so there is never half a result).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        FINISHED = "finished", "finished"
        FAILED = "failed", "failed"

    collection = models.ForeignKey(CandidateCollection, on_delete=models.CASCADE, related_name="curation_runs")
    stages = models.JSONField(help_text='Stage list, e.g. [{"kind": "ResolutionStage", "min_side": 512}, ...].')
    clip_model_path = models.CharField(
        max_length=1000, blank=True, help_text="Local open_clip checkpoint file or folder."
    )
    clip_model_name = models.CharField(max_length=100, blank=True, help_text="open_clip architecture, e.g. ViT-L-14.")
    aesthetic_head_path = models.CharField(
        max_length=1000, blank=True, help_text="LAION-format aesthetic head (.pth/.safetensors)."
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    report = models.JSONField(
        default=dict, blank=True, help_text="FunnelResult.report(): counts per stage, histograms."
    )
    count_in = models.PositiveIntegerField(default=0)
    count_kept = models.PositiveIntegerField(default=0)
    celery_task_id = models.CharField(max_length=255, blank=True)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"curation {self.pk} of {self.collection.name}"


class FunnelOutcome(models.Model):
    """What the funnel did with one candidate: kept, or rejected by which stage and why; its scores."""

    run = models.ForeignKey(CurationRun, on_delete=models.CASCADE, related_name="outcomes")
    candidate = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="funnel_outcomes")
    kept = models.BooleanField()
    stage = models.CharField(max_length=100, blank=True, help_text="The stage that rejected it; blank when kept.")
    reason = models.CharField(max_length=500, blank=True)
    duplicate_of = models.CharField(max_length=1000, blank=True, help_text="relative_path of the copy that was kept.")
    clip_score = models.FloatField(null=True, blank=True)
    aesthetic_score = models.FloatField(null=True, blank=True)
    scores = models.JSONField(
        default=dict, blank=True, help_text="Every score the stages computed (phash, ocr words, ...)."
    )

    class Meta:
        ordering = ["run", "-kept", "-aesthetic_score", "candidate"]
        constraints = [models.UniqueConstraint(fields=["run", "candidate"], name="funnel_outcome_once")]


# --- Human curation stages ------------------------------------------------------------------------------------------
#
# After the automatic funnel (training.CurationRun), people narrow the candidates in two
# stages, as in Emu: generalists keep or reject fast (or rate 1-5, which also trains an
# aesthetic head), then specialists select the final set for composition, lighting,
# colour and contrast, subject and background, and write or correct each caption.
# The specialist selection is frozen into a training.CuratedDataset with a content hash.


class CurationStage(models.TextChoices):
    GENERALIST = "generalist", "generalist (keep or reject)"
    SPECIALIST = "specialist", "specialist (select with reasons, caption)"


class SelectionReason(models.TextChoices):
    COMPOSITION = "composition", "composition"
    LIGHTING = "lighting", "lighting"
    COLOUR_CONTRAST = "colour_contrast", "colour and contrast"
    SUBJECT_BACKGROUND = "subject_background", "subject and background"


class CurationReview(models.Model):
    """One human curation stage over a set of candidates, with one decision row per candidate."""

    class Mode(models.TextChoices):
        KEEP_REJECT = "keep_reject", "keep or reject"
        RATING = "rating", "rate 1-5 (kept at or above the threshold)"

    class Status(models.TextChoices):
        OPEN = "open", "open"
        CLOSED = "closed", "closed"

    name = models.SlugField(max_length=100, unique=True)
    stage = models.CharField(max_length=16, choices=CurationStage.choices)
    funnel_run = models.ForeignKey(CurationRun, on_delete=models.PROTECT, related_name="reviews")
    source_review = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="next_reviews",
        help_text="Specialist stage: the generalist stage whose kept candidates it reviews.",
    )
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.KEEP_REJECT)
    keep_threshold = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text="Rating mode: ratings at or above keep.",
    )
    target_size = models.PositiveIntegerField(
        default=0,
        help_text="Specialist stage: the size of the final dataset (the stage is done when reached). 0: no target.",
    )
    instructions = models.TextField(blank=True)
    lease_seconds = models.PositiveIntegerField(default=300)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    dataset = models.OneToOneField(
        CuratedDataset,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="curation_review",
        help_text="The frozen dataset made from this specialist stage's selection.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "annotation_curationreview"  # created by annotation, which held the stages until issue 11
        ordering = ["-created_at"]
        permissions = [("review_curation", "Can review candidates in human curation stages")]

    def __str__(self) -> str:
        return self.name


class CurationDecision(models.Model):
    """One candidate in one human stage: leased to a reviewer, then decided once."""

    review = models.ForeignKey(CurationReview, on_delete=models.CASCADE, related_name="decisions")
    candidate = models.ForeignKey(Candidate, on_delete=models.PROTECT, related_name="curation_decisions")
    # Review order: best automatic aesthetic score first, so a stage stopped early saw the likeliest needles.
    position = models.PositiveIntegerField()
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    leased_until = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    keep = models.BooleanField(null=True, blank=True)
    rating = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    reasons = models.JSONField(default=list, blank=True, help_text="Specialist: SelectionReason values.")
    caption = models.TextField(
        blank=True, help_text="Specialist: the written or corrected caption (blank: the original)."
    )
    seconds_on_task = models.FloatField(null=True, blank=True)

    class Meta:
        db_table = "annotation_curationdecision"
        ordering = ["review", "position"]
        constraints = [
            models.UniqueConstraint(fields=["review", "candidate"], name="curation_decision_once"),
            models.UniqueConstraint(fields=["review", "position"], name="curation_decision_position"),
        ]
        indexes = [
            models.Index(
                fields=["review", "position"], condition=Q(decided_at__isnull=True), name="curation_undecided"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.review.name}: {self.candidate_id}"
