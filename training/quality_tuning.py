"""Quality-tuning (Emu): supervised fine-tuning of a pre-trained latent diffusion model on a small curated set.

(Its length is on purpose: this is the trainer script a worker launches as its own process, `python -m
training.quality_tuning` or `accelerate launch`, and one training loop reads best in one file.)

The recipe is ordinary text-to-image fine-tuning, the diffusers
train_text_to_image.py loss, with Emu's settings as defaults: batch 64, noise
offset 0.1, a small constant learning rate, at most 15k steps, stopped early
(checkpoints and validation images let a person pick the step). Only the UNet
trains; the VAE and text encoder are frozen, which is why their outputs are
encoded once and cached (training.encoding_cache).

A run lives in a run directory (layout in training.checkpoints) and can be
killed at any moment: ``train`` resumes from the newest complete checkpoint and
restores the weights, optimizer, LR schedule, EMA, every RNG and the position
in the data order, so the resumed run ends with the weights an uninterrupted
run would have (bit for bit on CPU in fp32).

Randomness of a step (which images, mirrored or not, timesteps, latent
samples, noise) is drawn for the whole batch from one CPU generator seeded by
the run's seed, and each process and micro-batch then takes its share. So the
same config gives the same update whether the batch is split over
gradient-accumulation micro-batches or over GPUs (to float rounding), and
the data order does not depend on the device.

Accelerate handles device placement, mixed precision, gradient accumulation
and multi-GPU data parallelism (``accelerate launch -m training.quality_tuning``).
Each call builds an ``Accelerator``, whose state accelerate keeps per process:
run one quality-tuning run per process (the CLI), not several with different
precisions in one worker.

Supported: StableDiffusionPipeline (SD 1.x and 2.x, epsilon and v-prediction)
and StableDiffusionXLPipeline (SDXL base), following diffusers'
train_text_to_image_sdxl.py: the UNet is conditioned on the penultimate hidden
states of both text encoders, concatenated, plus text_encoder_2's pooled
output and the size micro-conditioning (original size, crop corner, target
size), all cached with the dataset. Other pipelines (SDXL refiner, img2img,
inpainting, other architectures) are refused with a clear error.

No Django here: the training app's models and Celery task sit on top of this.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import random
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generation.pipelines import PipelineDirectoryError, fingerprint_directory, inspect_pipeline_directory
from training import checkpoints
from training.checkpoints import RunInUseError
from training.config import PREDICTION_TYPES, RESUMABLE_CHANGES, InvalidConfigError, QualityTuningConfig
from training.datasets import CuratedDataset, CuratedDatasetError, crop_mode, load_curated_dataset
from training.encoding_cache import EncodedDataset, encode_curated_dataset
from training.metrics import MetricsWriter, read_metrics, truncate_metrics
from training.validation import LOSS_CURVE_FILE, ValidationRenderer, draw_loss_curve

logger = logging.getLogger(__name__)

RUN_FORMAT = 1
SUPPORTED_PIPELINE = "StableDiffusionPipeline"
SUPPORTED_SDXL_PIPELINE = "StableDiffusionXLPipeline"
# Component -> classes the SD 1.x/2.x loop is written for.
REQUIRED_COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any diffusers scheduler: training uses DDPM on its config
}
# The same for SDXL: text_encoder_2 must give the projected pooled output the UNet's text_time embedding takes.
REQUIRED_SDXL_COMPONENTS = {
    **REQUIRED_COMPONENTS,
    "text_encoder_2": ("CLIPTextModelWithProjection",),
    "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
}


class UnsupportedBasePipelineError(PipelineDirectoryError):
    """The base pipeline is a diffusers pipeline that quality-tuning cannot train (yet)."""


class RunMismatchError(ValueError):
    """The run directory holds checkpoints of a run with another base model, dataset or config."""


# --- Base pipeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BasePipeline:
    path: Path
    fingerprint: str
    components: dict[str, tuple[str, str]]  # name -> (library, class), from model_index.json
    vae_fingerprint: str
    text_encoder_fingerprint: str
    native_resolution: int | None
    prediction_type: str
    class_name: str = SUPPORTED_PIPELINE
    # model_index.json's settings (SDXL: force_zeros_for_empty_prompt), as (name, value) pairs: the record stays hashable.
    pipeline_options: tuple[tuple[str, object], ...] = ()

    @property
    def is_sdxl(self) -> bool:
        return self.class_name == SUPPORTED_SDXL_PIPELINE

    def load(self, name: str):
        """Load one component with the class that model_index.json names for it."""
        library, class_name = self.components[name]
        cls = getattr(importlib.import_module(library), class_name)
        return cls.from_pretrained(self.path, subfolder=name, local_files_only=True)


def check_base_pipeline(path: str | Path) -> BasePipeline:
    """Check that ``path`` holds a complete SD 1.x/2.x or SDXL base pipeline that quality-tuning can train; fingerprint it.

    Raises PipelineDirectoryError (missing, not a pipeline, incomplete) or its
    subclass UnsupportedBasePipelineError (another kind of pipeline), each with
    a message saying what to do.
    """
    path = Path(path).expanduser().resolve()
    index_file = path / "model_index.json"
    if not index_file.is_file():
        inspect_pipeline_directory(path)  # raises the explanation: missing, a file, not a diffusers pipeline
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        class_name = index["_class_name"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineDirectoryError(f"{index_file} is not a valid diffusers model index ({exc}).") from None
    sdxl = class_name.startswith("StableDiffusionXL") or "text_encoder_2" in index
    if sdxl and class_name != SUPPORTED_SDXL_PIPELINE:
        raise UnsupportedBasePipelineError(
            f"{path} holds an SDXL pipeline ({class_name}); quality-tuning trains the SDXL base text-to-image "
            f"{SUPPORTED_SDXL_PIPELINE}, other SDXL variants (refiner, img2img, inpainting) are not supported yet."
        )
    if not sdxl and class_name != SUPPORTED_PIPELINE:
        raise UnsupportedBasePipelineError(
            f"{path} holds a {class_name}; quality-tuning trains a {SUPPORTED_PIPELINE} (SD 1.x/2.x: unet + vae + "
            f"text_encoder + tokenizer + scheduler) or a {SUPPORTED_SDXL_PIPELINE} (SDXL: the same plus "
            "text_encoder_2 + tokenizer_2)."
        )
    components = {
        name: tuple(spec)
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and len(spec) == 2 and spec[1] is not None
    }
    problems = []
    for name, classes in (REQUIRED_SDXL_COMPONENTS if sdxl else REQUIRED_COMPONENTS).items():
        if name not in components:
            problems.append(f"it has no {name}")
        elif classes is not None and components[name][1] not in classes:
            problems.append(f"its {name} is a {components[name][1]}, not a {' or '.join(classes)}")
    if problems and sdxl:
        raise UnsupportedBasePipelineError(
            f"{path} holds an SDXL pipeline ({class_name}) that cannot be quality-tuned: " + "; ".join(problems) + ". "
            "SDXL pipelines without the base model's two CLIP text encoders (such as the refiner) are not supported yet."
        )
    if problems:
        raise UnsupportedBasePipelineError(f"{path} cannot be quality-tuned: " + "; ".join(problems) + ".")
    info = inspect_pipeline_directory(path)  # completeness of every component, and the weights fingerprint
    # The frozen components get fingerprints of their own (a second read of their files): the encoding cache is
    # keyed by them, so a quality-tuned model sharing the base's VAE and text encoder reuses the base's cache.
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    text_components = (
        ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2") if sdxl else ("text_encoder", "tokenizer")
    )
    text_fingerprints = [fingerprint_directory(path / name)[0] for name in text_components]
    return BasePipeline(
        path=path,
        fingerprint=info.fingerprint,
        components=components,
        vae_fingerprint=fingerprint_directory(path / "vae")[0],
        text_encoder_fingerprint="+".join(text_fingerprints),
        native_resolution=info.native_resolution,
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        class_name=class_name,
        pipeline_options=tuple(
            sorted((k, v) for k, v in index.items() if not k.startswith("_") and not isinstance(v, (list, dict)))
        ),
    )


# --- Data order ----------------------------------------------------------------------------------


class DataOrder:
    """Which images each step trains on: epoch e visits the images in a permutation drawn from (seed, e).

    A batch that runs past the end of an epoch continues into the next one, so
    every batch is full and a dataset smaller than the batch still works. The
    (epoch, position) pair is saved in checkpoints to resume mid-epoch.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0):
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position
        self._permutation = self.permutation(epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def next_indices(self, count: int) -> list[int]:
        indices = []
        while len(indices) < count:
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._permutation = self.permutation(self.epoch)
            take = min(count - len(indices), self.size - self.position)
            indices.extend(int(i) for i in self._permutation[self.position : self.position + take])
            self.position += take
        return indices


# --- Progress ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingProgress:
    """What ``train`` reports to its ``progress`` callback.

    ``event`` is "started" (fresh or resumed at ``step``), "step", "checkpoint"
    (``path`` is durable on disk by now), "validation" (``path`` holds the
    images), "stopped" (cancelled through ``should_stop``; a checkpoint at
    ``step`` exists) or "finished".
    """

    event: str
    step: int
    max_steps: int
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    path: Path | None = None


@dataclass(frozen=True)
class QualityTuningResult:
    """Where ``train`` left the run: its step, whether it was stopped early, and its newest checkpoint."""

    run_dir: Path
    step: int
    stopped: bool
    checkpoint: Path | None
    resumed_from: int | None = None
    cache_files: tuple[Path, ...] = field(default_factory=tuple)


# --- Training ------------------------------------------------------------------------------------


def _resolve_config(config: QualityTuningConfig, base: BasePipeline) -> QualityTuningConfig:
    resolution = config.resolution or base.native_resolution
    if resolution is None:
        raise InvalidConfigError(
            f"{base.path}: cannot tell the native resolution of this model; set resolution explicitly."
        )
    prediction_type = config.prediction_type or base.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise UnsupportedBasePipelineError(
            f"{base.path} predicts {prediction_type!r}; quality-tuning trains {' or '.join(PREDICTION_TYPES)} models."
        )
    return dataclasses.replace(config, resolution=resolution, prediction_type=prediction_type)


def _run_record(config: QualityTuningConfig, base: BasePipeline, dataset: CuratedDataset) -> dict:
    return {
        "format": RUN_FORMAT,
        "config": config.to_dict(),  # resolved: resolution and prediction_type are filled in
        "base_pipeline": {"path": str(base.path), "fingerprint": base.fingerprint},
        "dataset": {"path": str(dataset.path), "content_hash": dataset.content_hash, "images": len(dataset)},
    }


def _check_same_run(run_dir: Path, previous: dict, current: dict) -> None:
    problems = []
    if previous["base_pipeline"]["fingerprint"] != current["base_pipeline"]["fingerprint"]:
        problems.append(
            f"base model {previous['base_pipeline']['path']} -> {current['base_pipeline']['path']} (other weights)"
        )
    if previous["dataset"]["content_hash"] != current["dataset"]["content_hash"]:
        problems.append(
            f"curated dataset {previous['dataset']['path']} -> {current['dataset']['path']} (other content)"
        )
    as_stored = json.loads(json.dumps(current["config"]))  # tuples become lists, as in run.json
    for name, value in as_stored.items():
        old = previous["config"].get(name)
        if name not in RESUMABLE_CHANGES and old != value:
            problems.append(f"{name} {old!r} -> {value!r}")
    if problems:
        raise RunMismatchError(
            f"{run_dir} holds another quality-tuning run ({'; '.join(problems)}). Resume it with its own settings "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change) or start a new run directory."
        )


