"""A checkpoint becomes a model: export its pipeline, register it with its lineage, compare it with its base."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.db import transaction

from annotation import services as annotation_services
from annotation.models import Campaign
from generation import services as generation_services
from generation.models import TextToImageModel
from generation.pipelines import WeightsChangedError
from training import checkpoints
from training.models import RunCheckpoint
from training.services.common import TrainingError, models_dir


def default_model_name(checkpoint: RunCheckpoint) -> str:
    run = checkpoint.run
    suffix = f"-qt{run.pk}-step{checkpoint.step}"
    return run.base_model.name[: 100 - len(suffix)] + suffix


def _lineage(checkpoint: RunCheckpoint, exported: Path) -> dict:
    run = checkpoint.run
    record = checkpoints.read_run_record(run.run_dir) or {}
    unet = "unet_ema" if (Path(checkpoint.path) / checkpoints.EMA_UNET_DIR).is_dir() else "unet"
    return {
        "run": run.pk,
        "run_dir": run.run_dir,
        "step": checkpoint.step,
        "checkpoint": checkpoint.path,
        "weights": unet,
        "exported_path": str(exported),
        "base_model": run.base_model.name,
        "base_fingerprint": record.get("base_pipeline", {}).get("fingerprint", run.base_fingerprint),
        "dataset": run.dataset.name,
        "dataset_path": run.dataset.path,
        "dataset_hash": record.get("dataset", {}).get("content_hash", run.dataset.content_hash),
        "dataset_images": run.dataset.image_count,
        "hyperparameters": record.get("config", run.config),  # resolved by the trainer: resolution, prediction type
    }


def _describe(lineage: dict) -> str:
    h = lineage["hyperparameters"]
    return (
        f"Quality-tuned from {lineage['base_model']} (weights {lineage['base_fingerprint'][:12]}) on curated dataset "
        f"{lineage['dataset']} ({lineage['dataset_images']} images, hash {lineage['dataset_hash'][:12]}): run "
        f"{lineage['run']}, step {lineage['step']} ({lineage['weights']}). batch {h.get('batch_size')}, lr "
        f"{h.get('learning_rate')}, noise offset {h.get('noise_offset')}, resolution {h.get('resolution')}, "
        f"EMA {h.get('use_ema')}, seed {h.get('seed')}, mixed precision {h.get('mixed_precision')}."
    )


def register_checkpoint(checkpoint: RunCheckpoint, name: str | None = None, *, registered_by=None) -> TextToImageModel:
    """Export the checkpoint as a pipeline and register it (source quality_tuned, parent the base). Idempotent.

    A checkpoint registered before returns its model (whatever ``name``). The
    export is kept when registration is refused (e.g. the name is taken), so
    trying again with another name does not copy the pipeline again.
    """
    error = None
    with transaction.atomic():
        checkpoint = (
            RunCheckpoint.objects.select_for_update(of=("self",))
            .select_related("run__base_model", "run__dataset", "registered_model")
            .get(pk=checkpoint.pk)
        )
        if checkpoint.registered_model is not None:
            return checkpoint.registered_model
        run = checkpoint.run
        exported = Path(checkpoint.exported_path) if checkpoint.exported_path else None
        if exported is None or not (exported / "model_index.json").is_file():
            exported = models_dir() / f"run-{run.pk:05d}-step-{checkpoint.step:06d}-{secrets.token_hex(4)}"
            try:
                checkpoints.export_pipeline(run.run_dir, checkpoint.step, exported)
            except (checkpoints.CheckpointNotFoundError, WeightsChangedError, FileExistsError, OSError) as exc:
                raise TrainingError(f"Cannot export step {checkpoint.step} of run {run.pk}: {exc}") from None
            checkpoint.exported_path = str(exported)
            checkpoint.save(update_fields=["exported_path"])
        lineage = _lineage(checkpoint, exported)
        base = run.base_model
        try:
            with transaction.atomic():
                model = generation_services.register_model(
                    name=(name or default_model_name(checkpoint)).strip(),
                    pipeline_path=str(exported),
                    steps=base.default_steps,
                    guidance_scale=base.default_guidance_scale,
                    width=base.default_width,
                    height=base.default_height,
                    scheduler=base.default_scheduler,
                    description=_describe(lineage),
                    source=TextToImageModel.Source.QUALITY_TUNED,
                    parent=base,
                    registered_by=registered_by,
                )
                lineage["model_fingerprint"] = model.weights_fingerprint
                checkpoint.registered_model = model
                checkpoint.lineage = lineage
                checkpoint.save(update_fields=["registered_model", "lineage"])
        except generation_services.GenerationError as exc:
            error = exc  # the export stays recorded (outer transaction commits)
    if error is not None:
        raise TrainingError(str(error))
    return model


def create_tuned_vs_base_campaign(
    checkpoint: RunCheckpoint,
    prompt_set,
    seeds,
    name: str | None = None,
    *,
    model_name: str | None = None,
    created_by=None,
):
    """A draft campaign, the base against this checkpoint (registered first if it is not), on both of Emu's criteria."""
    if isinstance(seeds, str):
        try:
            seeds = generation_services.parse_seeds(seeds)
        except generation_services.GenerationError as exc:
            raise TrainingError(str(exc)) from None
    tuned = register_checkpoint(checkpoint, model_name, registered_by=created_by)
    base = checkpoint.run.base_model
    if name is None:
        name = stem = f"{tuned.name} vs {base.name}"
        number = 2
        while Campaign.objects.filter(name=name).exists():
            name, number = f"{stem} ({number})", number + 1
    try:
        return annotation_services.create_campaign(
            name=name,
            models=[base, tuned],
            prompt_set=prompt_set,
            seeds=list(seeds),
            criteria=None,
            created_by=created_by,
        )
    except annotation_services.AnnotationError as exc:
        raise TrainingError(str(exc)) from None
