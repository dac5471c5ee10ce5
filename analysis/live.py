"""What a researcher watches while a campaign runs: annotation's progress with analysis's live win rates."""

from __future__ import annotations

from dataclasses import asdict

from annotation import selectors as annotation_selectors
from annotation.models import Campaign

from .services import campaign_win_rates, decision_summaries, plain, stop_rule


def campaign_state(campaign: Campaign) -> dict:
    """What a dashboard polls: status, progress (and the launch's image generation), win rates with intervals."""
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "launch_error": campaign.launch_error,
        "progress": annotation_selectors.campaign_progress(campaign).as_dict(),
        "generation": annotation_selectors.launch_images(campaign),
        # Item-level win rates with the report's headline interval (complete comparisons only).
        "win_rates": campaign_win_rates(campaign),
        # "Stop when decided": the rule, and the decisions recorded (each with its sentence).
        "stop_rule": stop_rule(campaign),
        "decisions": [{**plain(asdict(d)), "sentence": d.sentence} for d in decision_summaries(campaign)],
    }
