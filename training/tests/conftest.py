"""Fixtures for the quality-tuning tests: a tiny curated dataset and settings small enough for a 2-core CPU."""

from __future__ import annotations

import pytest

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
