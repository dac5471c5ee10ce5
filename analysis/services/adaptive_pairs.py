"""Adaptive pairs: rank an adaptive campaign's model pairs by how much their next votes narrow the ranking.

The statistics are :func:`analysis.stats.adaptive_pairs.next_pair_priorities` (pure): the Bradley–Terry fit of the
win matrix and, per pair, the expected fall of the adjacent gaps' sum(var / gap^2) from one more vote. Here the
win matrix is built from the campaign's counting votes on its primary criterion (its first: visual appeal when it
has it), ties (and "both" / "neither") as half a win each way, and the ranking is written through
``annotation.services.set_pair_priorities``, which the assignment engine follows. Run every 30 s by the beat task
``analysis.tasks.refresh_adaptive_pairs``; never in a rater's request.
"""

from __future__ import annotations

import logging

import numpy as np
from django.db.models import Count

from annotation import services as annotation_services
from annotation.models import Campaign, CampaignCriterion, Vote

from ..stats.adaptive_pairs import next_pair_priorities

logger = logging.getLogger(__name__)


def primary_criterion(campaign: Campaign) -> CampaignCriterion | None:
    """The criterion the adaptive ranking follows: the campaign's first (visual appeal when it has it)."""
    return campaign.criteria.order_by("id").first()


def win_matrix(campaign: Campaign, criterion: CampaignCriterion, model_ids: list[int]) -> np.ndarray:
    """(K x K) counting-vote wins of model i over model j on ``criterion``, ties as half a win each way."""
    index = {pk: i for i, pk in enumerate(model_ids)}
    wins = np.zeros((len(model_ids), len(model_ids)))
    rows = (
        Vote.objects.counting()
        .filter(assignment__campaign=campaign, assignment__item__criterion=criterion)
        .values("assignment__item__image_a__model_id", "assignment__item__image_b__model_id", "winner")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        a = index[row["assignment__item__image_a__model_id"]]
        b = index[row["assignment__item__image_b__model_id"]]
        n = row["n"]
        if row["winner"] == Vote.Winner.A:
            wins[a, b] += n
        elif row["winner"] == Vote.Winner.B:
            wins[b, a] += n
        else:
            wins[a, b] += n / 2
            wins[b, a] += n / 2
    return wins


def pair_ranking(campaign: Campaign) -> list[tuple[int, int]] | None:
    """The campaign's model pairs (model ids), the most useful next vote first; None when there is nothing to rank."""
    criterion = primary_criterion(campaign)
    model_ids = [m.pk for m in campaign.ordered_models()]
    if criterion is None or not annotation_services.adaptive_pairs_possible(len(model_ids), campaign.pairing):
        return None
    wins = win_matrix(campaign, criterion, model_ids)
    try:
        priorities = next_pair_priorities(wins)
    except (RuntimeError, np.linalg.LinAlgError):
        logger.warning("campaign %s: no Bradley–Terry fit of its votes yet; pair priorities kept", campaign.pk)
        return None
    return [(model_ids[p.first], model_ids[p.second]) for p in priorities]


def refresh_pair_priorities(campaign_id: int) -> int | None:
    """Recompute an adaptive campaign's pair priorities from its votes; items changed, or None when it is not an
    adaptive campaign or has nothing to rank. Idempotent."""
    campaign = Campaign.objects.filter(pk=campaign_id, pair_selection=Campaign.PairSelection.ADAPTIVE).first()
    if campaign is None:
        return None
    ranking = pair_ranking(campaign)
    if ranking is None:
        return None
    return annotation_services.set_pair_priorities(campaign, ranking)


def live_adaptive_campaigns() -> list[int]:
    """Ids of the live campaigns that select pairs adaptively."""
    return list(
        Campaign.objects.filter(
            status=Campaign.Status.LIVE, pair_selection=Campaign.PairSelection.ADAPTIVE
        ).values_list("pk", flat=True)
    )
