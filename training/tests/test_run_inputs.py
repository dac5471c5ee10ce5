"""Bad input to quality-tuning runs gives clear errors, through services, the task, the form and the command."""

import dataclasses
import json
import shutil

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from generation import services as generation_services
from generation.models import TextToImageModel
from generation.pipelines import fingerprint_directory
from training import services
from training.config import QualityTuningConfig
from training.forms import QualityTuningRunForm
from training.models import CuratedDataset, QualityTuningRun
from training.tests.curated_datasets import TINY_RUN

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_copy(tiny_pipeline_dir, tmp_path):
    """A registered tiny SD model in a directory of its own, for tests that break it."""
    path = shutil.copytree(tiny_pipeline_dir("sd", 0), tmp_path / "own-sd")
    return generation_services.register_model(name="own-sd", pipeline_path=str(path))


def corrupt_copy(curated_dataset, tmp_path):
    folder = shutil.copytree(curated_dataset, tmp_path / "corrupt")
    (folder / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


# --- Datasets ----------------------------------------------------------------------------------


def test_a_dataset_with_a_corrupt_image_is_refused_with_the_file_named(curated_dataset, tmp_path, staff_client):
    folder = corrupt_copy(curated_dataset, tmp_path)
    with pytest.raises(services.TrainingError, match=r"0003\.png is not a readable image .* remove it and its line"):
        services.import_curated_dataset("broken", str(folder))
    with pytest.raises(CommandError, match=r"0003\.png is not a readable image"):
        call_command("quality_tune", "import-dataset", "broken", str(folder))
    page = staff_client.post(reverse("training:dataset_list"), {"name": "broken", "path": str(folder)}).content.decode()
    assert "0003.png is not a readable image" in page
    with pytest.raises(services.TrainingError, match="has no captions.jsonl"):
        services.import_curated_dataset("empty", str(tmp_path))
    assert not CuratedDataset.objects.exists()


def test_importing_freezes_the_hash_and_a_changed_folder_is_refused(curated_dataset, tmp_path, base_model, capsys):
    folder = shutil.copytree(curated_dataset, tmp_path / "mine")
    call_command("quality_tune", "import-dataset", "mine", str(folder))
    dataset = CuratedDataset.objects.get(name="mine")
    assert (
        dataset.image_count == 8 and len(dataset.content_hash) == 64 and dataset.content_hash in capsys.readouterr().out
    )
    with pytest.raises(services.TrainingError, match="already exists"):
        services.import_curated_dataset("mine", str(folder))
    run = services.create_run(base_model, dataset, **TINY_RUN)

    captions = (folder / "captions.jsonl").read_text().replace("a red circle", "a crimson circle")
    (folder / "captions.jsonl").write_text(captions)
    with pytest.raises(
        services.TrainingError, match="changed since it was frozen .* import the new contents as a new dataset"
    ):
        services.create_run(base_model, dataset, **TINY_RUN)
    # A run created before the change refuses it when its task starts, before any trainer runs.
    assert "failed" in services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "changed since it was frozen" in run.error and run.trainer_pid is None


# --- Base models -------------------------------------------------------------------------------


def test_an_sdxl_base_makes_a_run_and_other_sdxl_pipelines_are_not_supported_yet(tiny_pipeline_dir, dataset, tmp_path):
    sdxl = generation_services.register_model(name="sdxl", pipeline_path=str(tiny_pipeline_dir("sdxl", 0)))
    run = services.create_run(sdxl, dataset, **TINY_RUN)
    assert run.base_model == sdxl
    path = shutil.copytree(tiny_pipeline_dir("sdxl", 0), tmp_path / "sdxl-img2img")
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    TextToImageModel.objects.create(
        name="sdxl-img2img",
        pipeline_path=str(path),
        pipeline_class="StableDiffusionXLImg2ImgPipeline",
        weights_fingerprint=fingerprint_directory(path)[0],
    )
    with pytest.raises(services.TrainingError, match="Base model sdxl-img2img: .* SDXL pipeline .* not supported yet"):
        services.create_run(TextToImageModel.objects.get(name="sdxl-img2img"), dataset, **TINY_RUN)
    with pytest.raises(CommandError, match="not supported yet"):
        call_command("quality_tune", "start", "--base", "sdxl-img2img", "--dataset", "shapes", "--max-steps", "6")
    assert list(QualityTuningRun.objects.all()) == [run]


def test_a_base_that_is_not_a_stable_diffusion_pipeline_is_refused(tiny_pipeline_dir, tmp_path, dataset):
    path = shutil.copytree(tiny_pipeline_dir("sd", 0), tmp_path / "pixart")
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "_class_name": "PixArtAlphaPipeline"}))
    other = TextToImageModel.objects.create(
        name="pixart",
        pipeline_path=str(path),
        pipeline_class="PixArtAlphaPipeline",
        weights_fingerprint=fingerprint_directory(path)[0],
    )
    with pytest.raises(
        services.TrainingError, match="holds a PixArtAlphaPipeline; quality-tuning trains a StableDiffusionPipeline"
    ):
        services.create_run(other, dataset, **TINY_RUN)


