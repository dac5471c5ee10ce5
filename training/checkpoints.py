"""The run directory of a quality-tuning run: run record, checkpoints, and exporting a checkpoint as a pipeline.

Layout::

    RUN_DIR/
      run.json                      config, base pipeline (path + fingerprint), curated dataset (path + hash)
      metrics.jsonl                 one line per optimizer step (training.metrics)
      loss.png                      loss curve, redrawn at each validation
      validation/                   fixed prompts and seeds rendered along the run (training.validation)
      checkpoints/
        latest                      "step-000050": the newest checkpoint, for readers such as the dashboard
        step-000050/
          unet/                     the trained UNet, diffusers format (config.json + safetensors)
          unet_ema/                 EMA weights in the same format (runs with use_ema only)
          optimizer.pt              AdamW state
          lr_scheduler.pt
          grad_scaler.pt            fp16 loss scale (fp16 runs only)
          random_states_0.pt        python, numpy, torch CPU, CUDA and data-generator states, one file per process
          training_state.json       step, epoch, position in the epoch's permutation, EMA counters, config

A checkpoint is written into ``checkpoints/.step-000050.staging``, every file
fsynced, and only then renamed to ``step-000050``; the ``latest`` pointer is
updated (atomically) after that. So a directory named ``step-*`` is always
complete, and a kill mid-write leaves only a staging directory, which the next
start deletes. Resuming trusts the directories rather than the pointer, which
can lag one checkpoint behind a kill between the rename and its update.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.locking import try_lock
from generation.pipelines import WeightsChangedError, fingerprint_directory
from training.atomic import atomic_write_text, publish_directory, remove_directory, temporary_sibling

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LATEST_POINTER = "latest"
TRAINING_STATE_FILE = "training_state.json"
UNET_DIR = "unet"
EMA_UNET_DIR = "unet_ema"
_CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")


class CheckpointNotFoundError(ValueError):
    """The run directory has no (such) complete checkpoint."""


class RunInUseError(RuntimeError):
    """Another live process is training in this run directory."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_step(path: Path) -> int:
    match = _CHECKPOINT_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint directory (step-NNNNNN)")
    return int(match.group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Path:
    """The checkpoint at ``step``, or the latest one when ``step`` is None."""
    path = latest_checkpoint(run_dir) if step is None else checkpoints_dir(run_dir) / checkpoint_name(step)
    if path is None or not path.is_dir():
        available = ", ".join(str(checkpoint_step(p)) for p in list_checkpoints(run_dir)) or "none"
        raise CheckpointNotFoundError(
            f"{run_dir} has no checkpoint at step {step} (complete checkpoints: {available})."
        )
    return path


def staging_dir(run_dir: str | Path, step: int) -> Path:
    # The same name in every process of a multi-GPU run: they all write their RNG states into it.
    return checkpoints_dir(run_dir) / f".{checkpoint_name(step)}.staging"


def discard_incomplete_checkpoints(run_dir: str | Path) -> None:
    """Delete what a killed run left half-written (staging or half-deleted directories)."""
    root = checkpoints_dir(run_dir)
    if root.is_dir():
        for leftover in root.iterdir():
            if not leftover.name.startswith("."):
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


def publish_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Rename the fully written staging directory of ``step`` into place and point ``latest`` at it."""
    final = publish_directory(staging_dir(run_dir, step), checkpoints_dir(run_dir) / checkpoint_name(step))
    atomic_write_text(checkpoints_dir(run_dir) / LATEST_POINTER, final.name + "\n")
    return final


def prune_checkpoints(run_dir: str | Path, keep_last: int | None) -> None:
    if keep_last is None:
        return
    for old in list_checkpoints(run_dir)[:-keep_last]:
        remove_directory(old)


def read_training_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / TRAINING_STATE_FILE).read_text(encoding="utf-8"))


@contextmanager
def run_directory_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run directory for one trainer: two writing the same checkpoints would corrupt each other.

    A Celery task redelivered while the first worker still trains is the usual
    way to get two. The lock is an flock, so the kernel drops it when its holder
    dies, even by SIGKILL: no stale lock to clean up (local filesystems; NFS
    flock semantics vary).
    """
    path = Path(run_dir) / LOCK_FILE
    with try_lock(path, "a+", encoding="utf-8") as handle:
        if handle is None:
            holder = ""
            with contextlib.suppress(OSError, UnicodeDecodeError):
                holder = path.read_text(encoding="utf-8").strip()
            raise RunInUseError(
                f"{run_dir} is being trained by another process ({holder or 'unknown'}); "
                "wait for it to finish or stop it first."
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


# --- Run record ----------------------------------------------------------------------------------


def write_run_record(run_dir: str | Path, record: dict) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(record, indent=2) + "\n")


def read_run_record(run_dir: str | Path) -> dict | None:
    file = Path(run_dir) / RUN_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


# --- Export --------------------------------------------------------------------------------------


def export_pipeline(run_dir: str | Path, step: int | None, out_dir: str | Path, *, use_ema: bool | None = None) -> Path:
    """Write a complete diffusers pipeline: the base pipeline's files with the checkpoint's UNet.

    ``step`` None exports the latest checkpoint. ``use_ema`` None takes the EMA
    weights when the checkpoint has them (what validation rendered), else the
    trained weights. The frozen components are copied byte for byte, so the
    export differs from the base model only in ``unet/`` (and in the scheduler's
    prediction type when the run trained another one). ``out_dir`` must not
    exist: registered models are fingerprinted, so an export is never overwritten.
    SD and SDXL export alike: an SDXL export keeps the base's text_encoder_2,
    tokenizer_2 and model_index.json, so it loads as a StableDiffusionXLPipeline.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    record = read_run_record(run_dir)
    if record is None:
        raise CheckpointNotFoundError(f"{run_dir} is not a quality-tuning run directory (no {RUN_FILE}).")
    checkpoint = find_checkpoint(run_dir, step)
    has_ema = (checkpoint / EMA_UNET_DIR).is_dir()
    if use_ema and not has_ema:
        raise CheckpointNotFoundError(f"{checkpoint} has no EMA weights (the run did not use EMA).")
    unet_dir = checkpoint / (EMA_UNET_DIR if has_ema and use_ema is not False else UNET_DIR)

    base = Path(record["base_pipeline"]["path"])
    if not base.is_dir():
        raise CheckpointNotFoundError(
            f"the base pipeline {base} of this run is gone; the export needs its frozen components."
        )
    fingerprint, _ = fingerprint_directory(base)
    if fingerprint != record["base_pipeline"]["fingerprint"]:
        raise WeightsChangedError(
            f"the files in {base} changed since the run started; the checkpoint's UNet belongs to the old ones."
        )
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; export into a new directory.")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(out_dir)
    shutil.rmtree(staging, ignore_errors=True)

    def frozen_files_only(folder: str, names: list[str]) -> list[str]:
        # Hidden entries (hub caches, editor files) are not part of the model; the UNet comes from the checkpoint.
        return [n for n in names if n.startswith(".") or (Path(folder) == base and n == UNET_DIR)]

    try:
        shutil.copytree(base, staging, ignore=frozen_files_only)
        shutil.copytree(unet_dir, staging / UNET_DIR)
        scheduler_config = staging / "scheduler" / "scheduler_config.json"
        scheduler = json.loads(scheduler_config.read_text(encoding="utf-8"))
        trained_for = record["config"]["prediction_type"]
        if scheduler.get("prediction_type") != trained_for:
            scheduler["prediction_type"] = trained_for
            scheduler_config.write_text(json.dumps(scheduler, indent=2) + "\n", encoding="utf-8")
        return publish_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
