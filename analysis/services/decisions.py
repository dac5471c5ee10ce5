"""Watching a win rate without breaking it: the anytime-valid confidence sequences, and "stop when decided".

For every criterion and model pair, the prompts whose comparisons are all complete are taken in the order they
completed; each prompt's score is B's item-level win rate there, ties as half (an item's outcome is the strict
majority of its counting votes, as in the report); ``analysis.stats.confidence_sequence`` runs over those scores.
The sequence holds the true win rate at every look at once, so a campaign may stop the first time it excludes 50%
(or is narrow enough) and still keep its 95% promise, which a fixed-sample interval watched the same way does not.

Prompts must arrive in random order for the scores to be exchangeable: ``annotation.services.build_items`` creates
a campaign's items in a seeded random order of prompts, and the engine fills items depth-first in that order.

**Stop when decided** (``Campaign.stop_when_decided``, checked by the ``analysis.tasks.check_decision`` task every
30 s from Celery beat, or ``manage.py campaign decide``): the decision is taken on the campaign's *primary*
criterion, its first (visual appeal in Emu's protocol), for every model pair. Why not all criteria: a criterion the
models do not differ on (Emu's quality-tuning left text faithfulness near 50%) never excludes 50%, so requiring it
would keep the campaign open until its votes run out, which is what the rule exists to avoid; the other criteria's
numbers are still reported, from the votes cast until the campaign closed. With several pairs each sequence runs at
level 1 - 5% / pairs (Bonferroni), so all of them hold at once. A decision is recorded once per pair
(``CampaignDecision``); when every pair has one, the campaign is closed through annotation's own service.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from django.db import transaction

from annotation import services as annotation_services
from annotation.models import Campaign, CampaignCriterion

from .. import stats
from ..models import CampaignDecision
from ..selectors import item_completions
from .adaptive_pairs import primary_criterion  # the campaign's first criterion (visual appeal in Emu campaigns)
from .values import DecisionSummary, SequenceSummary

logger = logging.getLogger(__name__)

SEQUENCE_LEVEL = 0.95


def decision_level(campaign: Campaign, level: float = SEQUENCE_LEVEL) -> float:
    """Each pair's sequence level for the decision: 1 - (1 - level) / pairs, so every pair's holds at once."""
    return 1 - (1 - level) / max(1, len(campaign.model_pairs()))


def prompt_sequence(items: pd.DataFrame, criterion: str, model_a: str, model_b: str):
    """(scores, completion times, prompt ids, prompts with items) of one criterion and pair, prompts in completion order.

    A prompt enters once all its items (one per seed) are complete; its completion time is its last item's. Its
    score is B's wins plus half its ties over its items (``stats.prompt_scores``).
    """
    selected = items[(items["criterion"] == criterion) & (items["model_a"] == model_a) & (items["model_b"] == model_b)]
    if selected.empty:
        return np.zeros(0), pd.Series([], dtype="datetime64[ns, UTC]"), [], 0
    outcome = stats.majority_outcomes(selected[list(stats.WINNERS)].to_numpy())
    frame = pd.DataFrame(
        {
            "prompt_id": selected["prompt_id"].to_numpy(),
            "won": outcome == stats.WINNERS.index("b"),
            "tie": outcome == stats.WINNERS.index("tie"),
            "done": selected["completed_at"].notna().to_numpy(),
            "completed_at": selected["completed_at"].to_numpy(),
        }
    )
    per_prompt = frame.groupby("prompt_id").agg(
        items=("won", "size"),
        wins=("won", "sum"),
        ties=("tie", "sum"),
        done=("done", "all"),
        at=("completed_at", "max"),
    )
    complete = per_prompt[per_prompt["done"]].reset_index().sort_values(["at", "prompt_id"], kind="stable")
    if complete.empty:
        return np.zeros(0), pd.Series([], dtype="datetime64[ns, UTC]"), [], len(per_prompt)
    scores = stats.prompt_scores(complete["wins"].to_numpy(), complete["items"].to_numpy(), complete["ties"].to_numpy())
    return (
        scores,
        pd.to_datetime(complete["at"], utc=True).reset_index(drop=True),
        list(complete["prompt_id"]),
        len(per_prompt),
    )


def sequence_summaries(
    campaign: Campaign, *, items: pd.DataFrame | None = None, level: float = SEQUENCE_LEVEL
) -> tuple[SequenceSummary, ...]:
    """Every criterion and pair's confidence sequence at its latest look (the campaign's decision width applied)."""
    if items is None:
        items, _ = item_completions(campaign)
    target = campaign.decision_width
    summaries = []
    for criterion in campaign.criteria.all():
        for model_a, model_b in campaign.model_pairs():
            scores, _, _, total = prompt_sequence(items, criterion.criterion, model_a.name, model_b.name)
            base = {
                "criterion": criterion.criterion,
                "criterion_label": criterion.get_criterion_display(),
                "model_a": model_a.name,
                "model_b": model_b.name,
                "total_prompts": total,
                "level": level,
                "target_width": target,
                "method": stats.HEDGED_CAPITAL,
            }
            if not len(scores):
                summaries.append(
                    SequenceSummary(
                        **base,
                        prompts=0,
                        low=None,
                        high=None,
                        estimate=None,
                        decided_at=None,
                        decision="",
                        decision_low=None,
                        decision_high=None,
                        message="no prompt has all its comparisons complete yet",
                    )
                )
                continue
            cs = stats.confidence_sequence(scores, level=level, target_width=target)
            at = cs.decided_at - 1 if cs.decided_at else None
            summaries.append(
                SequenceSummary(
                    **base,
                    prompts=cs.prompts,
                    low=float(cs.low[-1]),
                    high=float(cs.high[-1]),
                    estimate=float(cs.estimate[-1]),
                    decided_at=cs.decided_at,
                    decision=cs.decision,
                    decision_low=float(cs.low[at]) if at is not None else None,
                    decision_high=float(cs.high[at]) if at is not None else None,
                )
            )
    return tuple(summaries)


def stop_rule(campaign: Campaign) -> dict:
    """The campaign's stop rule in words and numbers, for the page and the report."""
    primary = primary_criterion(campaign)
    if not campaign.stop_when_decided:
        description = (
            "Stop when decided is off: the campaign runs until its votes are in or a researcher closes it. "
            "The anytime-valid interval may still be watched as often as you like."
        )
    else:
        width = (
            f", or once it is at most {campaign.decision_width:.0%} wide" if campaign.decision_width is not None else ""
        )
        description = (
            f"Stop when decided: the campaign closes by itself once the anytime-valid interval of "
            f"{primary.get_criterion_display() if primary else 'its first criterion'} excludes 50%{width}, for every "
            f"model pair (each pair's interval at {decision_level(campaign):.1%}, so all hold at once). Checked every "
            "30 seconds."
        )
    return {
        "stop_when_decided": campaign.stop_when_decided,
        "decision_width": campaign.decision_width,
        "criterion": primary.criterion if primary else None,
        "level": decision_level(campaign),
        "description": description,
    }


