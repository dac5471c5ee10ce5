"""Encode a curated dataset once: VAE latent distributions and text-encoder embeddings, cached on disk.

The VAE and text encoder are frozen during quality-tuning, so encoding every
image and caption at every step (as diffusers' train_text_to_image.py does)
recomputes the same numbers thousands of times. They are computed once and
stored as safetensors files in a cache directory shared by runs.

What is cached for an image is its latent *distribution* (mean and standard
deviation of the VAE's diagonal Gaussian), not one sample: each step draws
``mean + std * eps`` with the run's own generator, so training sees exactly
what an uncached loop calling ``latent_dist.sample()`` would see, at the cost of
storing two tensors instead of one.

Cache keys, each the full set of inputs that determine the numbers:
- latents: VAE weights fingerprint, dataset content hash, resolution, crop
  mode, and flip variant (with random flip both variants are cached, and each
  step picks one per image);
- text embeddings: text encoder + tokenizer fingerprint and dataset content hash
  (they do not depend on resolution, crop or flip, so runs differing only
  there share them).
The key is also stored in the file's metadata and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.atomic import atomic_write
from training.datasets import CuratedDataset, preprocess

logger = logging.getLogger(__name__)

# Images per VAE forward pass while filling the cache: bounded memory at 1024 px on a 24 GB GPU.
ENCODE_BATCH_SIZE = 8


@dataclass(frozen=True)
class EncodedDataset:
    """Everything the training loop needs about the curated dataset, in CPU memory.

    ``latent_mean``/``latent_std`` are [flip variants, images, C, h, w]: variant 0
    is the image as is, variant 1 (only with random flip) mirrored.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    text_embeddings: torch.Tensor
    cache_files: tuple[Path, ...]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latent_mean.shape[2:])


def _cache_file(cache_dir: Path, kind: str, key: dict[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir / f"{kind}-{digest}.safetensors"


def _load_or_compute(cache_dir: Path, kind: str, key: dict[str, str], compute: Callable[[], dict[str, torch.Tensor]]):
    file = _cache_file(cache_dir, kind, key)
    if file.is_file():
        try:
            with safe_open(file, framework="pt") as handle:
                stored_key = handle.metadata()
            if stored_key == key:
                return load_file(file), file
            logger.warning("cache file %s holds %s, not %s; encoding again", file, stored_key, key)
        except Exception as exc:  # noqa: BLE001 - an unreadable cache file is rebuilt, not fatal
            logger.warning("cache file %s is unreadable (%s); encoding again", file, exc)
    tensors = {name: t.contiguous() for name, t in compute().items()}
    atomic_write(file, lambda temp: save_file(tensors, str(temp), metadata=key))
    logger.info("cached %s in %s", kind, file)
    return tensors, file


@torch.no_grad()
def encode_latent_distributions(dataset: CuratedDataset, vae, *, resolution: int, mode: str, flip: bool, device) -> dict[str, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(dataset), ENCODE_BATCH_SIZE):
        indices = range(start, min(start + ENCODE_BATCH_SIZE, len(dataset)))
        pixels = np.stack([
            preprocess(dataset.open_image(i), resolution=resolution, mode=mode, file_name=dataset.images[i].file_name, flip=flip)
            for i in indices
        ])
        distribution = vae.encode(torch.from_numpy(pixels).to(device=device, dtype=vae.dtype)).latent_dist
        means.append(distribution.mean.float().cpu())
        stds.append(distribution.std.float().cpu())
    return {"mean": torch.cat(means), "std": torch.cat(stds)}


@torch.no_grad()
def encode_captions(captions: list[str], tokenizer, text_encoder, *, device) -> dict[str, torch.Tensor]:
    embeddings = []
    for start in range(0, len(captions), ENCODE_BATCH_SIZE):
        tokens = tokenizer(
            captions[start : start + ENCODE_BATCH_SIZE],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        # The last hidden state is what StableDiffusionPipeline conditions on (clip_skip unset).
        embeddings.append(text_encoder(tokens.input_ids.to(device), return_dict=False)[0].float().cpu())
    return {"embeddings": torch.cat(embeddings)}


def encode_curated_dataset(
    dataset: CuratedDataset,
    *,
    vae,
    text_encoder,
    tokenizer,
    vae_fingerprint: str,
    text_encoder_fingerprint: str,
    resolution: int,
    mode: str,
    random_flip: bool,
    cache_dir: Path,
    device,
) -> EncodedDataset:
    """Latent distributions and caption embeddings for ``dataset``, from ``cache_dir`` or encoded now and stored there."""
    cache_dir = Path(cache_dir)
    files = []
    means, stds = [], []
    for flip in (False, True) if random_flip else (False,):
        key = {
            "kind": "vae-latent-distribution",
            "vae": vae_fingerprint,
            "dataset": dataset.content_hash,
            "resolution": str(resolution),
            "crop": mode,
            "flip": "mirrored" if flip else "as-is",
        }
        tensors, file = _load_or_compute(
            cache_dir, "latents", key,
            lambda flip=flip: encode_latent_distributions(dataset, vae, resolution=resolution, mode=mode, flip=flip, device=device),
        )
        means.append(tensors["mean"])
        stds.append(tensors["std"])
        files.append(file)
    key = {"kind": "text-embeddings", "text_encoder": text_encoder_fingerprint, "dataset": dataset.content_hash}
    tensors, file = _load_or_compute(
        cache_dir, "text", key, lambda: encode_captions(dataset.captions, tokenizer, text_encoder, device=device)
    )
    files.append(file)
    return EncodedDataset(
        latent_mean=torch.stack(means), latent_std=torch.stack(stds), text_embeddings=tensors["embeddings"], cache_files=tuple(files)
    )
