"""Operations of the generation app: register, import, create, dispatch, generate.

(About 580 lines, kept whole: registering models, importing prompt sets and running batches share one
validation vocabulary and one batch state; it is the next module to split if it grows.)

Views, admin actions, management commands and Celery tasks call these and
nothing else, so every entry point validates and behaves the same way.
"""

from __future__ import annotations

import hashlib
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.errors import ServiceError
from core.names import check_slug_name
from core.task_queue import enqueue_on_commit

from . import pipelines
from .models import (
    SCHEDULER_CHOICES,
    BatchModel,
    GeneratedImage,
    GenerationBatch,
    Prompt,
    PromptSet,
    TextToImageModel,
    canonical_parameters,
    parameters_hash,
)
from .prompt_files import ParsedPromptFile, PromptFileError, parse_prompt_file
from .selectors import ImageKey, batch_keys, batch_progress, chunk_count, images_for
from .storage import content_addressed_name

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
# Seeds in one batch or campaign: every model renders every prompt once per seed.
MAX_SEEDS = 100_000
MAX_STEPS = 1000
MAX_GUIDANCE_SCALE = 50
MIN_SIDE, MAX_SIDE = 8, 4096
MAX_INFERENCE_BATCH_SIZE = 256
MAX_CHUNK_SIZE = 100_000
MAX_NAME_LENGTH = 100


class GenerationError(ServiceError):
    """An operation was refused; the message tells the researcher what to fix, ``field`` names the input."""


class ModelRegistrationError(GenerationError):
    pass


class BatchError(GenerationError):
    pass


# --- Checking inputs ----------------------------------------------------------------------------


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_generation_parameters(params: dict, error=GenerationError, *, blank_hint: str = "") -> dict:
    """Validate steps, guidance scale, width, height and scheduler wherever they are given (a model's defaults, a
    batch's overrides); returns them as given. ``blank_hint`` says what leaving a size out would do."""
    steps = params.get("steps")
    if steps is not None and (not _is_whole(steps) or not 1 <= steps <= MAX_STEPS):
        raise error(f"Steps must be a whole number from 1 to {MAX_STEPS}, not {steps!r}.", field="steps")
    guidance = params.get("guidance_scale")
    if guidance is not None and (
        not _is_number(guidance) or not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE_SCALE
    ):
        raise error(
            f"The guidance scale must be a number from 0 to {MAX_GUIDANCE_SCALE}, not {guidance!r}.",
            field="guidance_scale",
        )
    for side in ("width", "height"):
        value = params.get(side)
        if value is not None and (not _is_whole(value) or value % 8 or not MIN_SIDE <= value <= MAX_SIDE):
            raise error(
                f"The {side} must be a whole number of pixels, a multiple of 8 from {MIN_SIDE} to {MAX_SIDE} (the VAE "
                f"works in 8-pixel blocks), not {value!r}{blank_hint}.",
                field=side,
            )
    scheduler = params.get("scheduler")
    if scheduler is not None and scheduler not in dict(SCHEDULER_CHOICES):
        raise error(
            f"Unknown scheduler {scheduler!r}; choose one of {', '.join(dict(SCHEDULER_CHOICES))}.", field="scheduler"
        )
    return params


def check_seeds(seeds, error=GenerationError, *, field: str = "seeds") -> list[int]:
    """Seeds as a batch or campaign takes them: whole numbers from 0 to MAX_SEED, each once, at most MAX_SEEDS."""
    if not isinstance(seeds, (list, tuple)):
        raise error(f"Seeds must be a list of whole numbers, not {type(seeds).__name__}.", field=field)
    seeds = list(seeds)
    if not seeds:
        raise error("Give at least one seed, e.g. '0-3'.", field=field)
    if len(seeds) > MAX_SEEDS:
        raise error(
            f"{len(seeds):,} seeds is too many: at most {MAX_SEEDS:,} in one batch or campaign (every model "
            "renders every prompt once per seed). Use fewer seeds.",
            field=field,
        )
    for seed in seeds:
        if not _is_whole(seed):
            raise error(f"Seeds must be whole numbers from 0 to {MAX_SEED}, not {seed!r}.", field=field)
        if not 0 <= seed <= MAX_SEED:
            raise error(f"Seed {seed} is out of range: seeds are whole numbers from 0 to {MAX_SEED}.", field=field)
    seen = set()
    for seed in seeds:
        if seed in seen:
            raise error(f"Seed {seed} is listed twice; list each seed once.", field=field)
        seen.add(seed)
    return seeds


