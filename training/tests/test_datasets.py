"""Curated datasets: loading, content hash, preprocessing, and the errors a curator sees."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from training.datasets import CuratedDatasetError, crop_mode, load_curated_dataset, preprocess
from training.tests.curated_datasets import make_curated_dataset


@pytest.fixture
def dataset_copy(curated_dataset, tmp_path):
    return shutil.copytree(curated_dataset, tmp_path / "copy")


def test_loads_images_with_their_captions_in_file_order(curated_dataset):
    dataset = load_curated_dataset(curated_dataset)
    assert len(dataset) == 8
    assert [i.file_name for i in dataset.images] == [f"{i:04d}.png" for i in range(8)]
    assert dataset.images[0].caption == "a red circle on a green background"
    assert dataset.open_image(0).mode == "RGB"


def test_content_hash_names_the_content_not_the_place(curated_dataset, dataset_copy):
    original = load_curated_dataset(curated_dataset)
    assert load_curated_dataset(dataset_copy).content_hash == original.content_hash

    lines = (dataset_copy / "captions.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"file_name": "0003.png", "text": "another caption"})
    (dataset_copy / "captions.jsonl").write_text("\n".join(lines))
    assert load_curated_dataset(dataset_copy).content_hash != original.content_hash

    make_curated_dataset(dataset_copy, count=8, size=(40, 40))  # same names and captions, other pixels
    assert load_curated_dataset(dataset_copy).content_hash != original.content_hash


def test_preprocessing_resizes_the_short_side_crops_and_mirrors(curated_dataset):
    dataset = load_curated_dataset(curated_dataset)
    image = dataset.open_image(0)  # 48 x 40
    pixels = preprocess(image, resolution=32, mode="center", file_name="0000.png", flip=False)
    mirrored = preprocess(image, resolution=32, mode="center", file_name="0000.png", flip=True)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    np.testing.assert_array_equal(mirrored, pixels[:, :, ::-1])

    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 200, 100))  # left half blue, right half red
    first = preprocess(wide, resolution=32, mode=crop_mode(False, seed=0), file_name="a.png", flip=False)
    again = preprocess(wide, resolution=32, mode=crop_mode(False, seed=0), file_name="a.png", flip=False)
    np.testing.assert_array_equal(first, again)  # a random crop is fixed per (seed, image), so latents can be cached
    crops = {
        preprocess(wide, resolution=32, mode=crop_mode(False, seed=s), file_name="a.png", flip=False).tobytes()
        for s in range(8)
    }
    assert len(crops) > 1


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "0003.png").write_bytes(b"not a png at all"), r"0003\.png is not a readable image"),
        (lambda d: (d / "0003.png").write_bytes((d / "0003.png").read_bytes()[:60]), r"0003\.png"),
        (lambda d: Image.new("RGB", (8, 8)).save(d / "extra.png"), r"caption missing for .*extra\.png: add a line"),
        (lambda d: (d / "captions.jsonl").unlink(), r"has no captions\.jsonl"),
        (lambda d: (d / "0005.png").unlink(), r"names 0005\.png, which is not in"),
        (
            lambda d: (d / "captions.jsonl").write_text('{"file_name": "0000.png", "text": ""}\n'),
            r"line 1: the caption of 0000\.png is missing",
        ),
        (lambda d: (d / "captions.jsonl").write_text("{oops\n"), r"line 1 is not valid JSON"),
    ],
    ids=[
        "garbage-image",
        "truncated-image",
        "uncaptioned-image",
        "no-captions-file",
        "caption-without-image",
        "empty-caption",
        "bad-json",
    ],
)
def test_bad_datasets_are_refused_naming_the_file(dataset_copy, damage, message):
    damage(dataset_copy)
    with pytest.raises(CuratedDatasetError, match=message):
        dataset = load_curated_dataset(dataset_copy)
        for index in range(len(dataset)):  # some damage only shows when the pixels are decoded
            dataset.open_image(index)
