import numpy as np
import pytest
from PIL import Image, ImageFilter

from lorakit.toy import scorer, world


def _accuracy(scenes, blur=0.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    right = 0
    for s in scenes:
        img = world.render(s)
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        arr = np.asarray(img, np.float32) / 255 + rng.normal(0, noise, (32, 32, 3)) if noise else img
        right += scorer.score(np.clip(arr, 0, 1) if noise else arr) == scorer.expected(s)
    return right / len(scenes)


def test_scorer_reads_500_drawn_scenes():
    assert _accuracy(world.sample_scenes(500, seed=11, shapes=world.ALL_SHAPES)) >= 0.99


def test_scorer_survives_blur_and_noise():
    assert _accuracy(world.sample_scenes(300, seed=12, shapes=world.ALL_SHAPES), blur=0.8, noise=0.04) >= 0.98


@pytest.mark.slow
def test_scorer_large_sample_with_heavy_blur():
    scenes = world.sample_scenes(2000, seed=13, shapes=world.ALL_SHAPES)
    assert _accuracy(scenes) >= 0.995
    assert _accuracy(scenes, blur=1.0, noise=0.06) >= 0.98


def test_scorer_at_64_pixels():
    scenes = world.sample_scenes(60, seed=14, shapes=world.ALL_SHAPES)
    assert all(scorer.score(world.render(s, 64)) == scorer.expected(s) for s in scenes)


def test_empty_image_has_no_shape():
    got = scorer.score(Image.new("RGB", (32, 32), (128, 128, 128)))
    assert got == {"shape": "none", "color": "none", "background": "gray"}


def test_matches_caption_and_scene():
    s = world.Scene("cross", "yellow", "black", 0.6, 0.5, 0.5)
    img = world.render(s)
    assert scorer.matches(img, s)
    assert scorer.matches(img, "a yellow cross on a black background")
    assert scorer.matches(img, "a yellow cross")
    assert not scorer.matches(img, "a red cross on a black background")
    assert scorer.matches(img, "a red cross on a black background", fields={"shape", "background"})


def test_accepts_arrays_in_both_ranges():
    s = world.Scene("square", "green", "white", 0.5, 0.4, 0.6)
    arr = world.render_array(s)
    assert scorer.score(arr) == scorer.score(arr * 255) == scorer.expected(s)
