"""The campaign page's live win rates: the report's numbers per criterion and model pair, cached per vote snapshot."""

from __future__ import annotations

from django.core.cache import cache
from django.db.models import Count, Max

from annotation.models import Campaign

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
    key = f"analysis:win-rates:{code_version()}:{campaign.pk}:{campaign.status}:{state['n']}:{state['last']}"
    rows = cache.get(key)
    if rows is None:
        rows = _campaign_win_rates(campaign)
        cache.set(key, rows, timeout=3600)
    return rows


def _campaign_win_rates(campaign: Campaign) -> list[dict]:
    frame = analysed_votes(campaign)
    options = {"seed": DEFAULT_SEED, "rounds": DEFAULT_ROUNDS, "level": 0.95, "include_incomplete": False}
    rows = []
    for c in campaign_comparisons(campaign, frame, breakdowns=False, **options):
        o = c.item_outcomes
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
            }
        )
    return plain(rows)