def _check_size(value, *, label: str, field: str, default: int, largest: int) -> int:
    if value is None:
        return default
    if not _is_whole(value) or not 1 <= value <= largest:
        raise BatchError(f"The {label} must be a whole number from 1 to {largest:,}, not {value!r}.", field=field)
    return value


def check_model_name(name, error=GenerationError) -> str:
    return check_slug_name(name, "model", error=error, field="name", example="sd15-base", max_length=MAX_NAME_LENGTH)


# --- Model registry ---------------------------------------------------------------------------


def register_model(
    *,
    name: str,
    pipeline_path: str,
    steps: int | None = None,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str = "default",
    description: str = "",
    source: str = TextToImageModel.Source.REGISTERED,
    parent: TextToImageModel | None = None,
    registered_by=None,
    inspected: pipelines.PipelineInfo | None = None,
) -> TextToImageModel:
    """Validate a local diffusers pipeline directory and record it with its weights' fingerprint.

    Width and height default to the pipeline's native resolution (512 for SD 1.x,
    768 for SD 2.x, 1024 for SDXL), read from its configs. ``inspected`` is the
    result of an inspection the caller just made (hashing SDXL takes seconds).
    """
    name = check_model_name(name, ModelRegistrationError)
    check_generation_parameters(
        {"steps": steps, "guidance_scale": guidance_scale, "width": width, "height": height, "scheduler": scheduler},
        ModelRegistrationError,
        blank_hint="; leave it out to use the pipeline's native resolution",
    )
    if not isinstance(pipeline_path, str) or not pipeline_path.strip():
        raise ModelRegistrationError(
            "Give the pipeline directory: the folder diffusers' save_pretrained wrote (it holds model_index.json).",
            field="pipeline_path",
        )
    if TextToImageModel.objects.filter(name=name).exists():
        raise ModelRegistrationError(f"A model named {name!r} already exists; choose another name.", field="name")
    try:
        info = inspected or pipelines.inspect_pipeline_directory(pipeline_path.strip())
    except pipelines.PipelineDirectoryError as exc:
        raise ModelRegistrationError(str(exc), field="pipeline_path") from None
    native = info.native_resolution or 512
    model = TextToImageModel(
        name=name,
        description=description,
        pipeline_path=str(info.path.resolve()),
        pipeline_class=info.class_name,
        weights_fingerprint=info.fingerprint,
        weights_bytes=info.total_bytes,
        default_steps=steps if steps is not None else 30,
        default_guidance_scale=guidance_scale if guidance_scale is not None else 7.5,
        default_width=native if width is None else width,
        default_height=native if height is None else height,
        default_scheduler=scheduler,
        source=source,
        parent=parent,
        registered_by=registered_by,
    )
    try:
        model.full_clean()
    except ValidationError as exc:
        errors = [
            (None if k == "__all__" else k.removeprefix("default_"), " ".join(v)) for k, v in exc.message_dict.items()
        ]
        raise ModelRegistrationError("; ".join(m for _, m in errors), errors=errors) from None
    try:
        model.save()
    except IntegrityError:
        raise ModelRegistrationError(
            f"A model named {name!r} already exists; choose another name.", field="name"
        ) from None
    logger.info("registered model %s (%s, %s)", name, info.class_name, info.fingerprint[:12])
    return model


# --- Prompt sets --------------------------------------------------------------------------------


def import_prompt_set(
    *, name: str, data: bytes, filename: str, format: str | None = None, description: str = ""
) -> tuple[PromptSet, ParsedPromptFile]:
    """Import a whole prompt file or nothing. Raises PromptFileError listing every problem."""
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise PromptFileError(["the prompt set needs a name"], field="name")
    if len(name) > 200:
        raise PromptFileError([f"the name is {len(name)} characters long; use at most 200"], field="name")
    if PromptSet.objects.filter(name=name).exists():
        raise PromptFileError([f"a prompt set named {name!r} already exists; choose another name"], field="name")
    parsed = parse_prompt_file(
        data,
        filename,
        format=format,
        max_bytes=settings.NEEDLE_PROMPT_FILE_MAX_BYTES,
        max_chars=settings.NEEDLE_PROMPT_MAX_CHARS,
    )
    try:
        with transaction.atomic():
            prompt_set = PromptSet.objects.create(
                name=name,
                description=description,
                source_filename=filename[-500:],
                source_sha256=hashlib.sha256(data).hexdigest(),
            )
            Prompt.objects.bulk_create(
                Prompt(
                    prompt_set=prompt_set,
                    position=i,
                    text=p.text,
                    category=p.category[:200],
                    challenge=p.challenge[:200],
                    note=p.note,
                )
                for i, p in enumerate(parsed.prompts)
            )
    except IntegrityError:
        raise PromptFileError(
            [f"a prompt set named {name!r} already exists; choose another name"], field="name"
        ) from None
    return prompt_set, parsed


