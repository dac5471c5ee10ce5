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

SDXL (two text encoders, pooled embeddings, size conditioning) caches more,
under keys of their own kinds so that an SD and an SDXL cache never mix:
- its text file holds the penultimate hidden states of both encoders,
  concatenated, and the pooled (projected) output of text_encoder_2, as
  StableDiffusionXLPipeline.encode_prompt computes them; the key names all four
  fingerprints (both encoders and both tokenizers);
- its latent files also hold each image's ``time_ids`` (original size, crop
  corner, target size): the crop is fixed per image and flip variant once the
  latents are cached, so its coordinates belong beside them.
The VAE encodes in fp32 (the loop never casts it; mixed precision only wraps
the UNet): SDXL's VAE is known to overflow in fp16.
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
from training.datasets import CuratedDataset, preprocess, size_conditioning

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
    # SDXL only: [images, D] pooled text_encoder_2 output and [flip variants, images, 6] size conditioning.
    pooled_text_embeddings: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

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
def encode_latent_distributions(
    dataset: CuratedDataset, vae, *, resolution: int, mode: str, flip: bool, device, with_time_ids: bool = False
) -> dict[str, torch.Tensor]:
    means, stds, time_ids = [], [], []
    for start in range(0, len(dataset), ENCODE_BATCH_SIZE):
        indices = range(start, min(start + ENCODE_BATCH_SIZE, len(dataset)))
        batch = []
        for i in indices:
            image, file_name = dataset.open_image(i), dataset.images[i].file_name
            batch.append(preprocess(image, resolution=resolution, mode=mode, file_name=file_name, flip=flip))
            if with_time_ids:
                time_ids.append(
                    size_conditioning(image.size, resolution=resolution, mode=mode, file_name=file_name, flip=flip)
                )
        pixels = np.stack(batch)
        distribution = vae.encode(torch.from_numpy(pixels).to(device=device, dtype=vae.dtype)).latent_dist
        means.append(distribution.mean.float().cpu())
        stds.append(distribution.std.float().cpu())
    tensors = {"mean": torch.cat(means), "std": torch.cat(stds)}
    if with_time_ids:
        tensors["time_ids"] = torch.tensor(time_ids, dtype=torch.float32)
    return tensors


def _tokens(tokenizer, captions: list[str]):
    """The captions as the pipelines tokenize a prompt: padded to the tokenizer's full length, longer ones cut."""
    return tokenizer(
        captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    )


@torch.no_grad()
def encode_captions(captions: list[str], tokenizer, text_encoder, *, device) -> dict[str, torch.Tensor]:
    embeddings = []
    for start in range(0, len(captions), ENCODE_BATCH_SIZE):
        tokens = _tokens(tokenizer, captions[start : start + ENCODE_BATCH_SIZE])
        # The last hidden state is what StableDiffusionPipeline conditions on (clip_skip unset).
        embeddings.append(text_encoder(tokens.input_ids.to(device), return_dict=False)[0].float().cpu())
    return {"embeddings": torch.cat(embeddings)}


@torch.no_grad()
def encode_captions_sdxl(captions: list[str], tokenizers, text_encoders, *, device) -> dict[str, torch.Tensor]:
    """SDXL's conditioning, as StableDiffusionXLPipeline.encode_prompt computes it (clip_skip unset)."""
    embeddings, pooled = [], []
    for start in range(0, len(captions), ENCODE_BATCH_SIZE):
        per_encoder = []
        for tokenizer, text_encoder in zip(tokenizers, text_encoders, strict=True):
            tokens = _tokens(tokenizer, captions[start : start + ENCODE_BATCH_SIZE])
            output = text_encoder(tokens.input_ids.to(device), output_hidden_states=True, return_dict=False)
            per_encoder.append(output[-1][-2].float().cpu())  # penultimate hidden states
        # Only the last encoder's (text_encoder_2's) projected pooled output conditions SDXL.
        pooled.append(output[0].float().cpu())
        embeddings.append(torch.cat(per_encoder, dim=-1))
    return {"embeddings": torch.cat(embeddings), "pooled": torch.cat(pooled)}


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
    text_encoder_2=None,
    tokenizer_2=None,
) -> EncodedDataset:
    """Latent distributions and caption embeddings for ``dataset``, from ``cache_dir`` or encoded now and stored there.

    With ``text_encoder_2`` and ``tokenizer_2`` (SDXL), also pooled embeddings
    and time ids; ``text_encoder_fingerprint`` must then cover all four.
    """
    sdxl = text_encoder_2 is not None
    cache_dir = Path(cache_dir)
    files = []
    means, stds, time_ids = [], [], []
    for flip in (False, True) if random_flip else (False,):
        key = {
            "kind": "vae-latent-distribution+sdxl-time-ids" if sdxl else "vae-latent-distribution",
            "vae": vae_fingerprint,
            "dataset": dataset.content_hash,
            "resolution": str(resolution),
            "crop": mode,
            "flip": "mirrored" if flip else "as-is",
        }
        tensors, file = _load_or_compute(
            cache_dir,
            "latents",
            key,
            lambda flip=flip: encode_latent_distributions(
                dataset, vae, resolution=resolution, mode=mode, flip=flip, device=device, with_time_ids=sdxl
            ),
        )
        means.append(tensors["mean"])
        stds.append(tensors["std"])
        if sdxl:
            time_ids.append(tensors["time_ids"])
        files.append(file)
    if sdxl:
        key = {
            "kind": "sdxl-text-embeddings",
            "text_encoders": text_encoder_fingerprint,
            "dataset": dataset.content_hash,
        }
        tensors, file = _load_or_compute(
            cache_dir,
            "text",
            key,
            lambda: encode_captions_sdxl(
                dataset.captions, (tokenizer, tokenizer_2), (text_encoder, text_encoder_2), device=device
            ),
        )
    else:
        key = {"kind": "text-embeddings", "text_encoder": text_encoder_fingerprint, "dataset": dataset.content_hash}
        tensors, file = _load_or_compute(
            cache_dir, "text", key, lambda: encode_captions(dataset.captions, tokenizer, text_encoder, device=device)
        )
    files.append(file)
    return EncodedDataset(
        latent_mean=torch.stack(means),
        latent_std=torch.stack(stds),
        text_embeddings=tensors["embeddings"],
        cache_files=tuple(files),
        pooled_text_embeddings=tensors["pooled"] if sdxl else None,
        time_ids=torch.stack(time_ids) if sdxl else None,
    )