def _quiet_progress_bars() -> None:
    # Per-file loading and saving bars would flood the logs at every checkpoint.
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _numpy_state() -> dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": position,
        "has_gauss": has_gauss,
        "cached_gaussian": cached_gaussian,
    }


def _set_numpy_state(state: dict) -> None:
    np.random.set_state(
        (
            state["name"],
            state["keys"].numpy().astype(np.uint32),
            state["position"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    )


class _QualityTuningRun:
    """One process's view of a run: models, optimizer, cached data, and the step/checkpoint/validation cycle."""

    def __init__(self, config, base: BasePipeline, dataset: CuratedDataset, run_dir: Path, cache_dir: Path, progress):
        from accelerate import Accelerator

        _quiet_progress_bars()
        if config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise InvalidConfigError("mixed_precision='fp16' needs a CUDA GPU; use 'no' on CPU (or 'bf16').")
        self.config, self.base, self.dataset, self.run_dir = config, base, dataset, run_dir
        self.progress = progress or (lambda event: None)
        self.accelerator = accelerator = Accelerator(
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
        )
        share = accelerator.num_processes * config.gradient_accumulation_steps
        if config.batch_size % share:
            raise InvalidConfigError(
                f"batch_size {config.batch_size} cannot be split into {accelerator.num_processes} processes x "
                f"{config.gradient_accumulation_steps} micro-batches; make it a multiple of {share}."
            )
        self.micro_batch_size = config.batch_size // share

        if accelerator.is_main_process:
            checkpoints.discard_incomplete_checkpoints(run_dir)
        accelerator.wait_for_everyone()
        self.resume_from = checkpoints.latest_checkpoint(run_dir)

        # Loaded in fp32 and never cast: mixed precision only wraps the UNet, and SDXL's VAE overflows in fp16.
        vae = base.load("vae").to(accelerator.device).requires_grad_(False).eval()
        text_encoder = base.load("text_encoder").to(accelerator.device).requires_grad_(False).eval()
        tokenizer = base.load("tokenizer")
        sdxl_text = {}
        if base.is_sdxl:
            sdxl_text = {
                "text_encoder_2": base.load("text_encoder_2").to(accelerator.device).requires_grad_(False).eval(),
                "tokenizer_2": base.load("tokenizer_2"),
            }
        with accelerator.main_process_first():  # one process encodes and caches, the others read the cache
            self.encoded: EncodedDataset = encode_curated_dataset(
                dataset,
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                vae_fingerprint=base.vae_fingerprint,
                text_encoder_fingerprint=base.text_encoder_fingerprint,
                resolution=config.resolution,
                mode=crop_mode(config.center_crop, config.seed),
                random_flip=config.random_flip,
                cache_dir=cache_dir,
                device=accelerator.device,
                **sdxl_text,
            )
        self.latent_shift = float(vae.config.get("shift_factor") or 0.0)
        self.latent_scale = float(vae.config.scaling_factor)

        self._build_trainable_state()
        self.validator = self.metrics = None
        if accelerator.is_main_process:
            self.validator = self._validation_renderer(vae, text_encoder, tokenizer, **sdxl_text)
            truncate_metrics(run_dir, self.step)
            self.metrics = MetricsWriter(run_dir)

    def _build_trainable_state(self) -> None:
        """UNet, EMA, optimizer, LR schedule, generator and data order: fresh, or as the latest checkpoint left them."""
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from diffusers.optimization import get_constant_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        config, accelerator = self.config, self.accelerator
        self.noise_scheduler = DDPMScheduler.from_pretrained(
            self.base.path, subfolder="scheduler", local_files_only=True
        )
        self.noise_scheduler.register_to_config(prediction_type=config.prediction_type)
        if self.resume_from is not None:
            unet = UNet2DConditionModel.from_pretrained(self.resume_from / checkpoints.UNET_DIR, local_files_only=True)
        else:
            unet = UNet2DConditionModel.from_pretrained(self.base.path, subfolder="unet", local_files_only=True)
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.to(accelerator.device).train()
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(
                unet.parameters(), decay=config.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config
            )
        optimizer = torch.optim.AdamW(
            unet.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        # The LR scheduler is not passed to prepare(): accelerate would step it once per process per step.
        self.lr_scheduler = get_constant_schedule_with_warmup(optimizer, config.lr_warmup_steps)
        self.unet, self.optimizer = accelerator.prepare(unet, optimizer)
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.order = DataOrder(len(self.dataset), config.seed)
        self.step = 0
        if self.resume_from is not None:
            self._restore(self.resume_from)

    def _validation_renderer(
        self, vae, text_encoder, tokenizer, text_encoder_2=None, tokenizer_2=None
    ) -> ValidationRenderer:
        """A pipeline over the frozen components and the UNet being trained (the same module, not a copy)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        scheduler = self.base.load("scheduler")
        scheduler.register_to_config(prediction_type=self.config.prediction_type)
        unet = self.accelerator.unwrap_model(self.unet)
        if self.base.is_sdxl:
            # The base's own settings (force_zeros_for_empty_prompt), so validation renders what the export will.
            options = {k: v for k, v in self.base.pipeline_options if k == "force_zeros_for_empty_prompt"}
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=text_encoder_2,
                tokenizer=tokenizer,
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=scheduler,
                **options,
            )
        else:
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=scheduler,
                safety_checker=None,
                feature_extractor=None,
                image_encoder=None,
                requires_safety_checker=False,
            )
        pipe.set_progress_bar_config(disable=True)
        config = self.config
        return ValidationRenderer(
            pipe,
            run_dir=self.run_dir,
            prompts=config.validation_prompts,
            seeds=config.validation_seeds,
            inference_steps=config.validation_inference_steps,
            guidance_scale=config.validation_guidance_scale,
            resolution=config.resolution,
        )

    # -- resume ----------------------------------------------------------------------------------

    def _restore(self, checkpoint: Path) -> None:
        from diffusers import UNet2DConditionModel

        state = checkpoints.read_training_state(checkpoint)
        if state["num_processes"] != self.accelerator.num_processes:
            raise RunMismatchError(
                f"{checkpoint} was written by {state['num_processes']} processes; resume it with the same number "
                f"(this launch has {self.accelerator.num_processes})."
            )
        self.step = state["step"]
        self.order = DataOrder(len(self.dataset), self.config.seed, state["epoch"], state["position"])
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(checkpoint / "lr_scheduler.pt", weights_only=True))
        if self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(torch.load(checkpoint / "grad_scaler.pt", weights_only=True))
        if self.ema is not None:
            ema_unet = UNet2DConditionModel.from_pretrained(
                checkpoint / checkpoints.EMA_UNET_DIR, local_files_only=True
            )
            self.ema.load_state_dict({**state["ema"], "shadow_params": [p.detach() for p in ema_unet.parameters()]})
            self.ema.to(self.accelerator.device)
        rng = torch.load(checkpoint / f"random_states_{self.accelerator.process_index}.pt", weights_only=True)
        random.setstate(rng["python"])
        _set_numpy_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda" in rng:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.generator.set_state(rng["training_generator"])

    # -- one optimizer step ----------------------------------------------------------------------

    def _draw_batch(self) -> dict[str, torch.Tensor]:
        """All randomness of one step, for the whole batch, in a fixed order from the run's generator."""
        size, g = self.config.batch_size, self.generator
        shape = (size, *self.encoded.latent_shape)
        indices = torch.tensor(self.order.next_indices(size))
        flips = (
            torch.randint(0, 2, (size,), generator=g)
            if self.config.random_flip
            else torch.zeros(size, dtype=torch.long)
        )
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (size,), generator=g)
        latent_eps = torch.randn(shape, generator=g)
        noise = torch.randn(shape, generator=g)
        if self.config.noise_offset:
            # Offset noise (Emu: 0.1): a per-channel constant lets the model learn very dark and very bright images.
            noise += self.config.noise_offset * torch.randn((size, shape[1], 1, 1), generator=g)
        mean = self.encoded.latent_mean[flips, indices]
        std = self.encoded.latent_std[flips, indices]
        latents = (mean + std * latent_eps - self.latent_shift) * self.latent_scale
        batch = {
            "latents": latents,
            "noise": noise,
            "timesteps": timesteps,
            "embeddings": self.encoded.text_embeddings[indices],
        }
        if self.base.is_sdxl:
            # Cached per image and flip variant, like the latents: no draw from the generator, so SD's order holds.
            batch["pooled"] = self.encoded.pooled_text_embeddings[indices]
            batch["time_ids"] = self.encoded.time_ids[flips, indices]
        return batch

    def _loss(self, latents, noise, timesteps, embeddings, pooled=None, time_ids=None) -> torch.Tensor:
        from diffusers.training_utils import compute_snr

        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        if pooled is None:
            prediction = self.unet(noisy, timesteps, embeddings, return_dict=False)[0]
        else:
            added_cond_kwargs = {"text_embeds": pooled, "time_ids": time_ids}
            prediction = self.unet(
                noisy, timesteps, embeddings, added_cond_kwargs=added_cond_kwargs, return_dict=False
            )[0]
        if self.config.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        # Min-SNR-gamma (Hang et al. 2023), as in diffusers' train_text_to_image.py.
        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.clamp(snr, max=self.config.snr_gamma)
        weights = weights / snr if self.config.prediction_type == "epsilon" else weights / (snr + 1)
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * weights).mean()

    def _optimizer_step(self) -> tuple[float, float]:
        """One update over the whole batch; returns (mean loss, gradient norm before clipping)."""
        accelerator, device = self.accelerator, self.accelerator.device
        batch = self._draw_batch()
        per_process = self.config.batch_size // accelerator.num_processes
        start = accelerator.process_index * per_process
        total = torch.zeros((), device=device)
        for offset in range(start, start + per_process, self.micro_batch_size):
            micro = {k: v[offset : offset + self.micro_batch_size].to(device) for k, v in batch.items()}
            with accelerator.accumulate(self.unet):
                loss = self._loss(**micro)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # An infinite bound clips nothing but still measures the norm, which is logged: spikes show trouble.
                    bound = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(self.unet.parameters(), bound)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach() / self.config.gradient_accumulation_steps
        assert accelerator.sync_gradients, "a step must end on an optimizer update"
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.unet.parameters())
        self.step += 1
        return accelerator.reduce(total, reduction="mean").item(), float(grad_norm)

    # -- checkpoints and validation --------------------------------------------------------------

    def _save_checkpoint(self) -> Path | None:
        accelerator = self.accelerator
        staging = checkpoints.staging_dir(self.run_dir, self.step)
        if accelerator.is_main_process:
            staging.mkdir(parents=True)
            unet = accelerator.unwrap_model(self.unet)
            unet.save_pretrained(staging / checkpoints.UNET_DIR, safe_serialization=True)
            if self.ema is not None:
                self.ema.store(unet.parameters())
                self.ema.copy_to(unet.parameters())
                unet.save_pretrained(staging / checkpoints.EMA_UNET_DIR, safe_serialization=True)
                self.ema.restore(unet.parameters())
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(self.lr_scheduler.state_dict(), staging / "lr_scheduler.pt")
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), staging / "grad_scaler.pt")
            ema_state = None
            if self.ema is not None:
                ema_state = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
            state = {
                "format": RUN_FORMAT,
                "step": self.step,
                "epoch": self.order.epoch,
                "position": self.order.position,
                "num_processes": accelerator.num_processes,
                "ema": ema_state,
                "config": self.config.to_dict(),
            }
            (staging / checkpoints.TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            self.metrics.sync()
        accelerator.wait_for_everyone()
        rng = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "training_generator": self.generator.get_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / f"random_states_{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        path = None
        if accelerator.is_main_process:
            path = checkpoints.publish_checkpoint(self.run_dir, self.step)
            checkpoints.prune_checkpoints(self.run_dir, self.config.keep_last_checkpoints)
            self.progress(TrainingProgress("checkpoint", self.step, self.config.max_steps, path=path))
        accelerator.wait_for_everyone()
        return path

    def _validate(self) -> None:
        if self.accelerator.is_main_process:
            unet = self.accelerator.unwrap_model(self.unet)
            if self.ema is not None:  # render what export_pipeline gives by default: the EMA weights
                self.ema.store(unet.parameters())
                self.ema.copy_to(unet.parameters())
            # Rendering must not move the global RNGs, or a resumed run would draw differently afterwards.
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            # SDXL's VAE overflows in fp16, so its decode must not run under fp16 autocast; the prepared UNet keeps
            # its own autocast wrapper, so only the frozen components run in fp32 then.
            fp32_vae = self.base.is_sdxl and self.config.mixed_precision == "fp16"
            autocast = contextlib.nullcontext() if fp32_vae else self.accelerator.autocast()
            with torch.random.fork_rng(devices=devices), autocast:
                unet.eval()
                path = self.validator.render(self.step)
                unet.train()
            if self.ema is not None:
                self.ema.restore(unet.parameters())
            draw_loss_curve(read_metrics(self.run_dir), self.run_dir / LOSS_CURVE_FILE)
            self.progress(TrainingProgress("validation", self.step, self.config.max_steps, path=path))
        self.accelerator.wait_for_everyone()

    # -- the loop --------------------------------------------------------------------------------

    def run(self, should_stop: Callable[[], bool] | None) -> QualityTuningResult:
        config, accelerator = self.config, self.accelerator
        resumed_from = self.step if self.resume_from is not None else None
        main = accelerator.is_main_process
        if main:
            self.progress(TrainingProgress("started", self.step, config.max_steps))
        last_checkpoint = self.resume_from
        stopped = False
        recent = deque(maxlen=50)  # wall seconds of the last steps, checkpoint and validation time included
        tick = time.perf_counter()
        try:
            while self.step < config.max_steps:
                learning_rate = self.lr_scheduler.get_last_lr()[0]
                loss, grad_norm = self._optimizer_step()
                now = time.perf_counter()
                recent.append(now - tick)
                tick = now
                seconds = sum(recent) / len(recent)
                if main:
                    self.metrics.append(
                        {
                            "step": self.step,
                            "loss": loss,
                            "grad_norm": grad_norm,
                            "lr": learning_rate,
                            "epoch": self.order.epoch,
                            "seconds_per_step": seconds,
                            "time": time.time(),
                        }
                    )
                    self.progress(
                        TrainingProgress(
                            "step",
                            self.step,
                            config.max_steps,
                            loss=loss,
                            grad_norm=grad_norm,
                            learning_rate=learning_rate,
                            seconds_per_step=seconds,
                            eta_seconds=seconds * (config.max_steps - self.step),
                        )
                    )
                at_checkpoint = self.step % config.checkpoint_every == 0 or self.step == config.max_steps
                if at_checkpoint:
                    last_checkpoint = self._save_checkpoint()
                if at_checkpoint or self.step % config.validation_every == 0:
                    self._validate()
                if main and should_stop is not None and should_stop():
                    accelerator.set_trigger()
                if accelerator.check_trigger() and self.step < config.max_steps:
                    stopped = True
                    if not at_checkpoint:  # keep the work done so far
                        last_checkpoint = self._save_checkpoint()
                    break
        finally:
            if self.metrics is not None:
                self.metrics.close()
        if main:
            self.progress(
                TrainingProgress(
                    "stopped" if stopped else "finished", self.step, config.max_steps, path=last_checkpoint
                )
            )
        accelerator.end_training()
        return QualityTuningResult(
            run_dir=self.run_dir,
            step=self.step,
            stopped=stopped,
            checkpoint=checkpoints.latest_checkpoint(self.run_dir),
            resumed_from=resumed_from,
            cache_files=self.encoded.cache_files,
        )


def train(
    config: QualityTuningConfig,
    base_pipeline_dir: str | Path,
    dataset_dir: str | Path,
    run_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> QualityTuningResult:
    """Quality-tune the UNet of ``base_pipeline_dir`` on the curated dataset, in ``run_dir``.

    Resumes from the newest complete checkpoint in ``run_dir`` if there is one
    (the run must have the same base weights, dataset and config, except for
    RESUMABLE_CHANGES such as a larger ``max_steps``). ``cache_dir`` holds the
    encoded dataset; share it between runs (default: ``run_dir/cache``).
    ``progress`` receives TrainingProgress events on the main process;
    ``should_stop`` is polled after every step, and a True answer checkpoints
    and returns.
    """
    from accelerate import PartialState

    base = check_base_pipeline(base_pipeline_dir)
    dataset = load_curated_dataset(dataset_dir)
    config = _resolve_config(config, base)
    run_dir = Path(run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    processes = PartialState()  # the process group accelerate launch set up; one process when run directly
    with checkpoints.run_directory_lock(run_dir) if processes.is_main_process else contextlib.nullcontext():
        if processes.is_main_process:
            record = _run_record(config, base, dataset)
            previous = checkpoints.read_run_record(run_dir)
            if previous is not None and checkpoints.latest_checkpoint(run_dir) is not None:
                # Without a checkpoint there is nothing to resume, so a retry with corrected settings starts afresh.
                _check_same_run(run_dir, previous, record)
            checkpoints.write_run_record(run_dir, record)
        processes.wait_for_everyone()
        cache_dir = Path(cache_dir) if cache_dir is not None else run_dir / "cache"
        run = _QualityTuningRun(config, base, dataset, run_dir, cache_dir, progress)
        return run.run(should_stop)


# --- Command line --------------------------------------------------------------------------------

# Config fields whose default is None, so the CLI cannot infer their type from the default.
_OPTIONAL_FIELD_TYPES = {"resolution": int, "snr_gamma": float, "prediction_type": str, "keep_last_checkpoints": int}


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.quality_tuning",
        description="Quality-tune a Stable Diffusion (1.x/2.x or SDXL) UNet on a curated dataset (Emu). Running it "
        "again on the same --run-dir resumes from the newest checkpoint; --base and --dataset then default to the run's own.",
    )
    parser.add_argument("--base", help="base diffusers pipeline directory (SD 1.x/2.x or SDXL)")
    parser.add_argument("--dataset", help="curated dataset folder (images + captions.jsonl)")
    parser.add_argument("--run-dir", required=True, help="run directory: checkpoints, metrics, validation images")
    parser.add_argument("--cache-dir", help="where encoded latents and embeddings are cached (default RUN_DIR/cache)")
    for f in dataclasses.fields(QualityTuningConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, dest=f.name, nargs="+", type=type(f.default[0]), default=None)
        else:
            kind = _OPTIONAL_FIELD_TYPES.get(f.name, type(f.default))
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=f"default {f.default}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    previous = checkpoints.read_run_record(args.run_dir)
    values = dict(previous["config"]) if previous else {}
    values.update(
        {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(QualityTuningConfig)
            if getattr(args, f.name) is not None
        }
    )
    base = args.base or (previous and previous["base_pipeline"]["path"])
    dataset = args.dataset or (previous and previous["dataset"]["path"])
    if not base or not dataset:
        print("error: --base and --dataset are required for a new run", file=sys.stderr)
        return 2

    stop_requested = False

    def request_stop(signum, frame):
        nonlocal stop_requested
        stop_requested = True  # the loop checkpoints after the current step and exits

    def report(event: TrainingProgress) -> None:
        if event.event == "step":
            logger.info(
                "step %d/%d loss %.5f grad norm %.3g lr %.2e %.3f s/step eta %.0f s",
                event.step,
                event.max_steps,
                event.loss,
                event.grad_norm,
                event.learning_rate,
                event.seconds_per_step,
                event.eta_seconds,
            )
        else:
            logger.info("%s at step %d%s", event.event, event.step, f": {event.path}" if event.path else "")

    # SIGTERM (Celery revoke, a scheduler's preemption notice) checkpoints and exits; SIGKILL is also safe, it only
    # loses the steps since the last checkpoint.
    previous_handler = signal.signal(signal.SIGTERM, request_stop)
    try:
        result = train(
            QualityTuningConfig.from_dict(values),
            base,
            dataset,
            args.run_dir,
            cache_dir=args.cache_dir,
            progress=report,
            should_stop=lambda: stop_requested,
        )
    except (InvalidConfigError, RunMismatchError, RunInUseError, CuratedDatasetError, PipelineDirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log, one line to the run's error field
        traceback.print_exc()
        print(f"error: the trainer failed: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(json.dumps({"step": result.step, "stopped": result.stopped, "checkpoint": str(result.checkpoint)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
