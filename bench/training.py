"""Steps per second: Needle's quality-tuning loop vs a diffusers train_text_to_image.py-style loop, in one run.

Needle's loop trains on cached VAE latent distributions and text embeddings
(training.encoding_cache); the baseline does what train_text_to_image.py does
every step: read the images, preprocess them (resize, crop, flip, normalise),
tokenize the captions, encode the pixels with the VAE (``latent_dist.sample()``)
and the captions with the text encoder, then the same UNet loss and AdamW
update. Same tiny pipeline, same curated dataset, same batch, same number of
steps, same process; the baseline runs before and after Needle and its mean is
used, to damp drift. Each loop's figure is 1 / the median seconds per step
(the first step is a warm-up and not counted): other work on a shared machine
stalls single steps, and the median ignores those. Needle's step times are read
from its own progress events, so model loading, encoding the cache, the final
checkpoint and validation are excluded; the one-off loading + encoding time is
printed separately.

    python bench/training.py [--steps 40] [--batch-size 8] [--resolution 128] [--images 64] [--source-scale 4]
                             [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_dataset(path: Path, count: int, height: int) -> Path:
    """``count`` JPEG "photographs" of coloured shapes, ``height`` px tall and 5:4 wide, so that cropping does work."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(0)
    path.mkdir(parents=True)
    lines = []
    for i in range(count):
        colour = tuple(rng.randrange(256) for _ in range(3))
        background = tuple(rng.randrange(256) for _ in range(3))
        image = Image.new("RGB", (height * 5 // 4, height), background)
        x, y, r = rng.randrange(height), rng.randrange(height), rng.randrange(height // 16, height // 2)
        ImageDraw.Draw(image).ellipse((x - r, y - r, x + r, y + r), fill=colour)
        image.save(path / f"{i:04d}.jpg", quality=95)
        lines.append(json.dumps({"file_name": f"{i:04d}.jpg", "text": f"a circle of colour {colour} on {background}"}))
    (path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return path


def median_rate(durations: list[float]) -> float:
    return 1.0 / statistics.median(durations)


def baseline_steps_per_second(base: Path, dataset_dir: Path, config, steps: int) -> float:
    """The train_text_to_image.py step, everything recomputed each time; same loss, optimizer and data order."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from training.datasets import crop_mode, load_curated_dataset, preprocess
    from training.quality_tuning import DataOrder

    dataset = load_curated_dataset(dataset_dir)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae").requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder").requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet").train()
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    order = DataOrder(len(dataset), config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mode = crop_mode(config.center_crop, config.seed)

    def step() -> None:
        indices = order.next_indices(config.batch_size)
        flips = torch.randint(0, 2, (len(indices),), generator=generator).tolist()
        pixels = torch.stack(
            [
                torch.from_numpy(
                    preprocess(
                        dataset.open_image(i),
                        resolution=config.resolution,
                        mode=mode,
                        file_name=dataset.images[i].file_name,
                        flip=bool(f),
                    )
                )
                for i, f in zip(indices, flips)
            ]
        )
        tokens = tokenizer(
            [dataset.images[i].caption for i in indices],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
            embeddings = text_encoder(tokens.input_ids, return_dict=False)[0]
        noise = torch.randn(latents.shape, generator=generator)
        noise += config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, embeddings, return_dict=False)[0]
        F.mse_loss(prediction.float(), noise.float()).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up, like Needle's first step, which is not counted either
    durations = []
    for _ in range(steps - 1):
        started = time.perf_counter()
        step()
        durations.append(time.perf_counter() - started)
    return median_rate(durations)


def needle_steps_per_second(
    base: Path, dataset_dir: Path, config, run_dir: Path, cache_dir: Path
) -> tuple[float, float]:
    """(steps/s over steps 2..N, seconds from the call to the end of step 1: loading + encoding the cache + 1 step)."""
    from training.quality_tuning import train

    times: dict[int, float] = {}
    started = time.perf_counter()
    train(
        config,
        base,
        dataset_dir,
        run_dir,
        cache_dir=cache_dir,
        progress=lambda e: times.setdefault(e.step, time.perf_counter()) if e.event == "step" else None,
    )
    durations = [times[s] - times[s - 1] for s in range(2, config.max_steps + 1)]
    return median_rate(durations), times[1] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument(
        "--source-scale",
        type=float,
        default=4.0,
        help="source photo height / training resolution (curated photographs are larger than 512 px)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: this machine is shared)")
    args = parser.parse_args()

    import torch

    from generation.tiny_pipelines import save_tiny_pipeline
    from training.quality_tuning import QualityTuningConfig

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="needle-bench-training-"))
    try:
        base = save_tiny_pipeline(work / "base", seed=0, kind="sd")
        source_height = round(args.resolution * args.source_scale)
        dataset = make_dataset(work / "dataset", args.images, source_height)
        config = QualityTuningConfig(
            resolution=args.resolution,
            batch_size=args.batch_size,
            max_steps=args.steps,
            random_flip=True,
            checkpoint_every=args.steps,
            validation_every=args.steps,
            validation_prompts=("a red circle",),
            validation_seeds=(0,),
            validation_inference_steps=2,
        )
        print(
            f"tiny SD pipeline (UNet 32/64 channels, VAE 8-32 channels, 2-layer CLIP), {args.images} images "
            f"{source_height * 5 // 4}x{source_height} JPEG -> {args.resolution} px, batch {args.batch_size}, "
            f"{args.steps} steps, random flip, {args.threads} thread(s)"
        )
        before = baseline_steps_per_second(base, dataset, config, args.steps)
        print(f"diffusers-style loop (encode every step): {before:.2f} steps/s")
        needle, startup = needle_steps_per_second(base, dataset, config, work / "run", work / "cache")
        print(
            f"Needle (cached latents + embeddings):      {needle:.2f} steps/s "
            f"(loading + encoding {args.images} images x 2 flips once: {startup:.1f} s)"
        )
        after = baseline_steps_per_second(base, dataset, dataclasses.replace(config), args.steps)
        print(f"diffusers-style loop again:                {after:.2f} steps/s")
        baseline = (before + after) / 2
        print(f"ratio Needle / baseline: {needle / baseline:.2f}x (goal >= 2x on CPU)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
