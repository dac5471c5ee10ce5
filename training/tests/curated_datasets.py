"""Tiny curated datasets made with PIL: coloured shapes on plain backgrounds, captioned with what they show; the
settings that train a tiny pipeline on one in seconds; and distinct pictures for the curation funnel to sort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.config import QualityTuningConfig

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40)}
SHAPES = ("circle", "square")


# Settings for a few-second run of a tiny pipeline at 32 px (4x4 latents; the smallest the tiny SDXL UNet takes: it
# downsamples once).
TINY_CONFIG = QualityTuningConfig(
    resolution=32,
    batch_size=4,
    max_steps=6,
    checkpoint_every=3,
    validation_every=3,
    validation_prompts=("a red circle on a blue background",),
    validation_seeds=(0,),
    validation_inference_steps=2,
    seed=0,
)

# The same as a run's settings (services.create_run's keywords); TINY_VALIDATED_RUN renders its validation images too.
TINY_RUN = {
    name: getattr(TINY_CONFIG, name)
    for name in ("resolution", "batch_size", "max_steps", "checkpoint_every", "validation_every")
}
TINY_VALIDATED_RUN = {
    **TINY_RUN,
    "validation_prompts": list(TINY_CONFIG.validation_prompts),
    "validation_seeds": list(TINY_CONFIG.validation_seeds),
    "validation_inference_steps": TINY_CONFIG.validation_inference_steps,
}


def make_curated_dataset(path: Path, count: int = 8, size: tuple[int, int] = (48, 40)) -> Path:
    """``count`` images of coloured shapes on a plain background, captioned with what they show."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for i in range(count):
        colour, background = names[i % len(names)], names[(i + 1 + i // len(names)) % len(names)]
        shape = SHAPES[(i // 2) % len(SHAPES)]
        image = Image.new("RGB", size, COLOURS[background])
        draw = ImageDraw.Draw(image)
        box = (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        file_name = f"{i:04d}.png"
        image.save(path / file_name)
        lines.append(json.dumps({"file_name": file_name, "text": f"a {colour} {shape} on a {background} background"}))
    (path / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Every stage of the curation funnel, with thresholds every picture() clears but the too small and the near duplicates.
FUNNEL_STAGES = [
    {"kind": "ResolutionStage", "min_side": 64, "max_aspect_ratio": 2.0},
    {"kind": "TextInImageStage", "max_words": 5},
    {"kind": "NearDuplicateStage", "max_hamming": 6},
    {"kind": "ClipScoreStage", "min_score": -100.0},
    {"kind": "AestheticStage", "min_score": -1000.0},
]


def picture(seed: int, size=(120, 90), *, ellipses: int = 5, widths=(10, 50)) -> Image.Image:
    """A distinct structured picture (smooth random colour field and ellipses): far from the others in perceptual hash."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(ellipses):
        x, y, w = int(rng.integers(0, size[0])), int(rng.integers(0, size[1])), int(rng.integers(*widths))
        draw.ellipse((x, y, x + w, y + w // 2), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image