# --- Batches --------------------------------------------------------------------------------------


def create_batch(
    *,
    models: list[TextToImageModel],
    prompt_set: PromptSet,
    seeds: list[int],
    parameters: dict | None = None,
    name: str = "",
    inference_batch_size: int | None = None,
    chunk_size: int | None = None,
    created_by=None,
    reuse: bool = False,
) -> GenerationBatch:
    """Freeze a batch: each model's parameters are its defaults overridden by ``parameters``.

    Give explicit parameters to compare models at identical settings; the
    prompt and seed are always shared, so a pair differs only by model (and
    by any default the models do not share). With ``reuse``, an existing batch
    of the same name, prompt set, seeds, models and parameters is returned
    instead of a new one (scripts that run again, such as the demo).
    """
    models = list(models)
    if not models:
        raise BatchError("Choose at least one model.", field="models")
    seen = set()
    for model in models:
        if model.pk in seen:
            raise BatchError(f"Model {model.name!r} is listed twice; list each model once.", field="models")
        seen.add(model.pk)
    seeds = check_seeds(seeds, BatchError)
    if not prompt_set.prompts.exists():
        raise BatchError(f"Prompt set {prompt_set.name!r} has no prompts.", field="prompt_set")
    overrides = {k: v for k, v in (parameters or {}).items() if v is not None}
    unknown = set(overrides) - {"steps", "guidance_scale", "width", "height", "scheduler"}
    if unknown:
        raise BatchError(
            f"Unknown generation parameters: {', '.join(sorted(unknown))}; give steps, guidance_scale, "
            "width, height or scheduler."
        )
    check_generation_parameters(overrides, BatchError, blank_hint="; leave it out for each model's default")
    inference_batch_size = _check_size(
        inference_batch_size,
        label="inference batch size (images per forward pass)",
        field="inference_batch_size",
        default=settings.NEEDLE_INFERENCE_BATCH_SIZE,
        largest=MAX_INFERENCE_BATCH_SIZE,
    )
    chunk_size = _check_size(
        chunk_size,
        label="chunk size (images per task)",
        field="chunk_size",
        default=settings.NEEDLE_CHUNK_SIZE,
        largest=MAX_CHUNK_SIZE,
    )
    # A chunk holds whole forward passes, so a redone chunk regroups images exactly as before.
    chunk_size = max(inference_batch_size, chunk_size - chunk_size % inference_batch_size)

    resolved = []
    for model in models:
        params = {**model.default_parameters, **overrides}
        check_generation_parameters(params, BatchError)  # a model's stored defaults could predate these checks
        resolved.append((model, canonical_parameters(params)))

    if reuse:
        existing = _same_batch(name, prompt_set, seeds, resolved)
        if existing is not None:
            return existing
    with transaction.atomic():
        batch = GenerationBatch.objects.create(
            name=name,
            prompt_set=prompt_set,
            seeds=seeds,
            inference_batch_size=inference_batch_size,
            chunk_size=chunk_size,
            created_by=created_by,
        )
        BatchModel.objects.bulk_create(
            BatchModel(batch=batch, model=m, parameters=p, parameters_hash=parameters_hash(p)) for m, p in resolved
        )
    return batch


def _same_batch(name: str, prompt_set: PromptSet, seeds: list[int], resolved: list[tuple]) -> GenerationBatch | None:
    """The oldest batch named ``name`` that stands for exactly these images, if any."""
    wanted = {(model.pk, parameters_hash(params)) for model, params in resolved}
    for batch in GenerationBatch.objects.filter(name=name, prompt_set=prompt_set).order_by("pk"):
        if batch.seeds == seeds and set(batch.batch_models.values_list("model_id", "parameters_hash")) == wanted:
            return batch
    return None


