"""Celery tasks of the analysis app: thin, idempotent, and they take ids."""

from celery import shared_task

from . import services


@shared_task(acks_late=True)
def refresh_pair_priorities(campaign_id: int) -> int | None:
    """Recompute one adaptive campaign's pair priorities from its votes (items changed; None: nothing to do)."""
    return services.refresh_pair_priorities(campaign_id)


@shared_task(acks_late=True)
def refresh_adaptive_pairs() -> int:
    """On the beat schedule: every live adaptive campaign's pair priorities, from the votes so far."""
    campaigns = services.live_adaptive_campaigns()
    for campaign_id in campaigns:
        services.refresh_pair_priorities(campaign_id)
    return len(campaigns)
