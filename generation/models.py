"""The generation app's data: registered models, prompt sets, batches, images.

An image is identified by what determines its pixels: (model, prompt, seed,
generation parameters). That key is unique, so retried or duplicated tasks can
never produce a second image, and any batch or campaign that needs an image
which already exists simply reuses it.
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import storages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

SCHEDULER_CHOICES = [
    ("default", "as saved with the pipeline"),
    ("ddim", "DDIM"),
    ("pndm", "PNDM"),
    ("lms", "LMS"),
    ("euler", "Euler"),
    ("euler_a", "Euler ancestral"),
    ("dpmpp_2m", "DPM++ 2M"),
    ("dpmpp_2m_karras", "DPM++ 2M Karras"),
    ("unipc", "UniPC"),
]
PARAMETER_FIELDS = ("steps", "guidance_scale", "width", "height", "scheduler")


def canonical_parameters(params: dict) -> dict:
    """The generation parameters in canonical types, so equal settings hash equal."""
    missing = [f for f in PARAMETER_FIELDS if f not in params]
    if missing:
        raise ValueError(f"generation parameters lack {', '.join(missing)}")
    return {
        "steps": int(params["steps"]),
        "guidance_scale": round(float(params["guidance_scale"]), 6),
        "width": int(params["width"]),
        "height": int(params["height"]),
        "scheduler": str(params["scheduler"]),
    }


def parameters_hash(params: dict) -> str:
    blob = json.dumps(canonical_parameters(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class TextToImageModel(models.Model):
    """A text-to-image pipeline registered from a local diffusers directory."""

    class Source(models.TextChoices):
        REGISTERED = "registered", "registered by a researcher"
        QUALITY_TUNED = "quality_tuned", "output of a quality-tuning run"

    name = models.SlugField(max_length=100, unique=True, help_text="Short unique name, e.g. sd15-base.")
    description = models.TextField(blank=True)
    pipeline_path = models.CharField(max_length=1000, help_text="Local directory saved by diffusers save_pretrained.")
    pipeline_class = models.CharField(max_length=200, editable=False)
    weights_fingerprint = models.CharField(
        max_length=64, editable=False, help_text="sha256 over every file of the pipeline directory."
    )
    weights_bytes = models.BigIntegerField(editable=False, default=0)

    default_steps = models.PositiveSmallIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    default_guidance_scale = models.FloatField(
        default=7.5, validators=[MinValueValidator(0.0), MaxValueValidator(50.0)]
    )
    default_width = models.PositiveIntegerField(default=512, validators=[MinValueValidator(8), MaxValueValidator(4096)])
    default_height = models.PositiveIntegerField(
        default=512, validators=[MinValueValidator(8), MaxValueValidator(4096)]
    )
    default_scheduler = models.CharField(max_length=32, choices=SCHEDULER_CHOICES, default="default")

    source = models.CharField(max_length=32, choices=Source.choices, default=Source.REGISTERED)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="derived_models",
        help_text="The model this one was fine-tuned from, if any.",
    )
    registered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "text-to-image model"

    def __str__(self) -> str:
        return self.name

    def clean(self):
        for dim in (self.default_width, self.default_height):
            if dim and dim % 8:
                raise ValidationError("Width and height must be multiples of 8 (the VAE's downsampling factor).")

    @property
    def default_parameters(self) -> dict:
        return canonical_parameters(
            {
                "steps": self.default_steps,
                "guidance_scale": self.default_guidance_scale,
                "width": self.default_width,
                "height": self.default_height,
                "scheduler": self.default_scheduler,
            }
        )


class PromptSet(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    source_filename = models.CharField(max_length=500, blank=True)
    source_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Prompt(models.Model):
    prompt_set = models.ForeignKey(PromptSet, on_delete=models.CASCADE, related_name="prompts")
    position = models.PositiveIntegerField(help_text="Order in the imported file (0-based).")
    text = models.TextField()
    category = models.CharField(max_length=200, blank=True)
    challenge = models.CharField(max_length=200, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["prompt_set", "position"]
        constraints = [
            models.UniqueConstraint(fields=["prompt_set", "position"], name="prompt_unique_position"),
            models.UniqueConstraint(fields=["prompt_set", "text"], name="prompt_unique_text_in_set"),
        ]

    def __str__(self) -> str:
        return self.text[:80]


class GenerationBatch(models.Model):
    """models × prompt set × seeds × parameters, fanned out to Celery in chunks.

    Settings freeze at creation (parameters per model in BatchModel), so the set
    of images a batch stands for never changes and its progress is a count.
    """

    name = models.CharField(max_length=200, blank=True)
    prompt_set = models.ForeignKey(PromptSet, on_delete=models.PROTECT, related_name="batches")
    seeds = models.JSONField(help_text="List of integer seeds; every model gets every (prompt, seed).")
    inference_batch_size = models.PositiveSmallIntegerField(default=8, validators=[MinValueValidator(1)])
    chunk_size = models.PositiveIntegerField(default=64, validators=[MinValueValidator(1)])
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time a worker reported on the batch (starting a chunk, storing a pass)."
    )
    error = models.TextField(blank=True, help_text="Why the batch stopped, in words a researcher can act on.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "generation batches"

    def __str__(self) -> str:
        return self.name or f"batch {self.pk}"


class BatchModel(models.Model):
    """A model's place in a batch, with the parameters frozen for it."""

    batch = models.ForeignKey(GenerationBatch, on_delete=models.CASCADE, related_name="batch_models")
    model = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT)
    parameters = models.JSONField()
    parameters_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["batch", "id"]
        constraints = [models.UniqueConstraint(fields=["batch", "model"], name="batch_model_unique")]


def _image_storage():
    return storages["images"]


class GeneratedImage(models.Model):
    model = models.ForeignKey(TextToImageModel, on_delete=models.PROTECT, related_name="images")
    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="images")
    seed = models.BigIntegerField()
    parameters = models.JSONField()
    parameters_hash = models.CharField(max_length=64)
    weights_fingerprint = models.CharField(max_length=64, help_text="Fingerprint of the weights that made it.")

    file = models.FileField(storage=_image_storage, max_length=200)
    sha256 = models.CharField(max_length=64, db_index=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    seconds = models.FloatField(help_text="Inference time per image (its share of the forward pass).")
    device = models.CharField(max_length=64)
    batch = models.ForeignKey(
        GenerationBatch,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The batch that first made this image; later batches reuse it.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["prompt_id", "seed", "model_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "prompt", "seed", "parameters_hash"], name="generated_image_unique_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.sha256[:12]}.png"
