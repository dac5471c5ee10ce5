"""Reads: which images a batch stands for, and how far along it is."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q

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


def batch_status(batch: GenerationBatch, progress: BatchProgress | None = None) -> str:
    if batch.error:
        return "failed"
    progress = progress or batch_progress(batch)
    if progress.complete:
        return "complete"
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
