"""The settings of a quality-tuning run, importable without torch (the Django side builds forms and records from it)."""

from __future__ import annotations

import dataclasses
import math
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
    """The settings cannot work (at all, or with this model or machine); the message says which and why.

    ``problems`` lists (setting, message) pairs, so a form can show each message under its field.
    """

    def __init__(self, message: str, problems: list[tuple[str | None, str]] | None = None):
        super().__init__(message)
        self.problems = problems or [(None, message)]


MAX_SEED = 2**63 - 1
# Whole-number settings: (smallest, largest). Largest values are far past any sensible run, but below what the
# database, torch and the trainer's command line take.
WHOLE_RANGES = {
    "batch_size": (1, 65_536),
    "gradient_accumulation_steps": (1, 65_536),
    "lr_warmup_steps": (0, 1_000_000),
    "max_steps": (1, 1_000_000),
    "checkpoint_every": (1, 1_000_000),
    "keep_last_checkpoints": (1, 1_000_000),
    "validation_every": (1, 1_000_000),
    "validation_inference_steps": (1, 1000),
    "seed": (0, 2**32 - 1),
    "resolution": (8, 4096),
}
BOOLEANS = ("center_crop", "random_flip", "use_ema", "gradient_checkpointing")
MAX_VALIDATION_PROMPT_CHARS = 1000


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_real(problems, name, value, *, low, high=None, low_open=False, high_open=False, hint=""):
    """A finite number in [low, high] (open ends as asked); appends (name, message) to ``problems`` otherwise."""
    if not _is_real(value):
        problems.append((name, f"{name} must be a number, not {value!r}{hint}"))
        return
    above = "above" if low_open else "at least"
    bounds = f"{above} {low:g}" + (f" and {'below' if high_open else 'at most'} {high:g}" if high is not None else "")
    if not math.isfinite(value):
        problems.append((name, f"{name} must be a finite number {bounds}, not {value}{hint}"))
    elif (
        value < low
        or (low_open and value == low)
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        problems.append((name, f"{name} must be {bounds}, not {value:g}{hint}"))


def config_problems(config) -> list[tuple[str, str]]:
    """Every setting of ``config`` that cannot work, as (setting, message): types, ranges, and how they combine."""
    problems: list[tuple[str, str]] = []
    for name, (low, high) in WHOLE_RANGES.items():
        value = getattr(config, name)
        if value is None and name in ("keep_last_checkpoints", "resolution"):
            continue
        if not _is_whole(value):
            problems.append((name, f"{name} must be a whole number from {low:,} to {high:,}, not {value!r}"))
        elif name == "resolution" and (value % 8 or not low <= value <= high):
            problems.append(
                (
                    name,
                    f"resolution must be a positive multiple of 8 up to {high} (or empty for the base "
                    f"model's native resolution), not {value}",
                )
            )
        elif not low <= value <= high:
            least = "at least 1" if low == 1 else f"at least {low:,}"
            problems.append((name, f"{name} must be {least} and at most {high:,}, not {value:,}"))
    if (
        _is_whole(config.batch_size)
        and _is_whole(config.gradient_accumulation_steps)
        and config.gradient_accumulation_steps >= 1
        and config.batch_size % config.gradient_accumulation_steps
    ):
        problems.append(
            (
                "batch_size",
                f"batch_size {config.batch_size} is not a multiple of gradient_accumulation_steps "
                f"{config.gradient_accumulation_steps}",
            )
        )
    _check_real(problems, "learning_rate", config.learning_rate, low=0, low_open=True, high=1, hint=" (Emu: 1e-05)")
    _check_real(problems, "adam_beta1", config.adam_beta1, low=0, high=1, high_open=True, hint=" (Adam's default: 0.9)")
    _check_real(
        problems, "adam_beta2", config.adam_beta2, low=0, high=1, high_open=True, hint=" (Adam's default: 0.999)"
    )
    _check_real(problems, "adam_weight_decay", config.adam_weight_decay, low=0, hint=" (default 0.01)")
    _check_real(problems, "adam_epsilon", config.adam_epsilon, low=0, low_open=True, hint=" (default 1e-08)")
    if config.max_grad_norm is not None:
        _check_real(
            problems,
            "max_grad_norm",
            config.max_grad_norm,
            low=0,
            low_open=True,
            hint=" (default 1.0; empty: no clipping)",
        )
    _check_real(problems, "noise_offset", config.noise_offset, low=0, high=1, hint=" (Emu: 0.1)")
    if config.snr_gamma is not None:
        _check_real(
            problems,
            "snr_gamma",
            config.snr_gamma,
            low=0,
            low_open=True,
            hint=" (5 is the usual Min-SNR value; empty: the plain MSE loss)",
        )
    if not _is_real(config.ema_decay) or not math.isfinite(config.ema_decay) or not 0.0 < config.ema_decay < 1.0:
        problems.append(("ema_decay", f"ema_decay must be between 0 and 1 (e.g. 0.9999), not {config.ema_decay!r}"))
    _check_real(problems, "validation_guidance_scale", config.validation_guidance_scale, low=0, high=50)
    for name in BOOLEANS:
        if not isinstance(getattr(config, name), bool):
            problems.append((name, f"{name} must be true or false, not {getattr(config, name)!r}"))
    if config.prediction_type not in (None, *PREDICTION_TYPES):
        problems.append(
            (
                "prediction_type",
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)} (or empty "
                f"for the base scheduler's), not {config.prediction_type!r}",
            )
        )
    if config.mixed_precision not in MIXED_PRECISIONS:
        problems.append(
            (
                "mixed_precision",
                f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, not {config.mixed_precision!r}",
            )
        )
    prompts = config.validation_prompts
    if not isinstance(prompts, (tuple, list)) or not prompts:
        problems.append(("validation_prompts", "give at least one validation prompt (validation_prompts)"))
    elif not all(isinstance(p, str) and p.strip() for p in prompts):
        problems.append(("validation_prompts", "validation_prompts must be non-empty text, one prompt each"))
    elif any(p.startswith("-") for p in prompts):
        problems.append(
            (
                "validation_prompts",
                "a validation prompt cannot start with '-' (the trainer's command line would take it for an option)",
            )
        )
    elif any(len(p) > MAX_VALIDATION_PROMPT_CHARS for p in prompts):
        problems.append(
            (
                "validation_prompts",
                f"a validation prompt is longer than {MAX_VALIDATION_PROMPT_CHARS:,} characters; shorten it",
            )
        )
    seeds = config.validation_seeds
    if not isinstance(seeds, (tuple, list)) or not seeds:
        problems.append(("validation_seeds", "give at least one validation seed (validation_seeds)"))
    elif not all(_is_whole(x) and 0 <= x <= MAX_SEED for x in seeds):
        problems.append(
            ("validation_seeds", f"validation_seeds must be whole numbers from 0 to {MAX_SEED}, not {list(seeds)!r}")
        )
    return problems


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
        problems = config_problems(self)
        if problems:
            raise InvalidConfigError("invalid quality-tuning config: " + "; ".join(m for _, m in problems), problems)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> QualityTuningConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)
        if unknown:
            raise InvalidConfigError(
                f"unknown quality-tuning settings: {', '.join(map(str, unknown))}; the settings "
                f"are {', '.join(sorted(known))}"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# Settings that may differ when a run is resumed: they change what is saved or shown, not the weights.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "checkpoint_every",
        "keep_last_checkpoints",
        "validation_every",
        "validation_prompts",
        "validation_seeds",
        "validation_inference_steps",
        "validation_guidance_scale",
    }
)
