"""What a rater's browser receives for an image tells nothing about its model or whether it is gold.

The pixels are the comparison; everything around them -- byte length, headers, PNG layout, response time -- must
be the same for both models and for gold decoys, or a bot (or a curious rater) can tell the models apart, or pass
every gold check, without looking. The leak test measures it the way an attacker would: cross-validated classifiers
on those features, against the truth the server knows.
"""

import io
import time
import zlib

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from annotation import services
from annotation.models import Assignment, Participation
from generation.pipelines import png_chunk_types

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_rate_limits")]

# Balanced accuracy a classifier may reach on features that carry nothing: chance is 0.5; with ~150 samples per
# task and the best of two cross-validated classifiers, noise stays well below this (a real leak scores ~1.0).
CHANCE_BOUND = 0.65


@pytest.fixture
def leak_campaign(make_campaign):
    """Two different models, both criteria, 4 prompts x 5 seeds (40 regular items), 20% gold; live."""
    return make_campaign(name="leak", seeds=[0, 1, 2, 3, 4], gold_share=0.2)


def _join(client, campaign) -> Participation:
    link = services.create_invite_link(campaign)
    url = reverse("rate:join", args=[link.token])
    client.get(url)
    response = client.post(url)
    assert response.status_code == 302
    return Participation.objects.get(token=response.url.split("/")[2])


def _observe(client, url) -> dict:
    """What the browser gets for one image, as features: length, headers, PNG layout, time to answer."""
    started = time.perf_counter()
    response = client.get(url)
    seconds = time.perf_counter() - started
    assert response.status_code == 200
    headers = tuple(sorted((k, v) for k, v in response.items() if k != "Date"))  # Date is the clock, for everyone
    return {
        "length": len(response.content),
        "content_length": int(response["Content-Length"]),
        "headers": headers,
        "layout": tuple(png_chunk_types(response.content)),
        "seconds": seconds,
        "body": response.content,
    }


def _rate_the_whole_campaign(campaign, raters: int = 8) -> tuple[list[dict], list[dict]]:
    """Raters answer through the pages until nothing is left, fetching every image as rater.js does.

    Returns (images, pairs): per image its observation and the truth (model A? gold decoy?); per regular pair the
    two observations and whether model A was on the left. Gold is answered right so nobody is excluded.
    """
    images, pairs = [], []
    people = [(Client(), None) for _ in range(raters)]
    people = [(client, _join(client, campaign)) for client, _ in people]
    fetched = set()
    active = True
    while active:
        active = False
        for client, participation in people:
            data = client.get(reverse("rate:tasks", args=[participation.token])).json()
            if data["done"]:
                continue
            active = True
            for task in data["tasks"]:
                if task["id"] in fetched:
                    continue
                fetched.add(task["id"])
                assignment = Assignment.objects.select_related("item").get(token=task["id"])
                seen = {side: _observe(client, task["images"][side]) for side in ("left", "right")}
                for side, observation in seen.items():
                    shows_a = (side == "left") == assignment.a_on_left
                    images.append(
                        {
                            **observation,
                            "gold_decoy": assignment.item.is_gold and not shows_a,
                            "model_a": shows_a and not assignment.item.is_gold,
                            "gold_item": assignment.item.is_gold,
                        }
                    )
                if not assignment.item.is_gold:
                    pairs.append({"left": seen["left"], "right": seen["right"], "a_on_left": assignment.a_on_left})
            task = data["tasks"][0]
            assignment = Assignment.objects.select_related("item").get(token=task["id"])
            choice = "left" if assignment.a_on_left else "right"  # the intact side on gold; any answer elsewhere
            client.post(
                reverse("rate:vote", args=[participation.token]),
                {"task": task["id"], "choice": choice, "seconds": 1},
                content_type="application/json",
            )
    return images, pairs


def _category(values) -> np.ndarray:
    index = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=float)


def _image_features(rows) -> np.ndarray:
    return np.column_stack(
        [
            [r["length"] for r in rows],
            [r["content_length"] for r in rows],
            _category(r["headers"] for r in rows),
            _category(r["layout"] for r in rows),
            [r["seconds"] for r in rows],
        ]
    )