def decision_summaries(campaign: Campaign) -> tuple[DecisionSummary, ...]:
    labels = dict(CampaignCriterion._meta.get_field("criterion").choices)
    return tuple(
        DecisionSummary(
            criterion=d.criterion,
            criterion_label=str(labels.get(d.criterion, d.criterion)),
            model_a=d.model_a,
            model_b=d.model_b,
            decision=d.decision,
            look=d.look,
            votes_at_look=d.votes_at_look,
            votes_at_check=d.votes_at_check,
            low=d.low,
            high=d.high,
            estimate=d.estimate,
            level=d.level,
            target_width=d.target_width,
            decided_at=d.decided_at.isoformat(),
            recorded_at=d.recorded_at.isoformat(),
            closed_campaign=d.closed_campaign,
        )
        for d in CampaignDecision.objects.filter(campaign=campaign).order_by("id")
    )


def campaigns_to_decide() -> list[int]:
    """Ids of the live campaigns that stop when decided (what the beat task checks)."""
    return list(
        Campaign.objects.filter(status=Campaign.Status.LIVE, stop_when_decided=True)
        .order_by("id")
        .values_list("pk", flat=True)
    )


def check_decision(campaign_id: int) -> str:
    """Record the decision of every pair whose sequence has decided, and close the campaign once all have. Idempotent.

    Only live campaigns with ``stop_when_decided`` are checked; a decision once recorded is kept (the sequence's
    guarantee is about the first look at which it decided). Returns what happened, in words.
    """
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        return "campaign deleted"
    if not campaign.stop_when_decided:
        return "stop when decided is off"
    if campaign.status != Campaign.Status.LIVE:
        return f"campaign is {campaign.status}"
    criterion = primary_criterion(campaign)
    pairs = campaign.model_pairs()
    if criterion is None or not pairs:
        return "nothing to decide"
    level = decision_level(campaign)
    items, vote_times = item_completions(campaign)
    recorded = set(
        CampaignDecision.objects.filter(campaign=campaign, criterion=criterion.criterion).values_list(
            "model_a", "model_b"
        )
    )
    for model_a, model_b in pairs:
        if (model_a.name, model_b.name) in recorded:
            continue
        scores, completed, _, _ = prompt_sequence(items, criterion.criterion, model_a.name, model_b.name)
        if not len(scores):
            continue
        cs = stats.confidence_sequence(scores, level=level, target_width=campaign.decision_width)
        if cs.decided_at is None:
            continue
        at = cs.decided_at - 1
        moment = completed.iloc[at]
        CampaignDecision.objects.get_or_create(
            campaign=campaign,
            criterion=criterion.criterion,
            model_a=model_a.name,
            model_b=model_b.name,
            defaults={
                "decision": cs.decision,
                "look": cs.decided_at,
                "votes_at_look": int(vote_times.searchsorted(moment, side="right")),
                "votes_at_check": len(vote_times),
                "low": float(cs.low[at]),
                "high": float(cs.high[at]),
                "estimate": float(cs.estimate[at]),
                "level": level,
                "null": cs.null,
                "target_width": campaign.decision_width,
                "decided_at": moment.to_pydatetime(),
            },
        )
        recorded.add((model_a.name, model_b.name))
        logger.info(
            "campaign %s: %s vs %s decided (%s) at prompt %s", campaign.pk, model_b, model_a, cs.decision, at + 1
        )
    if len(recorded) < len(pairs):
        return f"{len(recorded)} of {len(pairs)} pairs decided"
    with transaction.atomic():
        try:
            annotation_services.apply_campaign_action(campaign, "close")
        except annotation_services.AnnotationError as exc:  # closed or paused meanwhile: nothing to do
            return f"decided, not closed: {exc}"
        CampaignDecision.objects.filter(campaign=campaign, criterion=criterion.criterion).update(closed_campaign=True)
    logger.info("campaign %s closed: every pair decided", campaign.pk)
    return "decided: campaign closed"
