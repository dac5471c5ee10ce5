"""Celery tasks of the generation app: thin wrappers over services.

Tasks take ids, are acknowledged late (a killed worker's chunk is redelivered)
and are idempotent (services.generate_chunk skips what exists).
"""

import logging

from celery import shared_task
from django.db import DatabaseError, InterfaceError

from . import services

logger = logging.getLogger(__name__)

# Worth another try: the database or a shared volume blinked.
TRANSIENT_ERRORS = (DatabaseError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=5)
def generate_chunk(self, batch_id: int, model_id: int, chunk_index: int) -> dict:
    try:
        result = services.generate_chunk(batch_id, model_id, chunk_index)
    except TRANSIENT_ERRORS as exc:
        if self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries))
        services.record_batch_failure(
            batch_id, f"chunk {chunk_index} of model {model_id} failed {self.max_retries + 1} times: {exc}"
        )
        raise
    except Exception as exc:
        # A missing or changed model, a bad parameter, out of memory: retrying
        # will not help, so stop and tell the researcher on the batch page.
        services.record_batch_failure(batch_id, f"chunk {chunk_index} of model {model_id}: {type(exc).__name__}: {exc}")
        raise
    return {"passes_run": result.passes_run, "passes_skipped": result.passes_skipped}
