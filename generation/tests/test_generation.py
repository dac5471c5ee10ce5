"""Generation through the service layer, in this process (the worker tests cover Celery)."""

import hashlib
from collections import Counter

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from generation import pipelines, selectors, services
from generation.models import GeneratedImage, GenerationBatch, TextToImageModel

pytestmark = pytest.mark.django_db


def image_bytes(image: GeneratedImage) -> bytes:
    with image.file.open("rb") as fh:
        return fh.read()


def test_each_model_gets_every_prompt_and_seed_once(two_models, prompt_set):
    batch = services.create_batch(
        models=list(two_models), prompt_set=prompt_set, seeds=[0, 1, 2], chunk_size=4, inference_batch_size=2
    )
    services.generate_batch_in_process(batch)
    progress = selectors.batch_progress(batch)
    assert (progress.done, progress.total) == (24, 24)
    keys = Counter(GeneratedImage.objects.values_list("model_id", "prompt_id", "seed"))
    assert len(keys) == 24 and set(keys.values()) == {1}
    # A pair shares prompt, seed and (here) parameters: it differs only by model.
    for prompt_id, seed in {(p, s) for _, p, s in keys}:
        pair = GeneratedImage.objects.filter(prompt_id=prompt_id, seed=seed)
        assert pair.count() == 2 and len({im.parameters_hash for im in pair}) == 1


def test_images_are_content_addressed_pngs_without_metadata(two_models, prompt_set):
    batch = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[0])
    services.generate_batch_in_process(batch)
    for image in GeneratedImage.objects.select_related("model"):
        data = image_bytes(image)
        assert hashlib.sha256(data).hexdigest() == image.sha256
        assert image.file.name == f"{image.sha256[:2]}/{image.sha256[2:4]}/{image.sha256}.png"
        assert image.model.name not in image.file.name
        assert set(pipelines.png_chunk_types(data)) == {"IHDR", "IDAT", "IEND"}
        assert image.model.name.encode() not in data
        assert (image.width, image.height) == (64, 64) and image.seconds > 0 and image.device == "cpu"
        assert image.weights_fingerprint == image.model.weights_fingerprint


def test_same_inputs_give_byte_identical_images(two_models, prompt_set):
    batch = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[3, 4])
    services.generate_batch_in_process(batch)
    first = dict(GeneratedImage.objects.values_list("id", "sha256"))
    by_key = {(i.model_id, i.prompt_id, i.seed): i.sha256 for i in GeneratedImage.objects.all()}
    GeneratedImage.objects.all().delete()
    services.pipeline_cache().clear()
    services.generate_batch_in_process(batch)
    again = {(i.model_id, i.prompt_id, i.seed): i.sha256 for i in GeneratedImage.objects.all()}
    assert again == by_key and len(first) == 16
    # The two models really differ, and different seeds really differ.
    assert len(set(again.values())) == 16


def test_initial_noise_depends_only_on_seed_not_on_batch_company(two_models):
    loaded = pipelines.load_pipeline(two_models[0].pipeline_path, expected_fingerprint=None)
    params = two_models[0].default_parameters
    alone, _ = pipelines.render(loaded, ["a cat"], [7], params)
    together, _ = pipelines.render(loaded, ["a dog", "a cat", "a boat"], [1, 7, 2], params)
    # Same noise, so the pixels agree up to float summation order across batch sizes.
    assert np.abs(alone[0].astype(int) - together[1].astype(int)).max() <= 2


def test_running_a_chunk_again_creates_nothing(two_models, prompt_set):
    batch = services.create_batch(
        models=list(two_models), prompt_set=prompt_set, seeds=[0, 1], chunk_size=4, inference_batch_size=2
    )
    model_id = two_models[0].pk
    first = services.generate_chunk(batch.pk, model_id, 0)
    again = services.generate_chunk(batch.pk, model_id, 0)
    assert (first.passes_run, first.passes_skipped) == (2, 0)
    assert (again.passes_run, again.passes_skipped) == (0, 2)
    assert GeneratedImage.objects.count() == 4


def test_a_racing_duplicate_pass_records_nothing_twice(two_models, prompt_set):
    batch = services.create_batch(models=[two_models[0]], prompt_set=prompt_set, seeds=[0], inference_batch_size=4)
    bm = batch.batch_models.get()
    keys = selectors.batch_keys(batch)
    loaded = services.pipeline_cache().get(two_models[0].pipeline_path, two_models[0].weights_fingerprint)
    images, seconds = pipelines.render(loaded, [k.prompt_text for k in keys], [k.seed for k in keys], bm.parameters)
    services.record_images(services.store_pass(batch.pk, bm, loaded, keys, images, seconds, existing=set()))
    before = list(GeneratedImage.objects.values_list("id", "sha256"))
    # As if a second worker had run the same pass at the same time.
    services.record_images(services.store_pass(batch.pk, bm, loaded, keys, images, seconds, existing=set()))
    assert list(GeneratedImage.objects.values_list("id", "sha256")) == before and len(before) == 4


