"""Reads: which images a batch stands for, and how far along it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .models import BatchModel, GeneratedImage, GenerationBatch


@dataclass(frozen=True)
class ImageKey:
    prompt_id: int
    prompt_text: str
    seed: int


@dataclass(frozen=True)
class ModelProgress:
    model_name: str
    done: int
    total: int


@dataclass(frozen=True)
class BatchProgress:
    done: int
    total: int
    per_model: list[ModelProgress]

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def percent(self) -> int:
        return int(100 * self.fraction)

    @property
    def complete(self) -> bool:
        return self.done >= self.total


def batch_keys(batch: GenerationBatch) -> list[ImageKey]:
    """Every (prompt, seed) of the batch, in the fixed order chunks are cut from."""
    prompts = list(batch.prompt_set.prompts.order_by("position").values_list("id", "text"))
    return [ImageKey(pid, text, int(seed)) for pid, text in prompts for seed in batch.seeds]


def chunk_count(batch: GenerationBatch, n_keys: int | None = None) -> int:
    n = n_keys if n_keys is not None else batch.prompt_set.prompts.count() * len(batch.seeds)
    return (n + batch.chunk_size - 1) // batch.chunk_size


def images_for(batch_model: BatchModel, batch: GenerationBatch):
    """The images that belong to this model's part of the batch (made by it or by earlier batches)."""
    return GeneratedImage.objects.filter(
        model_id=batch_model.model_id,
        parameters_hash=batch_model.parameters_hash,
        prompt__prompt_set_id=batch.prompt_set_id,
        seed__in=batch.seeds,
    )


def batch_progress(batch: GenerationBatch) -> BatchProgress:
    per_prompt = len(batch.seeds)
    n_prompts = batch.prompt_set.prompts.count()
    per_model = []
    for bm in batch.batch_models.select_related("model"):
        per_model.append(ModelProgress(bm.model.name, images_for(bm, batch).count(), n_prompts * per_prompt))
    return BatchProgress(sum(m.done for m in per_model), sum(m.total for m in per_model), per_model)


def last_sign_of_life(batch: GenerationBatch) -> datetime | None:
    """When the batch was last queued or a worker last reported on it."""
    times = [t for t in (batch.dispatched_at, batch.heartbeat_at) if t is not None]
    return max(times) if times else None


def is_stalled(batch: GenerationBatch, progress: BatchProgress | None = None, now: datetime | None = None) -> bool:
    """Queued, not complete, not failed, and no worker has reported on it for NEEDLE_BATCH_STALL_SECONDS.

    Workers report when they start a chunk and after every forward pass, so a batch whose worker died (on the demo's
    filesystem broker nothing redelivers its chunks) or that no worker consumes stops here instead of showing
    "running" forever. Resuming (dispatch_batch) queues only the missing images, so it is safe even if a slow worker
    is still busy with it.
    """
    if batch.error or batch.dispatched_at is None:
        return False
    progress = progress or batch_progress(batch)
    if progress.complete:
        return False
    quiet = (now or timezone.now()) - last_sign_of_life(batch)
    return quiet > timedelta(seconds=settings.NEEDLE_BATCH_STALL_SECONDS)


def stalled_message(batch: GenerationBatch, progress: BatchProgress, now: datetime | None = None) -> str:
    quiet = int(((now or timezone.now()) - last_sign_of_life(batch)).total_seconds())
    return (
        f"{batch} stalled at {progress.done}/{progress.total}: no worker has reported on it for {quiet // 60} min "
        f"{quiet % 60} s (its worker may have died, or no worker consumes the 'generation' queue). Resume it to "
        f"queue the missing images: manage.py generate --resume {batch.pk}, or the resume button on its page."
    )


def batch_status(batch: GenerationBatch, progress: BatchProgress | None = None) -> str:
    if batch.error:
        return "failed"
    progress = progress or batch_progress(batch)
    if progress.complete:
        return "complete"
    if is_stalled(batch, progress):
        return "stalled"
    return "running" if batch.dispatched_at else "created"


PAIRS_PER_PAGE = 48


def image_pairs(batch: GenerationBatch, page: int = 1, per_page: int = PAIRS_PER_PAGE):
    """One page of rows (prompt, seed, [image or None per model]) for side-by-side viewing by researchers.

    Pages follow the batch's key order (prompts by position x seeds); a page past the end is empty.
    """
    bms = list(batch.batch_models.select_related("model"))
    q = Q()
    for bm in bms:
        q |= Q(model_id=bm.model_id, parameters_hash=bm.parameters_hash)
    start = (max(page, 1) - 1) * per_page
    keys = batch_keys(batch)[start : start + per_page]
    if not bms or not keys:
        return bms, []
    images = GeneratedImage.objects.filter(q, prompt_id__in={k.prompt_id for k in keys}, seed__in=batch.seeds)
    by_key = {(im.model_id, im.prompt_id, im.seed): im for im in images}
    rows = [(k, [by_key.get((bm.model_id, k.prompt_id, k.seed)) for bm in bms]) for k in keys]
    return bms, rows
