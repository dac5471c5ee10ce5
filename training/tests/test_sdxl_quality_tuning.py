"""Quality-tuning a tiny SDXL pipeline: learning, exact resume, the SDXL encoding cache, export, refusals."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from generation import services as generation_services
from generation.pipelines import fingerprint_directory, load_pipeline, render
from training import checkpoints
from training.datasets import crop_box, crop_mode
from training.metrics import read_metrics
from training.quality_tuning import UnsupportedBasePipelineError, check_base_pipeline, train
from training.tests.curated_datasets import TINY_CONFIG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNET_FILE = "diffusion_pytorch_model.safetensors"
CAPTION = "a red circle on a blue background"
# The curated images are 48x40 (w x h): at 32 px the shortest side is resized to 32, so the resized image is 38x32.
ORIGINAL_HEIGHT, ORIGINAL_WIDTH, RESIZED_WIDTH = 40, 48, 38

CONFIG = TINY_CONFIG  # 32 px: the smallest the tiny SDXL UNet takes


@pytest.fixture
def sdxl_base(tiny_pipeline_dir):
    return tiny_pipeline_dir("sdxl", 0)


def max_abs_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_sdxl_loss_goes_down_on_a_learnable_setting(sdxl_base, curated_dataset, tmp_path):
    config = dataclasses.replace(
        CONFIG, batch_size=8, max_steps=30, learning_rate=1e-3, checkpoint_every=30, validation_every=30
    )
    result = train(config, sdxl_base, curated_dataset, tmp_path / "run")
    losses = [m["loss"] for m in read_metrics(result.run_dir)]
    assert len(losses) == 30
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.75 * first, (first, last)
    assert sorted(p.name for p in (result.run_dir / "validation" / "step-000030").iterdir()) == ["00-seed0.png"]


def test_an_sdxl_run_cancelled_at_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_one(
    sdxl_base, curated_dataset, tmp_path
):
    # Everything that carries state across a resume, at once: EMA, flip draws, Min-SNR, warmup, accumulation.
    config = dataclasses.replace(
        CONFIG,
        use_ema=True,
        ema_decay=0.9,
        random_flip=True,
        center_crop=False,
        snr_gamma=5.0,
        lr_warmup_steps=2,
        learning_rate=1e-4,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
    )
    cache = tmp_path / "cache"
    reference = train(config, sdxl_base, curated_dataset, tmp_path / "reference", cache_dir=cache)

    events = []
    stopped = train(
        config,
        sdxl_base,
        curated_dataset,
        tmp_path / "run",
        cache_dir=cache,
        progress=events.append,
        should_stop=lambda: events[-1].step >= 3,
    )
    assert (stopped.stopped, stopped.step) == (True, 3)
    assert [p.name for p in checkpoints.list_checkpoints(stopped.run_dir)] == ["step-000003"]

    resumed = train(config, sdxl_base, curated_dataset, tmp_path / "run", cache_dir=cache)
    assert (resumed.resumed_from, resumed.step, resumed.stopped) == (3, 6, False)
    for name in ("unet", "unet_ema"):
        expected = load_file(reference.checkpoint / name / UNET_FILE)
        actual = load_file(resumed.checkpoint / name / UNET_FILE)
        assert max_abs_diff(expected, actual) == 0.0, name
    assert (
        max_abs_diff(load_file(reference.checkpoint / "unet" / UNET_FILE), load_file(sdxl_base / "unet" / UNET_FILE))
        > 0
    )
    assert [m["loss"] for m in read_metrics(resumed.run_dir)] == [m["loss"] for m in read_metrics(reference.run_dir)]
    assert all(np.isfinite(m["loss"]) for m in read_metrics(resumed.run_dir))
    assert sorted(p.name for p in (resumed.run_dir / "validation").iterdir()) == [
        "grid.png",
        "prompts.json",
        "step-000003",
        "step-000006",
    ]


def counts(calls):
    return calls["vae"], calls["text_encoder"], calls["text_encoder_2"]


def test_the_sdxl_cache_holds_pooled_embeddings_and_time_ids_and_is_reused(
    sdxl_base, tiny_pipeline_dir, curated_dataset, tmp_path, encoder_calls
):
    cache = tmp_path / "cache"
    config = dataclasses.replace(CONFIG, random_flip=True, center_crop=False, seed=5)
    first = train(config, sdxl_base, curated_dataset, tmp_path / "first", cache_dir=cache)
    # 8 images in one encoding batch: one VAE pass per flip variant, one pass of each text encoder (transformers'
    # CLIPTextModelWithProjection may run a CLIPTextModel inside, so text_encoder counts 1 or 2).
    encoded = counts(encoder_calls)
    assert encoded[0] == 2 and encoded[1] in (1, 2) and encoded[2] == 1

    as_is, mirrored, text = first.cache_files
    text_tensors = load_file(text)
    assert text_tensors["embeddings"].shape == (8, 77, 64)  # both encoders' penultimate states, 32 + 32
    assert text_tensors["pooled"].shape == (8, 32)  # text_encoder_2's projection
    with safe_open(text, framework="pt") as handle:
        key = handle.metadata()
    assert (
        key["kind"] == "sdxl-text-embeddings"
        and key["text_encoders"] == check_base_pipeline(sdxl_base).text_encoder_fingerprint
    )
    assert len(key["text_encoders"].split("+")) == 4  # both text encoders and both tokenizers

    # What StableDiffusionXLPipeline conditions on for the same caption at inference.
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_base, local_files_only=True)
    index = [image.caption for image in load_curated_images(curated_dataset)].index(CAPTION)
    with torch.no_grad():
        prompt_embeds, _, pooled, _ = pipe.encode_prompt(CAPTION, device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(text_tensors["embeddings"][index], prompt_embeds[0], atol=1e-6)
    assert torch.allclose(text_tensors["pooled"][index], pooled[0], atol=1e-6)

    # time ids: (original h, w, crop top, crop left, target h, w); the random crop is fixed per image, and the
    # mirrored variant measures the crop's corner in the mirrored image.
    mode = crop_mode(config.center_crop, config.seed)
    for file, flip in ((as_is, False), (mirrored, True)):
        time_ids = load_file(file)["time_ids"]
        assert time_ids.shape == (8, 6)
        for i, image in enumerate(load_curated_images(curated_dataset)):
            left, top, right, _ = crop_box(RESIZED_WIDTH, 32, 32, mode, image.file_name)
            expected = [ORIGINAL_HEIGHT, ORIGINAL_WIDTH, top, RESIZED_WIDTH - right if flip else left, 32, 32]
            assert time_ids[i].tolist() == expected
    lefts = load_file(as_is)["time_ids"][:, 3]
    assert len(set(lefts.tolist())) > 1  # the random crops really differ between images

    before = counts(encoder_calls)  # encode_prompt above ran the text encoders too
    second = train(config, sdxl_base, curated_dataset, tmp_path / "second", cache_dir=cache)
    assert counts(encoder_calls) == before  # the second run encoded nothing
    assert second.cache_files == first.cache_files

    # An SD run in the same cache directory gets files of its own: SD and SDXL caches never mix.
    sd = train(
        dataclasses.replace(config, max_steps=1),
        tiny_pipeline_dir("sd", 0),
        curated_dataset,
        tmp_path / "sd",
        cache_dir=cache,
    )
    assert set(sd.cache_files).isdisjoint(first.cache_files)
    assert set(load_file(sd.cache_files[-1])) == {"embeddings"} and set(load_file(sd.cache_files[0])) == {"mean", "std"}


def load_curated_images(path):
    from training.datasets import load_curated_dataset

    return load_curated_dataset(path).images


@pytest.mark.django_db
def test_an_exported_sdxl_checkpoint_registers_and_generates(sdxl_base, curated_dataset, tmp_path):
    config = dataclasses.replace(
        CONFIG, max_steps=2, checkpoint_every=2, validation_every=2, prediction_type="v_prediction", use_ema=True
    )
    result = train(config, sdxl_base, curated_dataset, tmp_path / "run")
    assert all(np.isfinite(m["loss"]) for m in read_metrics(result.run_dir))

    exported = checkpoints.export_pipeline(result.run_dir, None, tmp_path / "exported")
    assert (
        max_abs_diff(load_file(exported / "unet" / UNET_FILE), load_file(result.checkpoint / "unet_ema" / UNET_FILE))
        == 0
    )
    for frozen in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert fingerprint_directory(exported / frozen) == fingerprint_directory(sdxl_base / frozen)
    assert (
        json.loads((exported / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    )

    model = generation_services.register_model(
        name="sdxl-tuned", pipeline_path=str(exported), steps=2, guidance_scale=5.0
    )
    assert model.pipeline_class == "StableDiffusionXLPipeline"
    loaded = load_pipeline(exported, expected_fingerprint=model.weights_fingerprint, device="cpu")
    assert type(loaded.pipe).__name__ == "StableDiffusionXLPipeline"  # through AutoPipelineForText2Image
    images, _ = render(
        loaded, [CAPTION], [0], {"scheduler": "default", "steps": 2, "guidance_scale": 5.0, "width": 32, "height": 32}
    )
    assert images[0].shape == (32, 32, 3) and images[0].std() > 0


def _write_model_index(path, class_name, **components):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name, **components}))
    return path


CLIP = {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
CLIP_2 = {
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
}
UNET_VAE = {
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
}


@pytest.mark.parametrize(
    ("class_name", "components", "message"),
    [
        (
            "FluxPipeline",
            {"transformer": ["diffusers", "FluxTransformer2DModel"]},
            "holds a FluxPipeline; quality-tuning trains a StableDiffusionPipeline .* or a StableDiffusionXLPipeline",
        ),
        (
            "StableDiffusionXLImg2ImgPipeline",
            {**UNET_VAE, **CLIP_2},
            r"SDXL pipeline \(StableDiffusionXLImg2ImgPipeline\).*refiner, img2img, inpainting\) are not supported",
        ),
        (
            "StableDiffusionXLPipeline",
            {**UNET_VAE, **CLIP_2},
            "cannot be quality-tuned: it has no text_encoder; it has no tokenizer.*refiner",
        ),
        (
            "StableDiffusionXLPipeline",
            {**UNET_VAE, **CLIP, **CLIP_2, "text_encoder_2": ["transformers", "CLIPTextModel"]},
            "its text_encoder_2 is a CLIPTextModel, not a CLIPTextModelWithProjection",
        ),
    ],
    ids=["flux", "sdxl-img2img", "sdxl-refiner-layout", "sdxl-without-projection"],
)
def test_pipelines_other_than_sd_and_the_sdxl_base_are_refused_with_the_reason(
    tmp_path, class_name, components, message
):
    with pytest.raises(UnsupportedBasePipelineError, match=message):
        check_base_pipeline(_write_model_index(tmp_path / "base", class_name, **components))


def test_the_sdxl_base_is_accepted_with_all_its_text_components_fingerprinted(sdxl_base, tiny_pipeline_dir):
    base = check_base_pipeline(sdxl_base)
    assert base.is_sdxl and base.native_resolution == 64 and base.prediction_type == "epsilon"
    assert base.text_encoder_fingerprint.split("+") == [
        fingerprint_directory(sdxl_base / name)[0]
        for name in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    ]
    sd = check_base_pipeline(tiny_pipeline_dir("sd", 0))
    assert not sd.is_sdxl and len(sd.text_encoder_fingerprint.split("+")) == 2
