"""The quality-tuning loop on a tiny SD pipeline: learning, caching, accumulation, checkpoints, export, bad input."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from generation.pipelines import PipelineDirectoryError, fingerprint_directory, load_pipeline, render
from training import checkpoints
from training.metrics import read_metrics
from training.quality_tuning import (
    QualityTuningConfig,
    RunMismatchError,
    UnsupportedBasePipelineError,
    check_base_pipeline,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def unet_weights(directory):
    return load_file(directory / UNET_FILE)


def max_abs_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_loss_goes_down_on_a_learnable_setting(tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path):
    config = dataclasses.replace(
        tiny_config, batch_size=8, max_steps=30, learning_rate=1e-3, checkpoint_every=30, validation_every=30
    )
    train(config, tiny_pipeline_dir("sd", 0), curated_dataset, tmp_path / "run")
    losses = [m["loss"] for m in read_metrics(tmp_path / "run")]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.75 * first, (first, last)


def test_the_dataset_is_encoded_once_and_the_cache_is_keyed_by_what_changes_it(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path, encoder_calls
):
    base, cache = tiny_pipeline_dir("sd", 0), tmp_path / "cache"
    config = dataclasses.replace(tiny_config, random_flip=True)
    at_start = {}

    def note_start(event):
        if event.event == "started":
            at_start.update(vae=encoder_calls["vae"], text_encoder=encoder_calls["text_encoder"])

    first = train(config, base, curated_dataset, tmp_path / "first", cache_dir=cache, progress=note_start)
    # 8 images in one encoding batch: one VAE pass per flip variant, one text encoder pass; then 6 steps over
    # 3 epochs without any.
    assert at_start == {"vae": 2, "text_encoder": 1}
    assert (encoder_calls["vae"], encoder_calls["text_encoder"]) == (2, 1)
    assert read_metrics(tmp_path / "first")[-1]["epoch"] == 2
    assert len(first.cache_files) == 3 and all(f.parent == cache for f in first.cache_files)

    second = train(config, base, curated_dataset, tmp_path / "second", cache_dir=cache)
    assert (encoder_calls["vae"], encoder_calls["text_encoder"]) == (2, 1)  # another run, same cache: no encoding
    assert second.cache_files == first.cache_files

    bigger = train(
        dataclasses.replace(config, resolution=64), base, curated_dataset, tmp_path / "bigger", cache_dir=cache
    )
    assert (encoder_calls["vae"], encoder_calls["text_encoder"]) == (4, 1)  # new latents; captions did not change
    assert set(bigger.cache_files[:2]).isdisjoint(first.cache_files) and bigger.cache_files[2] == first.cache_files[2]
    assert load_file(bigger.cache_files[0])["mean"].shape == (8, 4, 8, 8)
    assert load_file(first.cache_files[0])["mean"].shape == (8, 4, 4, 4)
    assert sorted(p.name for p in cache.iterdir()) == sorted({p.name for p in first.cache_files + bigger.cache_files})


def test_accumulated_micro_batches_make_the_same_update_as_one_batch(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path
):
    base = tiny_pipeline_dir("sd", 0)
    config = dataclasses.replace(tiny_config, batch_size=8, max_steps=3, learning_rate=1e-4, checkpoint_every=3)
    one = train(config, base, curated_dataset, tmp_path / "one", cache_dir=tmp_path / "cache")
    four = train(
        dataclasses.replace(config, gradient_accumulation_steps=4),
        base,
        curated_dataset,
        tmp_path / "four",
        cache_dir=tmp_path / "cache",
    )
    for a, b in zip(read_metrics(one.run_dir), read_metrics(four.run_dir), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)  # same gradient, not just the same direction
    before = load_file(base / UNET_FILE)
    after_one, after_four = unet_weights(one.checkpoint), unet_weights(four.checkpoint)
    change = max_abs_diff(after_one, before)
    # Float rounding differs with the summation order, and Adam's first steps magnify it for near-zero gradients.
    assert max_abs_diff(after_one, after_four) < 0.05 * change
    mean_diff = np.mean([(after_one[k] - after_four[k]).abs().mean().item() for k in before])
    mean_change = np.mean([(after_one[k] - before[k]).abs().mean().item() for k in before])
    assert mean_diff < 1e-3 * mean_change


def test_checkpoints_resume_after_a_cancel_and_export_a_loadable_pipeline(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path
):
    base = tiny_pipeline_dir("sd", 0)
    config = dataclasses.replace(
        tiny_config, use_ema=True, ema_decay=0.9, random_flip=True, snr_gamma=5.0, lr_warmup_steps=2, learning_rate=1e-4
    )
    reference = train(config, base, curated_dataset, tmp_path / "reference", cache_dir=tmp_path / "cache")

    events = []
    stop_after = 2
    stopped = train(
        config,
        base,
        curated_dataset,
        tmp_path / "run",
        cache_dir=tmp_path / "cache",
        progress=events.append,
        should_stop=lambda: events[-1].step >= stop_after,
    )
    assert stopped.stopped and stopped.step == 2
    assert [e.event for e in events] == ["started", "step", "step", "checkpoint", "stopped"]
    assert [p.name for p in checkpoints.list_checkpoints(stopped.run_dir)] == ["step-000002"]
    assert (stopped.run_dir / "checkpoints" / "latest").read_text() == "step-000002\n"

    resumed = train(config, base, curated_dataset, tmp_path / "run", cache_dir=tmp_path / "cache")
    assert (resumed.resumed_from, resumed.step, resumed.stopped) == (2, 6, False)
    assert [m["step"] for m in read_metrics(resumed.run_dir)] == [1, 2, 3, 4, 5, 6]
    for name in ("unet", "unet_ema"):
        expected = load_file(reference.checkpoint / name / "diffusion_pytorch_model.safetensors")
        actual = load_file(resumed.checkpoint / name / "diffusion_pytorch_model.safetensors")
        assert max_abs_diff(expected, actual) == 0.0, name
    assert [m["loss"] for m in read_metrics(resumed.run_dir)] == [m["loss"] for m in read_metrics(reference.run_dir)]
    assert sorted(p.name for p in (resumed.run_dir / "validation").iterdir()) == [
        "grid.png",
        "prompts.json",
        "step-000003",
        "step-000006",
    ]
    assert (resumed.run_dir / "loss.png").is_file()

    exported = checkpoints.export_pipeline(resumed.run_dir, None, tmp_path / "exported")
    assert (
        max_abs_diff(
            unet_weights(exported), load_file(resumed.checkpoint / "unet_ema/diffusion_pytorch_model.safetensors")
        )
        == 0
    )
    for frozen in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert fingerprint_directory(exported / frozen) == fingerprint_directory(base / frozen)
    loaded = load_pipeline(exported, expected_fingerprint=None, device="cpu")
    images, _ = render(
        loaded,
        ["a red circle on a blue background"],
        [0],
        {"scheduler": "default", "steps": 2, "guidance_scale": 5.0, "width": 32, "height": 32},
    )
    assert images[0].shape == (32, 32, 3) and images[0].std() > 0

    trained = checkpoints.export_pipeline(resumed.run_dir, 3, tmp_path / "step3", use_ema=False)
    assert max_abs_diff(unet_weights(trained), unet_weights(checkpoints.find_checkpoint(resumed.run_dir, 3))) == 0
    with pytest.raises(FileExistsError):
        checkpoints.export_pipeline(resumed.run_dir, None, tmp_path / "exported")
    with pytest.raises(checkpoints.CheckpointNotFoundError, match="no checkpoint at step 4"):
        checkpoints.export_pipeline(resumed.run_dir, 4, tmp_path / "nowhere")


def test_a_run_directory_keeps_its_settings_and_the_last_checkpoints(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path
):
    base = tiny_pipeline_dir("sd", 0)
    config = dataclasses.replace(tiny_config, checkpoint_every=2, keep_last_checkpoints=2)
    train(config, base, curated_dataset, tmp_path / "run")
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path / "run")] == ["step-000004", "step-000006"]
    with pytest.raises(RunMismatchError, match=r"learning_rate 1e-05 -> 0.001.*start a new run directory"):
        train(dataclasses.replace(config, learning_rate=1e-3), base, curated_dataset, tmp_path / "run")
    with pytest.raises(RunMismatchError, match="base model"):
        train(config, tiny_pipeline_dir("sd", 1), curated_dataset, tmp_path / "run")
    longer = train(dataclasses.replace(config, max_steps=8), base, curated_dataset, tmp_path / "run")
    assert (longer.resumed_from, longer.step) == (6, 8)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["max_steps"] == 8
    with checkpoints.run_directory_lock(tmp_path / "run"):  # as a second worker would find it
        with pytest.raises(checkpoints.RunInUseError, match=f"being trained by another process \\(pid {os.getpid()}"):
            train(dataclasses.replace(config, max_steps=10), base, curated_dataset, tmp_path / "run")


def _write_model_index(path, class_name, **components):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name, **components}))
    return path


@pytest.mark.parametrize(
    ("make_base", "error", "message"),
    [
        (lambda tmp, sd: tmp / "nowhere", PipelineDirectoryError, "does not exist"),
        (lambda tmp, sd: tmp, PipelineDirectoryError, "has no model_index.json"),
        (
            lambda tmp, sd: _write_model_index(
                tmp / "flux", "FluxPipeline", transformer=["diffusers", "FluxTransformer2DModel"]
            ),
            UnsupportedBasePipelineError,
            "holds a FluxPipeline; quality-tuning trains a StableDiffusionPipeline",
        ),
        (
            lambda tmp, sd: _write_model_index(tmp / "xl", "StableDiffusionXLPipeline"),
            UnsupportedBasePipelineError,
            "SDXL .* not supported yet",
        ),
        (
            lambda tmp, sd: _write_model_index(
                tmp / "no-unet", "StableDiffusionPipeline", vae=["diffusers", "AutoencoderKL"]
            ),
            UnsupportedBasePipelineError,
            "it has no unet",
        ),
        (
            lambda tmp, sd: shutil.rmtree(shutil.copytree(sd, tmp / "unet-gone") / "unet") or tmp / "unet-gone",
            PipelineDirectoryError,
            r"unet/ is missing",
        ),
    ],
    ids=["missing", "not-a-pipeline", "other-pipeline", "sdxl", "no-unet-in-index", "unet-folder-gone"],
)
def test_bad_base_pipelines_are_refused_before_training(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path, make_base, error, message
):
    base = make_base(tmp_path, tiny_pipeline_dir("sd", 0))
    with pytest.raises(error, match=message):
        train(tiny_config, base, curated_dataset, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_bad_dataset_stops_training_with_the_file_named(tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path):
    from training.datasets import CuratedDatasetError

    broken = shutil.copytree(curated_dataset, tmp_path / "broken")
    (broken / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(CuratedDatasetError, match=r"0002\.png is not a readable image.*remove it"):
        train(tiny_config, tiny_pipeline_dir("sd", 0), broken, tmp_path / "run")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 6, "gradient_accumulation_steps": 4}, "not a multiple of gradient_accumulation_steps"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"prediction_type": "sample"}, "prediction_type must be one of"),
        ({"resolution": 30}, "multiple of 8"),
    ],
)
def test_invalid_configs_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        QualityTuningConfig(**settings)


def test_an_epsilon_model_can_be_tuned_to_v_prediction_and_exports_saying_so(
    tiny_pipeline_dir, curated_dataset, tiny_config, tmp_path
):
    base = check_base_pipeline(tiny_pipeline_dir("sd", 0))
    assert base.prediction_type == "epsilon"
    config = dataclasses.replace(tiny_config, max_steps=2, prediction_type="v_prediction")
    result = train(config, base.path, curated_dataset, tmp_path / "run")
    assert json.loads((result.run_dir / "run.json").read_text())["config"]["prediction_type"] == "v_prediction"
    assert all(np.isfinite(m["loss"]) for m in read_metrics(result.run_dir))
    assert torch.isfinite(unet_weights(result.checkpoint)["conv_in.weight"]).all()
    exported = checkpoints.export_pipeline(result.run_dir, None, tmp_path / "exported")
    # Sampling must use the parameterisation the UNet now predicts.
    assert (
        json.loads((exported / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    )