def test_a_later_batch_reuses_existing_images(two_models, prompt_set):
    first = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[0, 1])
    services.generate_batch_in_process(first)
    second = services.create_batch(models=list(two_models), prompt_set=prompt_set, seeds=[1, 2])
    assert selectors.batch_progress(second).done == 8  # seed 1 is shared
    services.generate_batch_in_process(second)
    assert GeneratedImage.objects.count() == 24


def test_each_worker_process_loads_a_pipeline_once(two_models, prompt_set):
    services.pipeline_cache().clear()
    loads_before = services.pipeline_cache().loads
    batch = services.create_batch(
        models=list(two_models), prompt_set=prompt_set, seeds=[0, 1, 2, 3], chunk_size=2, inference_batch_size=2
    )
    services.generate_batch_in_process(batch)  # 16 chunks over two models
    assert services.pipeline_cache().loads - loads_before == 2


def test_batch_parameters_override_model_defaults_for_all_models(two_models, prompt_set):
    batch = services.create_batch(
        models=list(two_models),
        prompt_set=prompt_set,
        seeds=[0],
        parameters={"steps": 2, "width": 48, "height": 32, "scheduler": "euler_a"},
    )
    assert {bm.parameters["steps"] for bm in batch.batch_models.all()} == {2}
    services.generate_batch_in_process(batch)
    image = GeneratedImage.objects.first()
    assert (image.width, image.height) == (48, 32)
    assert image.parameters == {"steps": 2, "guidance_scale": 5.0, "width": 48, "height": 32, "scheduler": "euler_a"}


@pytest.mark.parametrize(
    "scheduler", ["ddim", "pndm", "lms", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"]
)
def test_every_offered_scheduler_runs(tiny_pipeline_dir, scheduler):
    loaded = pipelines.load_pipeline(tiny_pipeline_dir("sd", 0), expected_fingerprint=None)
    params = {"steps": 5, "guidance_scale": 5.0, "width": 64, "height": 64, "scheduler": scheduler}  # PNDM needs >= 4
    images, _ = pipelines.render(loaded, ["a cat"], [0], params)
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    assert type(loaded.pipe.scheduler).__name__ == pipelines.SCHEDULERS[scheduler][0]


def test_sdxl_pipeline_generates_through_the_same_path(tiny_pipeline_dir, prompt_set):
    model = services.register_model(name="xl", pipeline_path=str(tiny_pipeline_dir("sdxl", 0)), steps=3)
    batch = services.create_batch(models=[model], prompt_set=prompt_set, seeds=[0])
    services.generate_batch_in_process(batch)
    assert GeneratedImage.objects.filter(model=model).count() == 4


def test_changed_weights_stop_generation_with_a_clear_error(tiny_pipeline_dir, tmp_path, prompt_set):
    import shutil

    path = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir("sd", 0), path)
    model = services.register_model(name="m", pipeline_path=str(path), steps=2)
    (path / "unet" / "config.json").write_text((path / "unet" / "config.json").read_text() + " ")
    batch = services.create_batch(models=[model], prompt_set=prompt_set, seeds=[0])
    with pytest.raises(pipelines.WeightsChangedError, match="changed since the model was registered"):
        services.generate_chunk(batch.pk, model.pk, 0)
    shutil.rmtree(path)
    with pytest.raises(pipelines.PipelineDirectoryError, match="no longer exists"):
        services.generate_chunk(batch.pk, model.pk, 0)
    assert not GeneratedImage.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": []}, "at least one model"),
        ({"seeds": []}, "at least one seed"),
        ({"seeds": [1, 1]}, "listed twice"),
        ({"seeds": [-1]}, "whole numbers from 0"),
        ({"parameters": {"width": 60}}, "multiple of 8"),
        ({"parameters": {"scheduler": "magic"}}, "Unknown scheduler"),
        ({"parameters": {"cfg": 3}}, "Unknown generation parameters"),
    ],
)
def test_invalid_batches_are_refused(two_models, prompt_set, kwargs, message):
    args = {"models": list(two_models), "prompt_set": prompt_set, "seeds": [0], **kwargs}
    with pytest.raises(services.BatchError, match=message):
        services.create_batch(**args)


