"""Celery tasks of the analysis app (queue ``default``): thin, idempotent, and they take ids."""

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


@shared_task(acks_late=True)
def check_decision(campaign_id: int) -> str:
    """ "Stop when decided": record any pair the anytime-valid interval has decided; close the campaign once all have."""
    return services.check_decision(campaign_id)


@shared_task(acks_late=True)
def check_decisions() -> int:
    """From Celery beat: queue ``check_decision`` for every live campaign that stops when decided."""
    ids = services.campaigns_to_decide()
    for campaign_id in ids:
        check_decision.delay(campaign_id)
    return len(ids)
