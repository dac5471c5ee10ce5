"""Draw the worked example pairs that the rater's instructions page shows (static/examples/*.png).

Illustrations, not generated images: they show a new rater what each question asks before the first real pair,
and carry nothing about any model. Deterministic, so re-running changes no bytes:

    .venv/bin/python scripts/rater_examples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SIZE = 256
OUT = Path(__file__).resolve().parent.parent / "static" / "examples"


def _vertical_gradient(top, bottom, height, width=SIZE) -> np.ndarray:
    t = np.linspace(0, 1, height)[:, None, None]
    return (np.array(top) * (1 - t) + np.array(bottom) * t).repeat(width, axis=1)


def sunset() -> Image.Image:
    """A clean, well-lit sunset over the sea: clear horizon, strong colour, a sun with its reflection."""
    horizon = 150
    sky = _vertical_gradient((58, 36, 120), (252, 150, 70), horizon)
    sea = _vertical_gradient((40, 70, 130), (10, 25, 60), SIZE - horizon)
    image = Image.fromarray(np.concatenate([sky, sea]).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 92, 156, 148), fill=(255, 226, 140))
    for i, y in enumerate(range(horizon + 6, SIZE, 12)):
        half = 26 - 2 * i
        if half > 2:
            draw.rectangle((128 - half, y, 128 + half, y + 3), fill=(250, 190, 110))
    draw.polygon([(0, horizon), (0, 118), (40, 104), (80, 126), (92, horizon)], fill=(30, 20, 50))
    return image


def dull_sunset() -> Image.Image:
    """The same scene, the way a poor image looks: tilted, blurred, washed out and noisy."""
    image = sunset().rotate(7, resample=Image.BICUBIC, expand=False, fillcolor=(120, 110, 120))
    image = image.filter(ImageFilter.GaussianBlur(4))
    image = ImageEnhance.Contrast(ImageEnhance.Color(image).enhance(0.35)).enhance(0.55)
    noise = np.random.default_rng(0).normal(0, 14, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=float) + noise, 0, 255).astype(np.uint8))


def apples(count: int, apple_colour, plate_colour) -> Image.Image:
    image = Image.fromarray(_vertical_gradient((236, 226, 210), (200, 186, 166), SIZE).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((28, 150, 228, 222), fill=tuple(int(c * 0.7) for c in plate_colour))
    draw.ellipse((36, 146, 220, 212), fill=plate_colour)
    centres = [(128,)] if count == 1 else [(96,), (160,)]
    for (x,) in centres:
        draw.ellipse((x - 34, 110, x + 34, 176), fill=apple_colour)
        draw.ellipse((x - 20, 120, x - 6, 134), fill=(255, 255, 255))  # highlight
        draw.line((x, 112, x + 4, 96), fill=(90, 60, 30), width=4)
        draw.ellipse((x + 4, 94, x + 22, 104), fill=(70, 150, 60))
    return image


EXAMPLES = {
    "appeal-better.png": sunset,
    "appeal-worse.png": dull_sunset,
    "faithful-match.png": lambda: apples(2, (200, 30, 40), (60, 90, 200)),
    "faithful-mismatch.png": lambda: apples(1, (120, 190, 60), (245, 245, 245)),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, draw in EXAMPLES.items():
        draw().save(OUT / name, optimize=True)  # plain PNG: no text chunks, no metadata
        print(OUT / name)


if __name__ == "__main__":
    main()
