"""Comparison items: the pairs a launch builds from the generated images, and the gold items mixed among them."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from PIL import Image, ImageFilter

from generation import selectors as generation_selectors
from generation.pipelines import encode_png
from generation.storage import content_addressed_name

from ..models import (
    Campaign,
    ComparisonItem,
    Criterion,
    GoldImage,
)
from .errors import AnnotationError
from .served_images import served_image_length

logger = logging.getLogger(__name__)


def build_items(campaign: Campaign, batch) -> int:
    """Create the comparison items (and gold items) from a complete generation batch; idempotent.

    Returns the number of regular items created.
    """
    progress = generation_selectors.batch_progress(batch)
    if not progress.complete:
        raise AnnotationError(f"The images are not ready yet ({progress.done} of {progress.total}).")
    bms = {bm.model_id: bm for bm in batch.batch_models.all()}
    images = {}
    for model in campaign.ordered_models():
        if model.pk not in bms:
            raise AnnotationError(f"The generation batch has no images of model {model.name!r}.")
        for image in generation_selectors.images_for(bms[model.pk], batch):
            images[model.pk, image.prompt_id, image.seed] = image
    keys = _human_keys(campaign, generation_selectors.batch_keys(batch))
    images = {key: image for key, image in images.items() if key[1] in {k.prompt_id for k in keys}}
    pairs = campaign.model_pairs()
    criteria = list(campaign.criteria.all())
    rows = [
        ComparisonItem(
            campaign=campaign,
            criterion=criterion,
            remaining=criterion.votes_per_item,
            image_a=images[a.pk, k.prompt_id, k.seed],
            image_b=images[b.pk, k.prompt_id, k.seed],
        )
        for criterion in criteria
        for a, b in pairs
        for k in keys
    ]
    before = campaign.items.regular().count()
    ComparisonItem.objects.bulk_create(rows, ignore_conflicts=True)
    created = campaign.items.regular().count() - before
    _build_gold_items(campaign, criteria, images, pairs)
    served_image_length(campaign, refresh=True)
    return created


def human_prompts(campaign: Campaign, prompt_ids) -> list[int]:
    """The prompts whose comparisons get human votes: ``human_share`` of them, drawn at random once and recorded.

    Seeded by the campaign's id (``random.Random(f"human_share:{id}")``), drawn the first time the items are built
    and kept in ``Campaign.human_prompt_ids`` (a rebuild reuses them), so the draw can be checked and does not depend
    on any vote or judge score: prediction-powered inference needs humans on a random subset. At least one prompt.
    """
    prompt_ids = sorted(set(prompt_ids))
    if campaign.human_prompt_ids is not None:
        return [p for p in campaign.human_prompt_ids if p in set(prompt_ids)]
    if campaign.human_share >= 1:
        chosen = prompt_ids
    else:
        count = max(1, math.ceil(campaign.human_share * len(prompt_ids) - 1e-9))
        chosen = sorted(random.Random(f"human_share:{campaign.pk}").sample(prompt_ids, count))
    Campaign.objects.filter(pk=campaign.pk).update(human_prompt_ids=chosen)
    campaign.human_prompt_ids = chosen
    return chosen


def _human_keys(campaign: Campaign, keys) -> list:
    """The (prompt, seed) keys humans vote on, their prompts in a seeded random order.

    Items are created in this order and the engine fills them depth-first by id, so prompts complete in random
    order: what lets analysis watch the win rate prompt by prompt with an anytime-valid confidence sequence (a
    prompt set sorted by category would otherwise arrive category by category).
    """
    chosen = set(human_prompts(campaign, [k.prompt_id for k in keys]))
    order = sorted(chosen)
    random.Random(f"prompt_order:{campaign.pk}").shuffle(order)
    rank = {prompt_id: i for i, prompt_id in enumerate(order)}
    return sorted(
        (k for k in keys if k.prompt_id in chosen), key=lambda k: rank[k.prompt_id]
    )  # stable: seeds keep their order


def gold_items_needed(regular_items: int, gold_share: float) -> int:
    """Enough gold items that a rater who judges every regular item still meets ``gold_share`` of gold tasks."""
    if gold_share <= 0 or regular_items == 0:
        return 0
    return min(regular_items, max(3, math.ceil(regular_items * gold_share / (1 - gold_share))))


def degrade(png_bytes: bytes, degradation: str) -> bytes:
    """A copy any attentive rater rejects: blurred to a smear, or buried in noise. Deterministic."""
    image = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    if degradation == GoldImage.Degradation.BLUR:
        degraded = image.filter(ImageFilter.GaussianBlur(radius=max(2.0, max(image.size) / 10)))
    else:
        seed = int.from_bytes(hashlib.sha256(png_bytes).digest()[:8], "big")
        noise = np.random.default_rng(seed).integers(0, 256, size=(image.height, image.width, 3), dtype=np.uint8)
        degraded = Image.blend(image, Image.fromarray(noise, "RGB"), 0.65)
    return encode_png(np.asarray(degraded))


def _degraded_gold(source, degradation: str) -> GoldImage:
    gold = GoldImage.objects.filter(source=source, degradation=degradation).first()
    if gold is None:
        with source.file.open("rb") as handle:
            data = degrade(handle.read(), degradation)
        sha = hashlib.sha256(data).hexdigest()
        name = storages["images"].save(content_addressed_name(sha), ContentFile(data))
        gold, _ = GoldImage.objects.get_or_create(
            source=source, degradation=degradation, defaults={"file": name, "sha256": sha}
        )
    return gold


def _other_prompt_gold(source, decoy) -> GoldImage:
    # One per source image: a later campaign with the same source image reuses the decoy chosen first. It is still
    # another prompt's image of the same seed (what makes it the wrong answer), and is padded like every image.
    gold, _ = GoldImage.objects.get_or_create(
        source=source,
        degradation=GoldImage.Degradation.OTHER_PROMPT,
        defaults={"file": decoy.file.name, "sha256": decoy.sha256},
    )
    return gold


class _Decoys:
    """The images that can be a source image's wrong answer on text faithfulness, best first.

    Another prompt's image with the same seed, from a model the source's model is compared with: to the rater
    the gold pair looks like any pair (two models, one seed), only the text does not match one side. Prompts of
    another category come first, so the mismatch is plain.
    """

    def __init__(self, images: dict, pairs, categories: dict):
        self.categories = categories
        self.partners: dict[int, set[int]] = {}
        for a, b in pairs:
            self.partners.setdefault(a.pk, set()).add(b.pk)
            self.partners.setdefault(b.pk, set()).add(a.pk)
        self.by_seed: dict[int, list] = {}
        for (model_id, prompt_id, seed), image in sorted(images.items()):
            self.by_seed.setdefault(seed, []).append((model_id, prompt_id, image))

    def of(self, source) -> list:
        partners = self.partners.get(source.model_id, set())
        others = [im for m, p, im in self.by_seed.get(source.seed, ()) if p != source.prompt_id and m in partners]
        other_category = [
            im for im in others if self.categories.get(im.prompt_id) != self.categories.get(source.prompt_id)
        ]
        return other_category or others


def _build_gold_items(campaign: Campaign, criteria, images: dict, pairs) -> None:
    """Gold items per criterion: a degraded copy for visual appeal, another prompt's image for text faithfulness.

    A blurred copy shows the same things as the original, so "which matches the text better?" has no right
    answer between them; another prompt's image plainly does not match the text shown.
    """
    rng = random.Random(f"gold:{campaign.pk}")  # the same campaign always gets the same gold items
    campaign_images = [im for _, im in sorted(images.items())]
    for criterion in criteria:
        regular = campaign.items.regular().filter(criterion=criterion).count()
        needed = (
            gold_items_needed(regular, campaign.gold_share) - campaign.items.gold().filter(criterion=criterion).count()
        )
        if needed <= 0:
            continue
        if criterion.criterion == Criterion.TEXT_FAITHFULNESS:
            decoys = _Decoys(images, pairs, dict(campaign.prompt_set.prompts.values_list("id", "category")))
            golds = []
            for source in rng.sample(campaign_images, len(campaign_images)):  # a shuffled copy
                if len(golds) == needed:
                    break
                candidates = decoys.of(source)
                if candidates:  # none with a one-prompt set: that campaign has no faithfulness gold
                    golds.append((source, _other_prompt_gold(source, rng.choice(candidates))))
        else:
            sources = rng.sample(campaign_images, min(needed, len(campaign_images)))
            golds = [
                (source, _degraded_gold(source, (GoldImage.Degradation.BLUR, GoldImage.Degradation.NOISE)[i % 2]))
                for i, source in enumerate(sources)
            ]
        for source, gold in golds:
            ComparisonItem.objects.get_or_create(
                criterion=criterion,
                gold_image=gold,
                defaults={"campaign": campaign, "image_a": source, "image_b": source},
            )
