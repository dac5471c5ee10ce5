"""The settings of a quality-tuning run, importable without torch (the Django side builds forms and records from it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
DEFAULT_VALIDATION_PROMPTS = (
    "a red apple on a wooden table",
    "a lighthouse at dusk",
    "portrait of an old fisherman, natural light",
    "a bowl of ramen, studio photograph",
)


class InvalidConfigError(ValueError):
    """The settings cannot work (at all, or with this model or machine); the message says which and why."""


@dataclass(frozen=True)
class QualityTuningConfig:
    """Hyperparameters of a quality-tuning run. Defaults are Emu's where the paper gives them, diffusers' otherwise."""

    batch_size: int = 64  # effective batch per optimizer step, over all processes and micro-batches
    gradient_accumulation_steps: int = 1  # micro-batches per step and process: micro-batch = batch / (processes * this)
    learning_rate: float = 1e-5  # constant after warmup
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    noise_offset: float = 0.1
    snr_gamma: float | None = None  # Min-SNR loss weighting; None trains with the plain MSE
    prediction_type: str | None = None  # None: the base scheduler's (epsilon for SD 1.x, v_prediction for SD 2.x 768)
    max_steps: int = 15000
    checkpoint_every: int = 1000
    keep_last_checkpoints: int | None = None  # None keeps every checkpoint
    validation_every: int = 500
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    validation_seeds: tuple[int, ...] = (0, 1)
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5
    seed: int = 0
    resolution: int | None = None  # None: the base model's native resolution (512 for SD 1.5)
    center_crop: bool = True  # False: one random crop per image, drawn from the seed (see datasets.crop_mode)
    random_flip: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"  # "no" on CPU; "fp16" or "bf16" on GPU

    def __post_init__(self):
        problems = []
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "checkpoint_every", "validation_every",
                     "validation_inference_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.batch_size % max(1, self.gradient_accumulation_steps):
            problems.append(f"batch_size {self.batch_size} is not a multiple of gradient_accumulation_steps {self.gradient_accumulation_steps}")
        if self.learning_rate <= 0:
            problems.append("learning_rate must be positive")
        if self.lr_warmup_steps < 0 or self.noise_offset < 0:
            problems.append("lr_warmup_steps and noise_offset cannot be negative")
        if self.prediction_type not in (None, *PREDICTION_TYPES):
            problems.append(f"prediction_type must be one of {PREDICTION_TYPES} or None")
        if self.mixed_precision not in MIXED_PRECISIONS:
            problems.append(f"mixed_precision must be one of {MIXED_PRECISIONS}")
        if self.keep_last_checkpoints is not None and self.keep_last_checkpoints < 1:
            problems.append("keep_last_checkpoints must be at least 1 (or None to keep all)")
        if not 0.0 < self.ema_decay < 1.0:
            problems.append("ema_decay must be between 0 and 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            problems.append("resolution must be a positive multiple of 8")
        if not self.validation_prompts or not self.validation_seeds:
            problems.append("give at least one validation prompt and seed")
        if problems:
            raise InvalidConfigError("invalid quality-tuning config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> QualityTuningConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidConfigError(f"unknown quality-tuning settings: {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# Settings that may differ when a run is resumed: they change what is saved or shown, not the weights.
RESUMABLE_CHANGES = frozenset({
    "max_steps", "checkpoint_every", "keep_last_checkpoints", "validation_every", "validation_prompts",
    "validation_seeds", "validation_inference_steps", "validation_guidance_scale",
})
