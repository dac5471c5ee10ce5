import time

from generation import selectors
from generation.models import GenerationBatch


def wait_for_batch(batch: GenerationBatch, timeout: float = 120, worker=None) -> selectors.BatchProgress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch.refresh_from_db()
        progress = selectors.batch_progress(batch)
        if progress.complete or batch.error:
            return progress
        time.sleep(0.1)
    log = worker.log() if worker else ""
    raise AssertionError(f"batch not done after {timeout}s: {selectors.batch_progress(batch)}\n{log}")
