"""open_clip loading from local files and CLIP scores, on a tiny random-weight model (no download, no database)."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from training.clip_scoring import ClipLoadError, ClipScorer, load_clip, save_tiny_clip, tiny_clip_config

TEXTS = ["a red circle", "a blue square on a green background", "a photo of a dog", "", "a yellow star"]


def pictures(count: int = 5) -> list[Image.Image]:
    images = []
    for i in range(count):
        image = Image.new("RGB", (80 + 8 * i, 60), (30 * i, 200 - 30 * i, 90))
        ImageDraw.Draw(image).ellipse((10 + i, 10, 50, 45 + i), fill=(240, 20 * i, 30))
        images.append(image)
    return images


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=0)


@pytest.fixture(scope="module")
def registered_weights(tmp_path_factory, tiny_clip_dir):
    """The same weights as a bare .pt state dict, with the architecture registered under a name."""
    root = tmp_path_factory.mktemp("named")
    (root / "needle-test-tiny-clip.json").write_text(json.dumps(tiny_clip_config()), encoding="utf-8")
    open_clip.add_model_config(root / "needle-test-tiny-clip.json")
    from safetensors.torch import load_file

    torch.save(load_file(str(tiny_clip_dir / "open_clip_model.safetensors")), root / "weights.pt")
    return "needle-test-tiny-clip", root / "weights.pt"


def direct_cosines(model_name, weights, images, texts):
    """The CLIP cosine computed with open_clip alone: its own model, transform and tokenizer."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([preprocess(image) for image in images]))
        text_features = model.encode_text(tokenizer(texts))
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return (image_features * text_features).sum(dim=-1).numpy()


def test_named_architecture_and_weights_file_match_open_clip(registered_weights):
    name, weights = registered_weights
    scorer = load_clip(name, weights, batch_size=2)  # batches of 2: 3 forward passes for 5 images
    images = pictures()
    scores = scorer.scores(images, TEXTS)
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores / 100.0, direct_cosines(name, weights, images, TEXTS), atol=1e-5)
    np.testing.assert_array_equal(scorer.scores(images, TEXTS), scores)  # deterministic


def test_exported_directory_loads_the_same_model(tiny_clip_dir, registered_weights):
    name, weights = registered_weights
    from_dir = load_clip(None, tiny_clip_dir)
    from_file = load_clip(name, weights)
    images = pictures(3)
    np.testing.assert_allclose(from_dir.embed_images(images), from_file.embed_images(images), atol=1e-6)
    np.testing.assert_allclose(from_dir.embed_texts(TEXTS), from_file.embed_texts(TEXTS), atol=1e-6)
    assert from_dir.embed_dim == 32
    assert from_dir.weights_path.name == "open_clip_model.safetensors"


def test_embeddings_are_normalised_and_batched(tiny_clip_dir):
    scorer = load_clip(None, tiny_clip_dir, batch_size=2)
    calls = []
    original = scorer.model.encode_image
    scorer.model.encode_image = lambda batch, normalize=False: (
        calls.append(len(batch)) or original(batch, normalize=normalize)
    )
    embeddings = scorer.embed_images(pictures(5))
    assert calls == [2, 2, 1]
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert scorer.embed_images([]).shape == (0, 32)
    one_by_one = np.concatenate([scorer.embed_images([image]) for image in pictures(5)])
    np.testing.assert_allclose(one_by_one, embeddings, atol=1e-5)
    texts = scorer.embed_texts(TEXTS)
    np.testing.assert_allclose(
        ClipScorer.cosine_scores(embeddings, texts), scorer.scores(pictures(5), TEXTS), atol=1e-4
    )


def test_missing_file_and_directory_problems(tmp_path, tiny_clip_dir):
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip("ViT-B-32", tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipLoadError, match="without open_clip_config.json"):
        load_clip(None, tmp_path / "empty")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(ClipLoadError, match="no weights file"):
        load_clip(None, no_weights)
    with pytest.raises(ClipLoadError, match="architecture name"):
        load_clip(None, tiny_clip_dir / "open_clip_model.safetensors")


def test_wrong_model_name_is_named_with_a_suggestion(registered_weights):
    name, weights = registered_weights
    with pytest.raises(
        ClipLoadError, match="Unknown open_clip architecture 'needle-test-tiny-clp'.*needle-test-tiny-clip"
    ):
        load_clip("needle-test-tiny-clp", weights)
    with pytest.raises(ClipLoadError, match="local files"):
        load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", weights)


def test_mismatched_weights_name_the_tensors(tmp_path, registered_weights):
    name, _ = registered_weights
    other = save_tiny_clip(tmp_path / "wider", seed=1, width=96)
    with pytest.raises(ClipLoadError, match=r"do not fit .*'needle-test-tiny-clip'.*shape mismatch.*file \(") as error:
        load_clip(name, other / "open_clip_model.safetensors")
    assert "ln_final.weight: file (96,) vs model (64,)" in str(error.value)
    # A real ViT-B-32 on tiny weights: missing tensors are listed too.
    with pytest.raises(ClipLoadError, match="do not fit the open_clip architecture 'ViT-B-32'"):
        load_clip("ViT-B-32", other / "open_clip_model.safetensors")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipLoadError, match="cannot be read as a weights file"):
        load_clip(name, garbage)