def dispatch_batch(batch: GenerationBatch) -> int:
    """Queue a Celery task for every chunk that still misses images; returns how many.

    Safe to call again at any time (after a crash, to resume): finished
    chunks are not queued, and a chunk queued twice does its work once.
    """
    keys = batch_keys(batch)
    todo = []
    for bm in batch.batch_models.all():
        existing = set(images_for(bm, batch).values_list("prompt_id", "seed"))
        for index in range(chunk_count(batch, len(keys))):
            chunk = keys[index * batch.chunk_size : (index + 1) * batch.chunk_size]
            if any((k.prompt_id, k.seed) not in existing for k in chunk):
                todo.append((batch.pk, bm.model_id, index))
    GenerationBatch.objects.filter(pk=batch.pk).update(
        dispatched_at=timezone.now(), heartbeat_at=None, error="", completed_at=None
    )
    batch.refresh_from_db()

    for args in todo:
        enqueue_on_commit("generation.tasks.generate_chunk", *args)
    if not todo:
        mark_complete_if_done(batch.pk)
    return len(todo)


def mark_complete_if_done(batch_id: int) -> bool:
    batch = GenerationBatch.objects.get(pk=batch_id)
    if batch.completed_at is None and batch_progress(batch).complete:
        GenerationBatch.objects.filter(pk=batch_id, completed_at__isnull=True).update(completed_at=timezone.now())
        return True
    return False


def record_batch_failure(batch_id: int, message: str) -> None:
    GenerationBatch.objects.filter(pk=batch_id).update(error=message[:5000])


# --- Generating ---------------------------------------------------------------------------------------

_pipeline_cache: pipelines.PipelineCache | None = None


def pipeline_cache() -> pipelines.PipelineCache:
    """The worker process's pipelines: each model loads once per process."""
    global _pipeline_cache
    if _pipeline_cache is None:
        _pipeline_cache = pipelines.PipelineCache(settings.NEEDLE_PIPELINE_CACHE_SIZE)
    return _pipeline_cache


@dataclass(frozen=True)
class ChunkResult:
    passes_run: int
    passes_skipped: int


def generate_chunk(batch_id: int, model_id: int, chunk_index: int) -> ChunkResult:
    """Make the missing images of one chunk. Idempotent.

    The chunk is cut into forward passes the same way every time; a pass whose
    images all exist is skipped, and any other pass is run whole, so a redone
    image is computed in the same company as the first time and comes out
    byte-identical. Images of a pass are stored, then recorded in one
    transaction; the unique key turns a concurrent duplicate into a no-op.
    Storing a pass (PNG encoding, fsync) runs on a helper thread while the
    next pass renders, so the accelerator does not wait for the disk.
    """
    batch = GenerationBatch.objects.select_related("prompt_set").filter(pk=batch_id).first()
    if batch is None:
        logger.warning("batch %s no longer exists; chunk %s skipped", batch_id, chunk_index)
        return ChunkResult(0, 0)
    bm = BatchModel.objects.select_related("model").filter(batch_id=batch_id, model_id=model_id).first()
    if bm is None:
        raise BatchError(f"Model {model_id} is not part of batch {batch_id}.")
    report_alive(batch_id)
    keys = batch_keys(batch)[chunk_index * batch.chunk_size : (chunk_index + 1) * batch.chunk_size]
    existing = set(
        images_for(bm, batch).filter(prompt_id__in={k.prompt_id for k in keys}).values_list("prompt_id", "seed")
    )
    passes = [keys[i : i + batch.inference_batch_size] for i in range(0, len(keys), batch.inference_batch_size)]
    pending = [p for p in passes if any((k.prompt_id, k.seed) not in existing for k in p)]
    if pending:
        model = bm.model
        loaded = pipeline_cache().get(
            model.pipeline_path,
            model.weights_fingerprint,
            device=settings.NEEDLE_DEVICE,
            dtype=settings.NEEDLE_TORCH_DTYPE,
        )
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="needle-store") as store:
            previous = None
            for keys_in_pass in pending:
                images, seconds = pipelines.render(
                    loaded, [k.prompt_text for k in keys_in_pass], [k.seed for k in keys_in_pass], bm.parameters
                )
                if previous is not None:
                    record_images(previous.result())
                    report_alive(batch_id)
                previous = store.submit(store_pass, batch.pk, bm, loaded, keys_in_pass, images, seconds, existing)
            record_images(previous.result())
            report_alive(batch_id)
    mark_complete_if_done(batch_id)
    return ChunkResult(len(pending), len(passes) - len(pending))


