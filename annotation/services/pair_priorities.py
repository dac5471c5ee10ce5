"""Adaptive pairs: the order in which an all-pairs campaign's model pairs get votes.

The assignment engine claims open items in ``(pair_priority, remaining, id)`` order, so the items of the pair with
priority 0 are taken first (depth-first within the pair), as far as the engine's own rules allow (k cap, leases, no
repeats, placement balance, gold schedule, prompt spread). A uniform campaign keeps every priority at 0. Which pairs
are most wanted is a statistical question, answered by analysis from the votes so far; this module only writes
its answer.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q

from core.errors import CONFLICT

from ..models import Campaign, ComparisonItem
from .errors import AnnotationError

logger = logging.getLogger(__name__)


def adaptive_pairs_possible(n_models: int, pairing: str) -> bool:
    """Whether adaptive pair selection means anything: three or more models, all pairs compared."""
    return n_models >= 3 and pairing == Campaign.Pairing.ALL_PAIRS


def set_pair_priorities(campaign: Campaign, ranked_pairs: list[tuple[int, int]]) -> int:
    """Give the items of each model pair its rank in ``ranked_pairs`` (0: most wanted) as their ``pair_priority``;
    pairs left out come after all ranked ones. Pairs are unordered (an item's model A may be either model).

    Returns how many items changed. Idempotent. It never waits on raters: an item a rater's claim or vote holds
    at this instant keeps its old priority until the next call (the engine's guarantees do not depend on the
    priorities, only the order among items a rater may take does).
    """
    if campaign.pair_selection != Campaign.PairSelection.ADAPTIVE:
        raise AnnotationError(
            f"Campaign {campaign.name!r} selects pairs uniformly; only an adaptive campaign has pair priorities.",
            field="pair_selection",
            code=CONFLICT,
        )
    models = set(campaign.campaign_models.values_list("model_id", flat=True))
    rank: dict[frozenset, int] = {}
    for first, second in ranked_pairs:
        first, second = getattr(first, "pk", first), getattr(second, "pk", second)
        if first not in models or second not in models or first == second:
            raise AnnotationError(
                f"({first}, {second}) is not a pair of campaign {campaign.name!r}'s models.", field="ranked_pairs"
            )
        rank.setdefault(frozenset((first, second)), len(rank))
    last = len(rank)
    changed = 0
    regular = ComparisonItem.objects.regular().filter(campaign=campaign)
    with transaction.atomic():
        for pair, priority in sorted(rank.items(), key=lambda kv: kv[1]):
            a, b = sorted(pair)
            same_pair = Q(image_a__model_id=a, image_b__model_id=b) | Q(image_a__model_id=b, image_b__model_id=a)
            changed += _write(regular.filter(same_pair), priority)
        if last < len(models) * (len(models) - 1) // 2:
            ranked = Q()
            for a, b in map(sorted, rank):
                ranked |= Q(image_a__model_id=a, image_b__model_id=b) | Q(image_a__model_id=b, image_b__model_id=a)
            changed += _write(regular.exclude(ranked) if rank else regular, last)
    return changed


def _write(items, priority: int) -> int:
    # Locks only rows no rater holds (SKIP LOCKED), in id order, so this never waits on a claim or a vote and
    # cannot deadlock with them; the rows it skipped are caught up by the next call.
    ids = list(
        items.exclude(pair_priority=priority)
        .select_for_update(skip_locked=True, of=("self",))
        .order_by("id")
        .values_list("id", flat=True)
    )
    if ids:
        ComparisonItem.objects.filter(id__in=ids).update(pair_priority=priority)
    return len(ids)


def reset_pair_priorities(campaign: Campaign) -> int:
    """Every item of ``campaign`` back to priority 0 (uniform selection). Idempotent."""
    return ComparisonItem.objects.filter(campaign=campaign).exclude(pair_priority=0).update(pair_priority=0)
