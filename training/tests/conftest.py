"""Fixtures for the training tests: a tiny curated dataset, settings small enough for a 2-core CPU, a training worker."""

from __future__ import annotations

import pytest

from conftest import worker_process
from training.tests.curated_datasets import TINY_CONFIG, TINY_RUN, make_curated_dataset


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
def base_model(tiny_pipeline_dir):
    """The tiny SD pipeline registered as sd-base."""
    from generation import services as generation_services

    return generation_services.register_model(name="sd-base", pipeline_path=str(tiny_pipeline_dir("sd", 0)), steps=2)


@pytest.fixture
def dataset(curated_dataset):
    """The tiny curated dataset, imported as shapes."""
    from training import services

    return services.import_curated_dataset("shapes", str(curated_dataset))


@pytest.fixture
def run(base_model, dataset):
    """A few-second run of sd-base on shapes (TINY_RUN), not started."""
    from training import services

    return services.create_run(base_model, dataset, **TINY_RUN)


@pytest.fixture
def tiny_config():
    """Settings for a few-second run of the tiny SD pipeline at 32 px (4x4 latents)."""
    return TINY_CONFIG


@pytest.fixture
def encoder_calls(monkeypatch):
    """Counts VAE encoder and text encoder forward passes (SDXL's second one as text_encoder_2) made outside
    validation rendering."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from training.validation import ValidationRenderer

    calls = {"vae": 0, "text_encoder": 0, "text_encoder_2": 0, "validating": False}

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            if not calls["validating"]:
                calls[name] += 1
            return method(self, *args, **kwargs)

        return wrapper

    def validating(method):
        def wrapper(self, *args, **kwargs):
            calls["validating"] = True
            try:
                return method(self, *args, **kwargs)
            finally:
                calls["validating"] = False

        return wrapper

    monkeypatch.setattr(AutoencoderKL, "encode", counting("vae", AutoencoderKL.encode))
    monkeypatch.setattr(CLIPTextModel, "forward", counting("text_encoder", CLIPTextModel.forward))
    monkeypatch.setattr(
        CLIPTextModelWithProjection, "forward", counting("text_encoder_2", CLIPTextModelWithProjection.forward)
    )
    monkeypatch.setattr(ValidationRenderer, "render", validating(ValidationRenderer.render))
    return calls


@pytest.fixture(scope="module")
def training_worker(django_db_setup, django_db_blocker):
    """A real worker consuming only the 'training' queue, against the test database (one per module: torch import)."""
    with worker_process(
        django_db_blocker,
        "training",
        NEEDLE_TRAINING_POLL_SECONDS="0.2",
        OMP_NUM_THREADS="1",  # a shared 2-core machine
    ) as worker:
        yield worker
