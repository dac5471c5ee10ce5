"""The mini-Emu world's renderer, hidden appeal function and faithfulness oracle."""

from dataclasses import replace

import numpy as np
import pytest

from world.appeal import appeal_score, appeal_terms
from world.oracle import CaptionError, check, faithfulness, parse_caption, scene_for_seed
from world.scenes import COLOURS, SHAPES, background_choices, render


def test_a_seed_always_renders_the_same_scene_and_pixels():
    a, b = scene_for_seed(123), scene_for_seed(123)
    assert a == b
    assert np.array_equal(render(a), render(b))
    assert render(a).shape == (64, 64, 3) and render(a).dtype == np.uint8
    assert not np.array_equal(render(a), render(scene_for_seed(124)))


def test_captions_follow_the_grammar_and_parse_back():
    for seed in range(300):
        scene = scene_for_seed(seed)
        parsed = parse_caption(scene.caption())
        assert (parsed.count, parsed.colour, parsed.shape, parsed.position, parsed.background) == (
            scene.count,
            scene.colour,
            scene.shape,
            scene.position,
            scene.background,
        )


@pytest.mark.parametrize(
    "text", ["", "a red circle", "a pink circle on a blue background", "five red circles on a blue background"]
)
def test_text_outside_the_grammar_is_refused_by_name(text):
    with pytest.raises(CaptionError, match="not a caption of the mini-Emu grammar"):
        parse_caption(text)


def test_the_oracle_is_exact_on_the_worlds_renders():
    for seed in range(1000):
        scene = scene_for_seed(seed)
        assert all(check(render(scene), scene.caption()).values()), (seed, scene.caption())


def test_the_oracle_notices_each_attribute_the_image_does_not_show():
    wrong = {"colour": 0, "shape": 0, "count": 0, "background": 0, "position": 0}
    tried = dict.fromkeys(wrong, 0)
    for seed in range(300):
        scene = scene_for_seed(seed)
        pixels = render(scene)
        other_colour = next(c for c in COLOURS if c not in (scene.colour, scene.background))
        variants = {
            "colour": replace(scene, colour=other_colour),
            "shape": replace(scene, shape=next(s for s in SHAPES if s != scene.shape)),
            "count": replace(scene, count=scene.count % 3 + 1),
            "background": replace(
                scene, background=next(c for c in background_choices(scene.colour) if c != scene.background)
            ),
        }
        if scene.position in ("left", "right"):
            variants["position"] = replace(scene, position={"left": "right", "right": "left"}[scene.position])
        for attribute, lie in variants.items():
            tried[attribute] += 1
            wrong[attribute] += not check(pixels, lie.caption())[attribute]
    assert all(wrong[a] == tried[a] for a in tried), (wrong, tried)
    assert faithfulness(render(scene_for_seed(1)), scene_for_seed(1).caption()) == 1.0


def test_most_of_the_web_is_mediocre_and_a_few_percent_photogenic():
    scores = np.array([appeal_score(render(scene_for_seed(seed))) for seed in range(1000)])
    assert 0.4 < np.median(scores) < 0.6
    assert 0.02 <= np.mean(scores >= 0.7) <= 0.08  # the "needles"
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_appeal_rewards_what_its_documentation_says():
    scene = scene_for_seed(7)
    clean = replace(
        scene,
        exposure=1.0,
        haze=0.0,
        specks=(),
        count=1,
        position=None,
        offset=(0.0, 0.0),
        background_saturation=0.35,
        background_value=0.55,
        subject_saturation=0.9,
        subject_value=0.95,
        scale=1.0,
    )
    base = appeal_score(render(clean))
    assert appeal_score(render(replace(clean, haze=0.4))) < base
    assert appeal_score(render(replace(clean, exposure=1.5))) < base
    assert appeal_score(render(replace(clean, exposure=0.5))) < base
    assert appeal_score(render(replace(clean, background_saturation=1.0))) < base
    assert appeal_score(render(replace(clean, offset=(0.2, 0.15)))) < base
    assert appeal_score(render(replace(clean, specks=((0.1, 0.1, 0.3), (0.9, 0.85, 0.6), (0.85, 0.1, 0.1))))) < base
    assert set(appeal_terms(render(clean))) == {
        "exposure",
        "contrast",
        "harmony",
        "composition",
        "clutter",
        "sharpness",
        "cleanliness",
    }
