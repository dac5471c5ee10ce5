"""Celery task of the training app: a thin wrapper over services.execute_run (queue ``training``).

Acknowledged late: a worker killed mid-run gives the task back to the broker,
and the redelivered task resumes the run from its newest checkpoint (the
trainer does that itself). A duplicate delivery while a trainer still runs
finds the run directory's lock held and returns at once.

The task lasts as long as the run. With Redis, a task unacknowledged for
longer than the broker's visibility timeout (CELERY_VISIBILITY_TIMEOUT) is
delivered a second time; that copy leaves (the lock), but it also
acknowledges the message, so if the first worker then dies, nothing brings
the run back by itself: its page shows it as stale after
NEEDLE_TRAINING_STALE_SECONDS and offers Resume. Workers of the training queue
should run with a visibility timeout above the longest run.
"""

import logging

from celery import shared_task

from annotation.models import Campaign

from . import services
from .models import QualityTuningRun

logger = logging.getLogger(__name__)


def _requeue(run_id: int) -> None:
    services.start_run(QualityTuningRun.objects.get(pk=run_id))


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_quality_tuning(self, run_id: int) -> str:
    outcome = services.execute_run(run_id, task_id=self.request.id or "", requeue=_requeue)
    logger.info("quality-tuning task: %s", outcome)
    return outcome


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_curation_funnel(self, curation_run_id: int) -> str:
    """The automatic curation funnel over a collection (services.execute_curation_run: idempotent, claims the run)."""
    outcome = services.execute_curation_run(curation_run_id, task_id=self.request.id or "")
    logger.info("curation task: %s", outcome)
    return outcome


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def score_campaign_pairs(campaign_id: int) -> str:
    """The site's automatic judge (NEEDLE_JUDGE_HEAD_PATH, NEEDLE_JUDGE_CLIP_PATH) scores the campaign's unscored pairs.

    Idempotent: pairs scored before are skipped, so a redelivered task finishes the rest.
    """
    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None:
        return "campaign deleted"
    scored = services.score_campaign_pairs(campaign)
    logger.info("judge: campaign %s, %s pair(s) scored", campaign_id, scored)
    return f"{scored} pair(s) scored"
