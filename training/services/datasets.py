"""Curated datasets: import a folder and freeze its content hash, check it is unchanged, freeze a selection into one.

A run trains on the frozen snapshot only, so every run can say exactly which images it learned from.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from django.db import IntegrityError

from core.names import check_slug_name
from training.atomic import publish_directory
from training.datasets import CAPTIONS_FILE, CuratedDatasetError, load_curated_dataset
from training.models import CuratedDataset
from training.services.common import TrainingError, check_new_name, training_dir


def import_curated_dataset(name: str, path: str, *, description: str = "", created_by=None) -> CuratedDataset:
    """Check a curated dataset folder and freeze it under ``name``: its content hash is what runs will train on."""
    name = check_slug_name(name, "dataset", error=TrainingError, field="name")
    if CuratedDataset.objects.filter(name=name).exists():
        raise TrainingError(f"A curated dataset named {name!r} already exists; choose another name.", field="name")
    folder = Path(path).expanduser()
    try:
        dataset = load_curated_dataset(folder)
    except CuratedDatasetError as exc:
        raise TrainingError(str(exc), field="path") from None
    try:
        return CuratedDataset.objects.create(
            name=name,
            path=str(folder.resolve()),
            content_hash=dataset.content_hash,
            image_count=len(dataset),
            description=description,
            created_by=created_by,
        )
    except IntegrityError:
        raise TrainingError(
            f"A curated dataset named {name!r} already exists; choose another name.", field="name"
        ) from None


def verify_dataset(dataset: CuratedDataset) -> None:
    """Raise TrainingError unless the folder still holds exactly the snapshot frozen at import."""
    try:
        current = load_curated_dataset(dataset.path)
    except CuratedDatasetError as exc:
        raise TrainingError(f"Curated dataset {dataset.name}: {exc}") from None
    if current.content_hash != dataset.content_hash:
        raise TrainingError(
            f"Curated dataset {dataset.name} changed since it was frozen on {dataset.frozen_at:%Y-%m-%d %H:%M} "
            f"({dataset.path}: {len(current)} images now, {dataset.image_count} then; content hash "
            f"{current.content_hash[:12]} != {dataset.content_hash[:12]}). Runs train on the frozen snapshot only: "
            "restore the folder, or import the new contents as a new dataset."
        )


# --- Freezing a selection -------------------------------------------------------------------------


def _flat_file_names(rows) -> list[str]:
    """Plain, unique file names for candidates from nested folders (also unique ignoring case)."""
    names, seen = [], set()
    for row in rows:
        base = row.relative_path.replace("/", "__")
        stem, suffix = os.path.splitext(base)
        name, number = base, 2
        while name.lower() in seen:
            name, number = f"{stem}-{number}{suffix}", number + 1
        seen.add(name.lower())
        names.append(name)
    return names


def freeze_curated_dataset(name: str, entries, *, description: str = "", created_by=None) -> CuratedDataset:
    """Copy the chosen candidates with their (possibly edited) captions into a new curated dataset folder under
    NEEDLE_TRAINING_DIR/datasets/NAME, written whole or not at all, and freeze it (import_curated_dataset).

    ``entries``: (Candidate row, caption) pairs.
    """
    name = check_new_name(name, "curated dataset", CuratedDataset.objects)
    entries = list(entries)
    if not entries:
        raise TrainingError("Choose at least one candidate to freeze into a dataset.")
    pks = [row.pk for row, _ in entries]
    if len(set(pks)) != len(pks):
        raise TrainingError("A candidate is chosen twice; each image can appear once in a dataset.")
    for row, caption in entries:
        if not isinstance(caption, str) or not caption.strip():
            raise TrainingError(f"{row.relative_path} has an empty caption; give every chosen image a caption.")
    final = training_dir() / "datasets" / name
    if final.exists():
        raise TrainingError(f"{final} already exists; choose another dataset name (or move that folder away).")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{name}.staging-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        lines = []
        for (row, caption), file_name in zip(entries, _flat_file_names([row for row, _ in entries])):
            source = Path(row.collection.path) / row.relative_path
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise TrainingError(f"{source} cannot be read ({exc}); restore it or leave it out.") from None
            if hashlib.sha256(data).hexdigest() != row.sha256:
                raise TrainingError(
                    f"{source} changed since the collection {row.collection.name} was imported; "
                    "restore it or re-import the collection."
                )
            (staging / file_name).write_bytes(data)
            lines.append(json.dumps({"file_name": file_name, "text": caption.strip()}, ensure_ascii=False))
        (staging / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            publish_directory(staging, final)
        except OSError as exc:
            raise TrainingError(f"{final} could not be created ({exc}); choose another name.") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        return import_curated_dataset(name, str(final), description=description, created_by=created_by)
    except TrainingError:
        shutil.rmtree(final, ignore_errors=True)  # a folder nobody can train from: do not leave it behind
        raise
