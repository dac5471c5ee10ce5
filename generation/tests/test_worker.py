"""Generation through a real Celery worker process and the configured broker (Redis in CI)."""

import hashlib
import time
from collections import Counter

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from conftest import TEST_VISIBILITY_TIMEOUT
from generation import pipelines, selectors, services
from generation.models import GeneratedImage
from generation.tasks import generate_chunk

from .conftest import wait_for_batch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def reference_digests(batch) -> dict:
    """sha256 of every image of an uninterrupted run, computed here without Celery, storage or database."""
    keys = selectors.batch_keys(batch)
    digests = {}
    for bm in batch.batch_models.select_related("model"):
        loaded = pipelines.load_pipeline(bm.model.pipeline_path, expected_fingerprint=None)
        for start in range(0, len(keys), batch.chunk_size):
            chunk = keys[start : start + batch.chunk_size]
            for i in range(0, len(chunk), batch.inference_batch_size):
                group = chunk[i : i + batch.inference_batch_size]
                images, _ = pipelines.render(
                    loaded, [k.prompt_text for k in group], [k.seed for k in group], bm.parameters
                )
                for key, pixels in zip(group, images):
                    digests[bm.model_id, key.prompt_id, key.seed] = hashlib.sha256(
                        pipelines.encode_png(pixels)
                    ).hexdigest()
    return digests


def stored_digests() -> dict:
    rows = GeneratedImage.objects.all()
    keys = Counter((im.model_id, im.prompt_id, im.seed) for im in rows)
    assert set(keys.values()) == {1}, "an image key was recorded twice"
    result = {}
    for im in rows:
        with im.file.open("rb") as fh:
            data = fh.read()
        assert hashlib.sha256(data).hexdigest() == im.sha256, f"{im.file.name} does not hold the bytes recorded for it"
        result[im.model_id, im.prompt_id, im.seed] = im.sha256
    return result


def test_generate_command_runs_a_batch_on_the_worker(celery_worker, two_models, prompt_set, capsys):
    call_command(
        *(
            "generate --models base tuned --prompt-set four --seeds 0-2 "
            "--chunk-size 4 --inference-batch-size 2 --timeout 120"
        ).split(),
    )
    out = capsys.readouterr().out
    assert "queued 6 chunk task(s)" in out and "complete: 24 images" in out and "24/24" in out
    batch = GeneratedImage.objects.first().batch
    assert batch.completed_at is not None and selectors.batch_status(batch) == "complete"
    assert stored_digests() == reference_digests(batch)


def test_duplicated_and_repeated_tasks_never_make_a_second_image(celery_worker, two_models, prompt_set):
    batch = services.create_batch(
        models=list(two_models), prompt_set=prompt_set, seeds=[0, 1], chunk_size=4, inference_batch_size=2
    )
    services.dispatch_batch(batch)
    for bm in batch.batch_models.all():  # the same chunks delivered again, as after a broker hiccup
        for index in range(selectors.chunk_count(batch)):
            generate_chunk.delay(batch.pk, bm.model_id, index)
    progress = wait_for_batch(batch, worker=celery_worker)
    assert (progress.done, progress.total) == (16, 16)
    # Let the duplicates drain too, then check nothing was added.
    time.sleep(2)
    services.dispatch_batch(batch)  # resume on a complete batch queues nothing
    assert GeneratedImage.objects.count() == 16
    assert len(stored_digests()) == 16


def test_worker_killed_mid_chunk_then_a_new_worker_finishes_byte_identical(
    celery_worker, tiny_pipeline_dir, prompt_set
):
    if not settings.CELERY_BROKER_URL.startswith(("redis", "amqp")):
        pytest.skip("redelivery after a SIGKILL needs a broker with acknowledgements (Redis or RabbitMQ)")
    # Slow enough (128 px, 25 steps) that a forward pass takes a good fraction of a second.
    model = services.register_model(
        name="slow", pipeline_path=str(tiny_pipeline_dir("sd", 2)), steps=25, width=128, height=128
    )
    batch = services.create_batch(
        models=[model], prompt_set=prompt_set, seeds=[0, 1, 2, 3], chunk_size=8, inference_batch_size=4
    )
    services.dispatch_batch(batch)  # 2 chunks of 2 passes each

    deadline = time.monotonic() + 120
    while GeneratedImage.objects.count() < 4:  # the first pass of the first chunk is recorded
        assert time.monotonic() < deadline, celery_worker.log()
        time.sleep(0.01)
    celery_worker.kill()
    done_at_kill = GeneratedImage.objects.count()
    assert 4 <= done_at_kill < 8, "the kill should land inside the first chunk"

    # The broker hands the unacknowledged chunk to the next worker once its visibility timeout has passed.
    time.sleep(TEST_VISIBILITY_TIMEOUT + 1)
    celery_worker.start()
    progress = wait_for_batch(batch, timeout=180, worker=celery_worker)
    assert not batch.error and (progress.done, progress.total) == (16, 16)
    assert stored_digests() == reference_digests(batch)
    images_dir = GeneratedImage._meta.get_field("file").storage.location
    from pathlib import Path

    for png in Path(images_dir).rglob("*.png"):
        assert pipelines.png_chunk_types(png.read_bytes())[-1] == "IEND", f"{png} is truncated"


def test_a_missing_model_directory_fails_the_batch_with_a_clear_message(
    celery_worker, tiny_pipeline_dir, tmp_path, prompt_set
):
    import shutil

    path = tmp_path / "moved"
    shutil.copytree(tiny_pipeline_dir("sd", 0), path)
    model = services.register_model(name="moved", pipeline_path=str(path), steps=2)
    shutil.rmtree(path)
    with pytest.raises(CommandError, match="no longer exists on this worker"):
        call_command("generate", "--models", "moved", "--prompt-set", "four", "--seeds", "0", "--timeout", "60")
    assert not GeneratedImage.objects.exists()
    batch = model.batchmodel_set.get().batch
    assert selectors.batch_status(batch) == "failed"