def test_a_base_whose_directory_was_deleted_or_changed_is_refused(own_copy, dataset):
    run = services.create_run(own_copy, dataset, **TINY_RUN)
    scheduler = own_copy.pipeline_path + "/scheduler/scheduler_config.json"
    config = json.loads(open(scheduler).read())
    with open(scheduler, "w") as fh:
        json.dump({**config, "steps_offset": 7}, fh)
    with pytest.raises(
        services.TrainingError, match="changed since it was registered .* register the new weights as a new model"
    ):
        services.create_run(own_copy, dataset, **TINY_RUN)

    shutil.rmtree(own_copy.pipeline_path)
    with pytest.raises(services.TrainingError, match=r"Base model own-sd: .*own-sd does not exist"):
        services.create_run(own_copy, dataset, **TINY_RUN)
    # The task of a run created before the deletion fails with the reason, without starting a trainer.
    services.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "failed" and "no longer exists on this worker" in run.error and run.attempts == 1


# --- Settings ----------------------------------------------------------------------------------


def form_data(base="sd-base", dataset="shapes", **changes):
    form = QualityTuningRunForm()
    data = {
        name: field.initial
        for name, field in form.fields.items()
        if field.initial is not None and field.initial is not False
    }
    data.update(base_model=base, dataset=dataset, start_now="")
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_an_invalid_config_is_refused_by_the_form_next_to_its_field(staff_client, base_model, dataset):
    url = reverse("training:run_new")
    page = staff_client.get(url).content.decode()
    for default in ('value="64"', 'value="1e-05"', 'value="0.1"', 'value="15000"'):  # Emu's defaults, shown
        assert default in page
    response = staff_client.post(url, form_data(learning_rate="-0.001"))
    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors["learning_rate"] == ["learning_rate must be above 0 and at most 1, not -0.001 (Emu: 1e-05)"]
    response = staff_client.post(url, form_data(batch_size="6", gradient_accumulation_steps="4"))
    assert (
        "batch_size 6 is not a multiple of gradient_accumulation_steps 4"
        in response.context["form"].errors["batch_size"][0]
    )
    response = staff_client.post(url, form_data(base="sdxl-none"))
    assert "base_model" in response.context["form"].errors
    assert not QualityTuningRun.objects.exists()

    response = staff_client.post(
        url, form_data(**{k: str(v) for k, v in TINY_RUN.items()}, crop="random", random_flip="on")
    )
    run = QualityTuningRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("training:run_detail", args=[run.pk])
    assert run.status == "queued" and run.config["center_crop"] is False and run.config["random_flip"] is True
    assert run.config["learning_rate"] == 1e-5 and run.config["noise_offset"] == 0.1 and run.max_steps == 6


def test_an_invalid_config_is_refused_by_the_command(base_model, dataset):
    with pytest.raises(CommandError, match="learning_rate must be above 0"):
        call_command("quality_tune", "start", "--base", "sd-base", "--dataset", "shapes", "--learning-rate", "-1")
    with pytest.raises(CommandError, match="resolution must be a positive multiple of 8"):
        call_command("quality_tune", "start", "--base", "sd-base", "--dataset", "shapes", "--resolution", "30")
    with pytest.raises(CommandError, match="no registered model named 'nope'"):
        call_command("quality_tune", "start", "--base", "nope", "--dataset", "shapes")
    with pytest.raises(CommandError, match="no curated dataset named 'nope'"):
        call_command("quality_tune", "start", "--base", "sd-base", "--dataset", "nope")
    assert not QualityTuningRun.objects.exists()
    with pytest.raises(services.TrainingError, match="unknown quality-tuning settings: learning_speed"):
        services.create_run(base_model, dataset, learning_speed=1)


def test_the_trainer_command_line_carries_every_setting():
    from training.quality_tuning import _argument_parser

    config = QualityTuningConfig(
        resolution=32,
        batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=3e-6,
        snr_gamma=5.0,
        random_flip=True,
        center_crop=False,
        use_ema=True,
        ema_decay=0.999,
        keep_last_checkpoints=3,
        mixed_precision="bf16",
        prediction_type="v_prediction",
        validation_prompts=("a lighthouse at dusk", "a red apple"),
        validation_seeds=(0, 7),
        gradient_checkpointing=True,
        max_grad_norm=0.5,
    )
    stored = json.loads(json.dumps(config.to_dict()))  # as in the run's JSON field
    args = _argument_parser().parse_args(["--run-dir", "x", *services.config_flags(stored)])
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(QualityTuningConfig)
        if getattr(args, f.name) is not None
    }
    assert QualityTuningConfig.from_dict(values) == config
