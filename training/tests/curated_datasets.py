"""Tiny curated datasets made with PIL: coloured shapes on plain backgrounds, captioned with what they show."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40)}
SHAPES = ("circle", "square")


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
