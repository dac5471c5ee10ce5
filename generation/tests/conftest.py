import time

import pytest

from generation import selectors, services
from generation.models import GenerationBatch

PROMPTS_TSV = (
    "Prompt\tCategory\tChallenge\tNote\n"
    "a red apple\tFood\tBasic\t\n"
    "a lighthouse at dusk\tOutdoor Scenes\tBasic\t\n"
    "three blue birds\tAnimals\tQuantity\tcounting\n"
    'a sign that says "hi"\tArtifacts\tWriting & Symbols\t\n'
)


@pytest.fixture
def two_models(tiny_pipeline_dir):
    base = services.register_model(name="base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=4, guidance_scale=5.0)
    tuned = services.register_model(name="tuned", pipeline_path=str(tiny_pipeline_dir("sd", 1)), steps=4, guidance_scale=5.0)
    return base, tuned


@pytest.fixture
def prompt_set():
    prompt_set, _ = services.import_prompt_set(name="four", data=PROMPTS_TSV.encode(), filename="four.tsv")
    return prompt_set


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
