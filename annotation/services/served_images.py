"""What raters receive: every image padded to one byte length per campaign, so size and layout name no model."""

from __future__ import annotations

import logging

from django.core.files.storage import storages
from django.db.models import Q

from generation.models import GeneratedImage
from generation.pipelines import PNG_CHUNK_OVERHEAD, padded_png

from ..models import (
    Assignment,
    Campaign,
    ComparisonItem,
    GoldImage,
)

logger = logging.getLogger(__name__)

# --- What raters receive ---------------------------------------------------------------------
#
# Images are stored as their encoder wrote them, and PNG sizes differ by model (one model's images compressed
# larger in 18 of 18 demo pairs) and by gold kind (a blurred copy is a third of the size). So every image a rater
# receives is re-laid out and padded to one length per campaign (generation.pipelines.padded_png): its length,
# headers and chunk layout are the same for both models and for gold, and only the pixels differ.


def served_image_length(campaign: Campaign, *, refresh: bool = False) -> int:
    """The one byte length of every image ``campaign``'s raters receive; computed once (file sizes), then stored.

    The longest image of the campaign, gold included, plus the padding chunk's overhead, so every image fits.
    """
    if campaign.served_image_bytes and not refresh:
        return campaign.served_image_bytes
    items = ComparisonItem.objects.filter(campaign=campaign)
    names = set(
        GeneratedImage.objects.filter(
            Q(pk__in=items.values("image_a_id")) | Q(pk__in=items.values("image_b_id"))
        ).values_list("file", flat=True)
    )
    names |= set(GoldImage.objects.filter(pk__in=items.values("gold_image_id")).values_list("file", flat=True))
    storage = storages["images"]
    longest = max((storage.size(name) for name in names), default=0)
    length = max(longest + PNG_CHUNK_OVERHEAD, campaign.served_image_bytes)  # never shrinks once served
    if length != campaign.served_image_bytes:
        Campaign.objects.filter(pk=campaign.pk).update(served_image_bytes=length)
        campaign.served_image_bytes = length
    return length


def shown_image_file(assignment: Assignment, side: str):
    """The file shown on ``side`` of a task: the placement is the assignment's, so the URL never says which model."""
    item = assignment.item
    file_a = item.image_a.file
    # A gold item shows its wrong answer as its B side (image_b repeats image_a).
    file_b = item.gold_image.file if item.gold_image_id else item.image_b.file
    return file_a if (side == "left") == assignment.a_on_left else file_b


def rater_image(campaign: Campaign, assignment: Assignment, side: str) -> bytes:
    """The PNG bytes a rater receives for one side of a task: the stored pixels, padded to the campaign's length."""
    return padded_image(shown_image_file(assignment, side).name, served_image_length(campaign), campaign.pk)


def padded_image(file_name: str, length: int, campaign_id: int) -> bytes:
    """The stored image ``file_name`` padded to ``length`` bytes (the campaign's served length when it was linked).

    Read from storage on every request, for every image alike, so no image is served from a cache that is warm
    for one model or for gold only. Raises FileNotFoundError for a missing file.
    """
    with storages["images"].open(file_name, "rb") as handle:
        data = handle.read()
    try:
        return padded_png(data, length)
    except ValueError:
        # Longer than the stored length: items were added after it was computed. Recompute (it only grows).
        campaign = Campaign.objects.get(pk=campaign_id)
        return padded_png(data, served_image_length(campaign, refresh=True))
