"""Folders and files the platform imports: the curation candidate pool and the evaluation prompt set.

The candidate pool is a folder of PNG renders with ``captions.csv`` (what ``manage.py curate import`` reads); the
evaluation prompts are a CSV prompt set (``manage.py import_prompts``) of captions no model was trained on, with a
category per caption kind. Seeds come from disjoint ranges, so pool, corpus and evaluation never share a scene.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from world.oracle import scene_for_seed
from world.scenes import render

CORPUS_SEED_BASE = 0
POOL_SEED_BASE = 10_000_000
EVAL_SEED_BASE = 20_000_000


def write_candidate_pool(folder: str | Path, size: int, seed_base: int = POOL_SEED_BASE) -> Path:
    """``size`` captioned renders in ``folder`` (idempotent: an existing complete pool is reused)."""
    folder = Path(folder)
    captions = folder / "captions.csv"
    if captions.exists() and sum(1 for _ in captions.open(encoding="utf-8")) == size + 1:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(size):
        scene = scene_for_seed(seed_base + i)
        name = f"scene-{seed_base + i}.png"
        Image.fromarray(render(scene)).save(folder / name)
        rows.append((name, scene.caption()))
    with open(captions, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return folder


def prompt_category(caption_scene) -> str:
    if caption_scene.position:
        return "position"
    return "count" if caption_scene.count > 1 else "single object"


def evaluation_prompts(count: int, seed_base: int = EVAL_SEED_BASE) -> list[tuple[str, str]]:
    """``count`` distinct held-out captions with their category, in a fixed order."""
    seen, prompts, i = set(), [], 0
    while len(prompts) < count:
        scene = scene_for_seed(seed_base + i)
        i += 1
        if scene.caption() not in seen:
            seen.add(scene.caption())
            prompts.append((scene.caption(), prompt_category(scene)))
    return prompts


def prompt_set_csv(count: int, seed_base: int = EVAL_SEED_BASE) -> bytes:
    lines = ["prompt,category"] + [
        f"{caption},{category}" for caption, category in evaluation_prompts(count, seed_base)
    ]
    return ("\n".join(lines) + "\n").encode()
