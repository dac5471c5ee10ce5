"""The campaign page's live win rates: the report's numbers per criterion and model pair, cached per vote snapshot."""

from __future__ import annotations

from django.core.cache import cache
from django.db.models import Count, Max

from annotation.models import Campaign

from .decisions import sequence_summaries
from .reports import analysed_votes, campaign_comparisons, code_version, counting_votes
from .values import DEFAULT_ROUNDS, DEFAULT_SEED, percent, plain


def campaign_win_rates(campaign: Campaign) -> list[dict]:
    """Per criterion and model pair: B's item-level win rate with the headline interval, for the campaign page.

    The same numbers as the report at its default seed and rounds. Cached per
    vote snapshot (counting votes and the newest one's id: a new vote or an
    exclusion changes them) and code version, because the page polls every
    few seconds.
    """
    state = counting_votes(campaign).aggregate(n=Count("id"), last=Max("id"))
    key = (
        f"analysis:win-rates:{code_version()}:{campaign.pk}:{campaign.status}:{state['n']}:{state['last']}:"
        f"{campaign.decision_width}"
    )
    rows = cache.get(key)
    if rows is None:
        rows = _campaign_win_rates(campaign)
        cache.set(key, rows, timeout=3600)
    return rows


def _campaign_win_rates(campaign: Campaign) -> list[dict]:
    frame = analysed_votes(campaign)
    options = {"seed": DEFAULT_SEED, "rounds": DEFAULT_ROUNDS, "level": 0.95, "include_incomplete": False}
    sequences = {s.key: s for s in sequence_summaries(campaign)}
    rows = []
    for c in campaign_comparisons(campaign, frame, breakdowns=False, **options):
        o = c.item_outcomes
        cs = sequences.get(c.key)
        rows.append(
            {
                "key": c.key,
                "criterion": c.criterion,
                "criterion_label": c.criterion_label,
                "model_a": c.model_a,
                "model_b": c.model_b,
                "items": c.items,
                "compared": c.compared,
                "incomplete_items": c.incomplete_items,
                "wins": o.wins if o else 0,
                "ties": o.ties if o else 0,
                "losses": o.losses if o else 0,
                "win_rate": c.win_rate,
                "low": c.interval.low if c.interval else None,
                "high": c.interval.high if c.interval else None,
                "interval_method": c.interval.method if c.interval else None,
                # Ties as half a win: the figure a null campaign (A vs A) centres on 50%, where the
                # headline rate (ties as not won) does not.
                "win_rate_half_ties": c.win_rate_half_ties,
                "low_half_ties": c.interval_half_ties.low if c.interval_half_ties else None,
                "high_half_ties": c.interval_half_ties.high if c.interval_half_ties else None,
                "interval_note": c.interval_note,
                "verdict": c.verdict,
                "message": c.message,
                # Display strings, so the page's script shows exactly what the server renders.
                "win_rate_text": percent(c.win_rate) if c.has_numbers else c.message,
                "interval_text": c.interval_text,
                "half_ties_text": c.half_ties_text if c.has_numbers else "",
                "half_ties_interval_text": c.half_ties_interval_text if c.has_numbers else "",
                # The anytime-valid interval (confidence sequence) of the same rate, ties as half, over the prompts
                # whose comparisons are all complete: valid however often the page is looked at.
                "sequence_prompts": cs.prompts if cs else 0,
                "sequence_low": cs.low if cs else None,
                "sequence_high": cs.high if cs else None,
                "sequence_estimate": cs.estimate if cs else None,
                "sequence_text": cs.text if cs else "—",
                "sequence_verdict": cs.verdict if cs else "unclear",
                "sequence_decision_text": cs.decision_text if cs else "",
            }
        )
    return plain(rows)
