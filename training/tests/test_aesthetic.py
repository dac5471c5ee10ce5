"""LAION-layout aesthetic head: file format, and training from absolute and pairwise Needle ratings."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from training.aesthetic import (
    AestheticHead,
    AestheticHeadError,
    AestheticMLP,
    l2_normalise,
    rating_to_score,
    train_aesthetic_head,
)

LAION_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


def random_head(dim: int = 32, seed: int = 0) -> AestheticHead:
    torch.manual_seed(seed)
    return AestheticHead(AestheticMLP(dim))


def laion_state_dict(dim: int, seed: int = 0) -> OrderedDict:
    """Built by hand, as the published sac+logos+ava1-l14-linearMSE.pth is laid out."""
    generator = torch.Generator().manual_seed(seed)
    sizes = [(1024, dim), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = OrderedDict()
    for index, (fan_out, fan_in) in zip((0, 2, 4, 6, 7), sizes):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    return state


def synthetic(dim: int, count: int, seed: int):
    """Embeddings whose "aesthetic" is a known linear function of the normalised embedding."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(1234).normal(size=dim)
    embeddings = rng.normal(size=(count, dim)).astype(np.float32)
    return embeddings, l2_normalise(embeddings) @ direction


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_round_trip_is_identical(tmp_path, suffix):
    head = random_head()
    embeddings = np.random.default_rng(0).normal(size=(10, 32))
    path = head.save(tmp_path / f"head{suffix}")
    loaded = AestheticHead.load(path)
    np.testing.assert_array_equal(loaded.predict(embeddings), head.predict(embeddings))
    state = torch.load(path, weights_only=True) if suffix == ".pth" else None
    if state is not None:
        assert list(state) == LAION_KEYS  # nothing but the LAION keys, so LAION's own code loads it


def test_hand_built_laion_state_dict_loads_and_scores_normalised_embeddings(tmp_path):
    state = laion_state_dict(768)
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    head = AestheticHead.load(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    assert head.input_dim == 768
    embeddings = np.random.default_rng(1).normal(size=(4, 768)) * 7.0
    x = torch.from_numpy(l2_normalise(embeddings))
    for index in (0, 2, 4, 6, 7):  # no activations: the published head is a stack of Linear layers
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    np.testing.assert_allclose(head.predict(embeddings), x[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    # The scale of the embedding does not matter: the head normalises.
    np.testing.assert_allclose(head.predict(embeddings / 7.0), head.predict(embeddings), atol=1e-5)


def test_wrong_layouts_are_explained(tmp_path):
    state = laion_state_dict(64)
    wrong_shape = dict(state, **{"layers.2.weight": torch.zeros(64, 1024)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(AestheticHeadError, match=r"layers.2.weight has shape \(64, 1024\), expected \(128, 1024\)"):
        AestheticHead.load(tmp_path / "shape.pth")

    # A head with ReLUs between layers shifts the indices: layers.3 instead of layers.2, ...
    relu_variant = {
        f"layers.{i}.{p}": v
        for (k, v), i, p in zip(state.items(), (0, 0, 3, 3, 6, 6, 8, 8, 9, 9), ("weight", "bias") * 5)
    }
    torch.save(relu_variant, tmp_path / "relu.pth")
    with pytest.raises(AestheticHeadError, match="missing layers.2.bias, layers.2.weight.*unexpected layers.3"):
        AestheticHead.load(tmp_path / "relu.pth")

    torch.save({"linear.weight": torch.zeros(1, 768)}, tmp_path / "linear.pth")
    with pytest.raises(AestheticHeadError, match="not a LAION aesthetic-predictor head"):
        AestheticHead.load(tmp_path / "linear.pth")

    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(AestheticHeadError, match="cannot be read as a state dict"):
        AestheticHead.load(tmp_path / "junk.pth")
    with pytest.raises(AestheticHeadError, match="does not exist"):
        AestheticHead.load(tmp_path / "absent.pth")
    with pytest.raises(AestheticHeadError, match="takes 32-d CLIP embeddings but got 16-d"):
        random_head(32).predict(np.ones((2, 16)))


def test_rating_scale():
    np.testing.assert_allclose(rating_to_score([1, 3, 5]), [1.0, 5.5, 10.0])


def test_absolute_ratings_train_a_head_that_ranks_held_out_images():
    dim = 32
    embeddings, truth = synthetic(dim, 400, seed=0)
    z = (truth - truth.mean()) / truth.std()
    noise = np.random.default_rng(5).normal(scale=0.3, size=len(z))
    ratings = np.clip(np.round(3 + 1.2 * z + noise), 1, 5)  # integer 1-5 stars, as raters give them
    ratings[::17] = np.nan  # unrated images are ignored
    training = train_aesthetic_head(embeddings, ratings, epochs=30, batch_size=64, seed=0)
    assert training.kind == "absolute"
    assert training.metrics["validation_spearman"] > 0.85
    held_out, held_out_truth = synthetic(dim, 300, seed=99)
    predictions = training.head.predict(held_out)
    assert spearmanr(predictions, held_out_truth).statistic > 0.9
    assert 1.0 < np.median(predictions) < 10.0  # on the 1-10 scale

    again = train_aesthetic_head(embeddings, ratings, epochs=30, batch_size=64, seed=0)
    np.testing.assert_array_equal(again.head.predict(held_out), predictions)  # deterministic with a seed
    assert again.metrics == training.metrics


def test_pairwise_preferences_train_a_head_that_ranks_held_out_images():
    dim = 32
    embeddings, truth = synthetic(dim, 400, seed=0)
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 400, 1500), rng.integers(0, 400, 1500)
    a, b = a[a != b], b[a != b]
    first_wins = rng.random(len(a)) < 1 / (1 + np.exp(-3 * (truth[a] - truth[b])))  # Bradley-Terry raters
    pairs = np.stack([np.where(first_wins, a, b), np.where(first_wins, b, a)], axis=1)
    training = train_aesthetic_head(embeddings, pairs, epochs=10, batch_size=128, learning_rate=3e-3, seed=0)
    assert training.kind == "pairwise"
    assert training.metrics["validation_accuracy"] > 0.75
    held_out, held_out_truth = synthetic(dim, 300, seed=99)
    predictions = training.head.predict(held_out)
    assert spearmanr(predictions, held_out_truth).statistic > 0.9
    on_training = training.head.predict(embeddings)
    assert abs(on_training.mean() - 5.5) < 0.3 and abs(on_training.std() - 1.5) < 0.3  # rescaled onto 1-10


def test_bad_ratings_are_refused():
    embeddings = np.random.default_rng(0).normal(size=(10, 8))
    with pytest.raises(AestheticHeadError, match="must lie in 1-5"):
        train_aesthetic_head(embeddings, np.full(10, 7.0))
    with pytest.raises(AestheticHeadError, match="one per image"):
        train_aesthetic_head(embeddings, np.full(9, 3.0))
    with pytest.raises(AestheticHeadError, match="outside 0-9 or compare an image with itself"):
        train_aesthetic_head(embeddings, np.array([[0, 1], [3, 3]]))
    with pytest.raises(AestheticHeadError, match="zero or not finite"):
        train_aesthetic_head(np.zeros((10, 8)), np.full(10, 3.0))