def best_cv_accuracy(X: np.ndarray, y: np.ndarray) -> float:
    """The best 5-fold cross-validated balanced accuracy of a logistic regression and a small decision tree.

    The tree covers threshold rules (larger is model A; gold is smaller or larger than any real image).
    """
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    classifiers = [
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        DecisionTreeClassifier(max_depth=3, random_state=0),
    ]
    return max(cross_val_score(c, X, y, cv=folds, scoring="balanced_accuracy").mean() for c in classifiers)


def test_a_classifier_on_what_the_raters_browser_receives_does_no_better_than_chance(leak_campaign):
    images, pairs = _rate_the_whole_campaign(leak_campaign)
    regular = [r for r in images if not r["gold_item"]]
    assert len(pairs) == 160 and sum(r["gold_decoy"] for r in images) >= 20

    X_pairs = np.hstack([_image_features([p["left"] for p in pairs]), _image_features([p["right"] for p in pairs])])
    X_pairs = np.column_stack([X_pairs, X_pairs[:, 0] - X_pairs[:, 5]])  # the size difference, for the linear model
    accuracy = {
        "left image is model A (regular pairs)": best_cv_accuracy(X_pairs, np.array([p["a_on_left"] for p in pairs])),
        "image is model A (regular images)": best_cv_accuracy(
            _image_features(regular), np.array([r["model_a"] for r in regular])
        ),
        "image is a gold decoy (all images)": best_cv_accuracy(
            _image_features(images), np.array([r["gold_decoy"] for r in images])
        ),
    }
    timing_only = {
        "gold decoy from response time alone": best_cv_accuracy(
            np.array([[r["seconds"]] for r in images]), np.array([r["gold_decoy"] for r in images])
        ),
    }
    print("\nbalanced accuracy (chance 0.5):", {**accuracy, **timing_only})
    assert all(a <= CHANCE_BOUND for a in accuracy.values()), accuracy
    assert all(a <= CHANCE_BOUND for a in timing_only.values()), timing_only
    # Stronger than any classifier: apart from the pixels, every image arrives the same.
    assert len({r["length"] for r in images}) == 1 and len({r["content_length"] for r in images}) == 1
    assert len({r["headers"] for r in images}) == 1 and len({r["layout"] for r in images}) == 1


def _png(seed: int, size=(24, 16), **info) -> bytes:
    from PIL import PngImagePlugin

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=meta)
    return buffer.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_padded_png_has_exactly_the_length_asked_the_same_pixels_and_no_metadata():
    from generation.pipelines import padded_png

    small, large = _png(0, (8, 8)), _png(1, (64, 64), model="zebracorn-alpha-7q")
    length = len(large) + 12
    for original in (small, large):
        padded = padded_png(original, length)
        assert len(padded) == length
        assert png_chunk_types(padded) == ["IHDR", "IDAT", "paDd", "IEND"]  # the text chunk naming a model is gone
        assert b"zebracorn" not in padded
        assert np.array_equal(_pixels(padded), _pixels(original))
        Image.open(io.BytesIO(padded)).verify()  # every chunk's CRC checks out
        offset = 8
        while offset < len(padded):  # and by hand: PIL's verify skips unknown chunks
            size = int.from_bytes(padded[offset : offset + 4], "big")
            kind_and_body = padded[offset + 4 : offset + 8 + size]
            assert padded[offset + 8 + size : offset + 12 + size] == zlib.crc32(kind_and_body).to_bytes(4, "big")
            offset += 12 + size
    with pytest.raises(ValueError, match="more than"):
        padded_png(small, len(small) + 11)  # no room for the padding chunk's own 12 bytes


def test_an_encoders_many_idat_chunks_become_one():
    from generation.pipelines import padded_png

    # PIL splits large image data into several IDAT chunks; their number would say how large it was.
    big = _png(2, (400, 400))
    assert png_chunk_types(big).count("IDAT") > 1
    padded = padded_png(big, len(big) + 12)
    assert png_chunk_types(padded) == ["IHDR", "IDAT", "paDd", "IEND"]
    assert np.array_equal(_pixels(padded), _pixels(big))