def test_chunks_hold_whole_forward_passes(two_models, prompt_set):
    batch = services.create_batch(
        models=list(two_models), prompt_set=prompt_set, seeds=[0], chunk_size=10, inference_batch_size=4
    )
    assert batch.chunk_size == 8


@pytest.mark.parametrize(("spec", "seeds"), [("0-3", [0, 1, 2, 3]), ("5, 1-2 9", [5, 1, 2, 9]), ("42", [42])])
def test_seed_specs(spec, seeds):
    assert services.parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec", ["", "a", "3-1", "1-x"])
def test_bad_seed_specs(spec):
    with pytest.raises(services.BatchError):
        services.parse_seeds(spec)


def test_generate_command_rejects_unknown_names(two_models, prompt_set):
    with pytest.raises(CommandError, match="Unknown model"):
        call_command("generate", "--models", "base", "nope", "--prompt-set", "four", "--no-wait")
    with pytest.raises(CommandError, match="Unknown prompt set"):
        call_command("generate", "--models", "base", "--prompt-set", "nope", "--no-wait")
    with pytest.raises(CommandError, match="Cannot read seeds"):
        call_command("generate", "--models", "base", "--prompt-set", "four", "--seeds", "x", "--no-wait")
    with pytest.raises(CommandError, match="no batch 999"):
        call_command("generate", "--resume", "999", "--no-wait")
    assert TextToImageModel.objects.count() == 2


def test_chunk_tasks_with_stale_or_wrong_ids_do_no_harm(two_models, prompt_set):
    assert services.generate_chunk(987654, two_models[0].pk, 0) == services.ChunkResult(0, 0)  # batch deleted since
    batch = services.create_batch(models=[two_models[0]], prompt_set=prompt_set, seeds=[0])
    with pytest.raises(services.BatchError, match=f"Model {two_models[1].pk} is not part of batch {batch.pk}"):
        services.generate_chunk(batch.pk, two_models[1].pk, 0)
    assert services.generate_chunk(batch.pk, two_models[0].pk, 99) == services.ChunkResult(0, 0)  # past the end
    assert not GeneratedImage.objects.exists()


def test_clean_partial_images_removes_only_old_half_written_files():
    import os
    import time
    from io import StringIO

    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    from generation.storage import content_addressed_name

    storage = storages["images"]
    image = storage.save(content_addressed_name("ab" * 32), ContentFile(b"\x89PNG complete"))
    folder = os.path.dirname(storage.path(image))
    old, fresh = os.path.join(folder, ".tmp-old123.part"), os.path.join(folder, ".tmp-new456.part")
    try:
        for path in (old, fresh):
            with open(path, "wb") as f:
                f.write(b"\x89PNG trunc")
        an_hour_ago = time.time() - 3700
        os.utime(old, (an_hour_ago, an_hour_ago))

        out = StringIO()
        call_command("clean_partial_images", "--dry-run", stdout=out)
        assert old in out.getvalue() and "would remove 1 half-written file(s)" in out.getvalue() and os.path.exists(old)

        out = StringIO()
        call_command("clean_partial_images", stdout=out)
        assert "removed 1 half-written file(s)" in out.getvalue()
        assert not os.path.exists(old)
        assert os.path.exists(fresh), "a file a worker may still be writing stays"
        assert storage.open(image).read() == b"\x89PNG complete", "images are never touched"
        with pytest.raises(CommandError, match="older than a minute"):
            call_command("clean_partial_images", "--older-than", "5")
    finally:
        # Files outlive the test's transaction: leave no made-up "image" for other tests that read every PNG.
        for path in (old, fresh, storage.path(image)):
            if os.path.exists(path):
                os.unlink(path)


def test_generate_with_reuse_finds_the_batch_of_that_name_instead_of_adding_another(two_models, prompt_set):
    # --no-wait: the chunks are only queued (on commit, which a test transaction never reaches); no worker needed.
    def generate(*extra, seeds="0-1"):
        call_command(
            *"generate --models base tuned --prompt-set four --seeds".split(),
            seeds,
            "--name",
            "demo",
            "--no-wait",
            *extra,
        )

    generate("--reuse")
    generate("--reuse")  # `make demo` run again
    assert GenerationBatch.objects.filter(name="demo").count() == 1
    generate("--reuse", seeds="0-2")  # other images under the same name: a batch of their own
    generate()  # without --reuse a new batch, as before
    assert GenerationBatch.objects.filter(name="demo").count() == 3
