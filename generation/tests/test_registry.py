import json
import shutil

import pytest
from django.core.management import CommandError, call_command

from generation import pipelines, services
from generation.models import TextToImageModel

pytestmark = pytest.mark.django_db


def copy_pipeline(src, tmp_path):
    dst = tmp_path / "pipe"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("kind", "pipeline_class"),
    [("sd", "StableDiffusionPipeline"), ("sd2", "StableDiffusionPipeline"), ("sdxl", "StableDiffusionXLPipeline")],
)
def test_registers_sd_family_pipelines_with_native_resolution_and_fingerprint(tiny_pipeline_dir, kind, pipeline_class):
    model = services.register_model(name=f"m-{kind}", pipeline_path=str(tiny_pipeline_dir(kind, 0)))
    assert model.pipeline_class == pipeline_class
    assert (model.default_width, model.default_height) == (64, 64)  # tiny: 8x8 latents x VAE factor 8
    assert len(model.weights_fingerprint) == 64
    assert model.weights_fingerprint == pipelines.fingerprint_directory(tiny_pipeline_dir(kind, 0))[0]
    assert model.source == TextToImageModel.Source.REGISTERED and model.parent is None


def test_fingerprint_changes_with_one_weight_byte(tiny_pipeline_dir, tmp_path):
    path = copy_pipeline(tiny_pipeline_dir("sd", 0), tmp_path)
    before, _ = pipelines.fingerprint_directory(path)
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert pipelines.fingerprint_directory(path)[0] != before


def test_models_with_different_weights_have_different_fingerprints(tiny_pipeline_dir):
    a = services.register_model(name="a", pipeline_path=str(tiny_pipeline_dir("sd", 0)))
    b = services.register_model(name="b", pipeline_path=str(tiny_pipeline_dir("sd", 1)))
    assert a.weights_fingerprint != b.weights_fingerprint


def register_error(path) -> str:
    with pytest.raises(services.ModelRegistrationError) as info:
        services.register_model(name="x", pipeline_path=str(path))
    assert not TextToImageModel.objects.exists()
    return str(info.value)


def test_missing_path_is_a_clear_error(tmp_path):
    assert "does not exist" in register_error(tmp_path / "nope")


def test_a_file_is_not_a_pipeline(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert "from_single_file" in register_error(f)


def test_folder_without_model_index_is_not_a_pipeline(tmp_path):
    assert "no model_index.json" in register_error(tmp_path)


def test_corrupt_model_index(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    assert "not a valid diffusers model index" in register_error(tmp_path)


def test_non_text_to_image_pipeline_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]})
    )
    assert "not a text-to-image pipeline" in register_error(tmp_path)


def test_missing_weights_and_components_are_all_listed(tiny_pipeline_dir, tmp_path):
    path = copy_pipeline(tiny_pipeline_dir("sd", 0), tmp_path)
    (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(path / "vae")
    message = register_error(path)
    assert "unet/ has no weights" in message and "vae/ is missing" in message


def test_duplicate_name_is_refused(tiny_pipeline_dir):
    services.register_model(name="x", pipeline_path=str(tiny_pipeline_dir("sd", 0)))
    with pytest.raises(services.ModelRegistrationError, match="already exists"):
        services.register_model(name="x", pipeline_path=str(tiny_pipeline_dir("sd", 1)))


def test_register_command_reports_errors_and_success(tiny_pipeline_dir, tmp_path, capsys):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("register_model", "bad", str(tmp_path / "missing"))
    call_command("register_model", "good", str(tiny_pipeline_dir("sd", 0)), "--steps", "12", "--scheduler", "euler")
    model = TextToImageModel.objects.get(name="good")
    assert model.default_parameters == {
        "steps": 12,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "scheduler": "euler",
    }
    assert "Registered good" in capsys.readouterr().out
