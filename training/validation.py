"""Validation images and the loss curve of a quality-tuning run.

Quality-tuning is stopped early, by eye and then by raters, so a run renders
the same prompts with the same seeds as it goes: ``validation/step-000050/``
holds one PNG per (prompt, seed), ``validation/grid.png`` puts every validated
step in a row so that drift in style is visible at a glance, and ``loss.png``
plots ``metrics.jsonl``. Images are rendered through
``generation.pipelines.render``, the path Needle's generation batches take, so
they match what raters would be shown for the same seed.

Plots are drawn with PIL: it is already a dependency, and a loss curve needs
no more than lines and labels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from generation.pipelines import LoadedPipeline, encode_png, render
from training.atomic import atomic_write_bytes, atomic_write_text
from training.checkpoints import checkpoint_name

VALIDATION_DIR = "validation"
GRID_FILE = "grid.png"
PROMPTS_FILE = "prompts.json"
LOSS_CURVE_FILE = "loss.png"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ValidationRenderer:
    """Renders the run's fixed validation prompts and seeds with the UNet as it is now."""

    def __init__(
        self, pipe, *, run_dir: Path, prompts, seeds, inference_steps: int, guidance_scale: float, resolution: int
    ):
        self.loaded = LoadedPipeline(
            pipe=pipe, original_scheduler=pipe.scheduler, device=str(pipe.device), fingerprint=""
        )
        self.jobs = [(p, s) for p in range(len(prompts)) for s in seeds]
        self.prompts = list(prompts)
        self.parameters = {
            "scheduler": "default",
            "steps": inference_steps,
            "guidance_scale": guidance_scale,
            "width": resolution,
            "height": resolution,
        }
        self.root = Path(run_dir) / VALIDATION_DIR
        index = {f"{p:02d}-seed{s}.png": {"prompt": self.prompts[p], "seed": s} for p, s in self.jobs}
        atomic_write_text(self.root / PROMPTS_FILE, json.dumps(index, indent=2) + "\n")

    def render(self, step: int) -> Path:
        images, _ = render(
            self.loaded, [self.prompts[p] for p, _ in self.jobs], [s for _, s in self.jobs], self.parameters
        )
        out = self.root / checkpoint_name(step)
        for (p, s), image in zip(self.jobs, images):
            atomic_write_bytes(out / f"{p:02d}-seed{s}.png", encode_png(image))
        write_grid(self.root)
        return out


def write_grid(validation_dir: Path) -> Path:
    """One row per validated step (oldest on top), one column per (prompt, seed), labelled with the step."""
    rows = sorted(
        (d for d in Path(validation_dir).iterdir() if d.is_dir() and d.name.startswith("step-")), key=lambda d: d.name
    )
    names = sorted(f.name for f in rows[-1].glob("*.png"))
    with Image.open(rows[-1] / names[0]) as first:
        width, height = first.size
    label_width, gap = 90, 2
    grid = Image.new("RGB", (label_width + len(names) * (width + gap), len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        top = r * (height + gap)
        draw.text((4, top + height // 2 - 6), f"step {int(row.name.split('-')[1])}", fill="black", font=font)
        for c, name in enumerate(names):
            if (row / name).is_file():
                with Image.open(row / name) as image:
                    grid.paste(image.convert("RGB").resize((width, height)), (label_width + c * (width + gap), top))
    return atomic_write_bytes(Path(validation_dir) / GRID_FILE, _png(grid))


def _moving_average(values: list[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        averaged.append(total / min(i + 1, window))
    return averaged


def draw_loss_curve(metrics: list[dict], path: Path, size: tuple[int, int] = (800, 400)) -> Path:
    """Per-step loss (grey) and its moving average (blue) against the step, as a PNG."""
    steps = [m["step"] for m in metrics]
    losses = [float(m["loss"]) for m in metrics]
    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 8), "training loss per step (grey) and moving average (blue)", fill="black", font=font)
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if steps:
        low, high = min(losses), max(losses)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        first, last = steps[0], max(steps[-1], steps[0] + 1)

        def point(step: float, loss: float) -> tuple[float, float]:
            x = left + (step - first) / (last - first) * (width - left - right)
            y = height - bottom - (loss - low) / (high - low) * (height - top - bottom)
            return x, y

        for k in range(5):
            loss = low + (high - low) * k / 4
            _, y = point(first, loss)
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((4, y - 6), f"{loss:.4g}", fill="black", font=font)
        for step in sorted({round(first + (last - first) * k / 4) for k in range(5)}):
            x, _ = point(step, low)
            draw.line((x, height - bottom, x, height - bottom + 4), fill="black")
            draw.text((x - 10, height - bottom + 8), str(step), fill="black", font=font)
        if len(steps) > 1:
            draw.line([point(s, v) for s, v in zip(steps, losses)], fill=(190, 190, 190))
            window = max(5, len(steps) // 25)  # ~4% of the run: trends show, single noisy steps do not
            draw.line(
                [point(s, v) for s, v in zip(steps, _moving_average(losses, window))], fill=(30, 80, 200), width=2
            )
    return atomic_write_bytes(Path(path), _png(image))
