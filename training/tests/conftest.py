"""Fixtures for the training tests: a tiny curated dataset, settings small enough for a 2-core CPU, a training worker."""

from __future__ import annotations

import pytest
from django.conf import settings

from conftest import TEST_VISIBILITY_TIMEOUT, _purge_queues
from evalsite.workers import WorkerProcess, database_url_for
from training.tests.curated_datasets import make_curated_dataset


@pytest.fixture
def one_torch_thread():
    """Quality-tuning tests train with one torch thread: the machine is shared, and the kill test's subprocesses
    (OMP_NUM_THREADS=1) must compute exactly what the in-process reference run computes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def curated_dataset(tmp_path_factory):
    return make_curated_dataset(tmp_path_factory.mktemp("curated") / "shapes")


@pytest.fixture
def tiny_config():
    """Settings for a few-second run of the tiny SD pipeline at 32 px (4x4 latents)."""
    from training.quality_tuning import QualityTuningConfig

    return QualityTuningConfig(
        resolution=32,
        batch_size=4,
        max_steps=6,
        checkpoint_every=3,
        validation_every=3,
        validation_prompts=("a red circle on a blue background",),
        validation_seeds=(0,),
        validation_inference_steps=2,
        seed=0,
    )


@pytest.fixture(scope="module")
def training_worker(django_db_setup, django_db_blocker):
    """A real worker consuming only the 'training' queue, against the test database (one per module: torch import)."""
    from django.db import connection

    with django_db_blocker.unblock():
        url = database_url_for(connection.settings_dict)
    try:
        _purge_queues()
    except Exception as exc:  # noqa: BLE001 - a missing queue is fine, a dead broker is not
        if "NOT_FOUND" not in str(exc):
            raise
    worker = WorkerProcess(
        queues="training",
        database_url=url,
        log_dir=settings.VAR_DIR / "logs",
        env={
            "CELERY_VISIBILITY_TIMEOUT": str(TEST_VISIBILITY_TIMEOUT),
            "NEEDLE_TRAINING_POLL_SECONDS": "0.2",
            "OMP_NUM_THREADS": "1",
        },  # a shared 2-core machine
    )
    worker.start()
    yield worker
    worker.stop()
