"""Celery tasks of the annotation app: thin, idempotent, and they take ids."""

from celery import shared_task
from django.utils import timezone

from . import services
from .models import Campaign

# How often a launching campaign checks whether its images are ready.
LAUNCH_POLL_SECONDS = 5


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def finish_launch(self, campaign_id: int) -> str:
    """Wait (by re-queueing itself) for the campaign's images, then build its items and go live."""
    if not Campaign.objects.filter(pk=campaign_id).exists():
        return "campaign deleted"
    if services.finish_launch(campaign_id):
        return "done"
    raise self.retry(countdown=LAUNCH_POLL_SECONDS)


@shared_task(acks_late=True)
def sweep_expired_leases() -> int:
    """Return every live campaign's abandoned tasks to the pool (the engine also sweeps as it goes)."""
    now = timezone.now()
    return sum(
        services.expire_leases(pk, now)
        for pk in Campaign.objects.filter(status=Campaign.Status.LIVE).values_list("pk", flat=True)
    )