def report_alive(batch_id: int) -> None:
    """A worker is on the batch now (see selectors.is_stalled)."""
    GenerationBatch.objects.filter(pk=batch_id).update(heartbeat_at=timezone.now())


def store_pass(
    batch_id, bm: BatchModel, loaded, keys: list[ImageKey], images, seconds: float, existing: set
) -> list[GeneratedImage]:
    """Write a pass's images to storage (no database access: safe on a helper thread); returns unsaved rows."""
    storage = GeneratedImage._meta.get_field("file").storage
    rows = []
    for key, pixels in zip(keys, images):
        if (key.prompt_id, key.seed) in existing:
            continue
        png = pipelines.encode_png(pixels)
        digest = hashlib.sha256(png).hexdigest()
        name = storage.save(content_addressed_name(digest), ContentFile(png))
        rows.append(
            GeneratedImage(
                model_id=bm.model_id,
                prompt_id=key.prompt_id,
                seed=key.seed,
                parameters=bm.parameters,
                parameters_hash=bm.parameters_hash,
                weights_fingerprint=loaded.fingerprint,
                file=name,
                sha256=digest,
                width=pixels.shape[1],
                height=pixels.shape[0],
                seconds=seconds / len(keys),
                device=loaded.device,
                batch_id=batch_id,
            )
        )
    return rows


def record_images(rows: list[GeneratedImage]) -> None:
    """Record stored images in one transaction; a key someone else recorded first is left as it is."""
    with transaction.atomic():
        GeneratedImage.objects.bulk_create(rows, ignore_conflicts=True)


def generate_batch_in_process(batch: GenerationBatch) -> int:
    """Run a whole batch in this process, without Celery (notebooks, reference runs); returns passes run."""
    n_chunks = chunk_count(batch)
    return sum(
        generate_chunk(batch.pk, bm.model_id, index).passes_run
        for bm in batch.batch_models.all()
        for index in range(n_chunks)
    )


def parse_seeds(spec: str, error=BatchError, *, field: str = "seeds") -> list[int]:
    """'0-3, 10, 12' -> [0, 1, 2, 3, 10, 12]; raises ``error`` saying what to write instead."""
    if not isinstance(spec, str):
        raise error(f"Write seeds as text, e.g. '0-3, 10', not {spec!r}.", field=field)
    seeds: list[int] = []
    for part in spec.replace(" ", ",").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
            else:
                lo_i = hi_i = int(part)
        except ValueError:
            raise error(
                f"Cannot read seeds {part!r}: write whole numbers (integers) and ranges, e.g. '0-3, 10'.", field=field
            ) from None
        if hi_i < lo_i:
            raise error(
                f"Seed range {part!r} runs backwards: write the lower seed first, e.g. '{hi_i}-{lo_i}'.", field=field
            )
        if len(seeds) + hi_i - lo_i + 1 > MAX_SEEDS:
            raise error(
                f"{part!r} makes {len(seeds) + hi_i - lo_i + 1:,} seeds: at most {MAX_SEEDS:,} are allowed in "
                "one batch or campaign (every model renders every prompt once per seed).",
                field=field,
            )
        seeds.extend(range(lo_i, hi_i + 1))
    if not seeds:
        raise error("Give at least one seed, e.g. '0-3'.", field=field)
    return check_seeds(seeds, error, field=field)


def stale_partial_images(older_than_seconds: float = 3600) -> list[str]:
    """The half-written files that killed workers left beside the images, untouched for ``older_than_seconds``."""
    if older_than_seconds < 60:
        raise BatchError("Only files older than a minute can be removed safely: a worker may be writing the rest.")
    return [str(path) for path in storages["images"].stale_partial_files(older_than_seconds)]


def remove_stale_partial_images(older_than_seconds: float = 3600) -> list[str]:
    """Delete the half-written files that killed workers left beside the images; returns their paths.

    Safe while workers run: a file being written is younger than any sensible ``older_than_seconds``
    (one image takes milliseconds to write), and a finished image is never a ``.part`` file.
    """
    removed = []
    for path in stale_partial_images(older_than_seconds):
        Path(path).unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("removed %d half-written image file(s) left by killed workers", len(removed))
    return removed
