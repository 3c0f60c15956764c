import numpy as np
import pytest

from lorakit.toy import world


def test_sampling_and_rendering_are_deterministic():
    a, b = world.sample_scenes(50, seed=7), world.sample_scenes(50, seed=7)
    assert a == b
    assert a != world.sample_scenes(50, seed=8)
    for s in a[:10]:
        assert np.array_equal(np.asarray(world.render(s)), np.asarray(world.render(s)))


def test_every_base_shape_colour_and_background_is_sampled():
    scenes = world.sample_scenes(400, seed=0)
    assert {s.shape for s in scenes} == set(world.SHAPES)
    assert {s.color for s in scenes} == set(world.COLORS)
    assert {s.background for s in scenes} == set(world.BACKGROUNDS)
    assert world.CONCEPT_SHAPE not in world.SHAPES


def test_shapes_stay_inside_the_image():
    for s in world.sample_scenes(300, seed=1, shapes=world.ALL_SHAPES):
        arr = world.render_array(s)
        bg = np.array(world.BACKGROUNDS[s.background]) / 255
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
        assert np.abs(border - bg).max() < 1e-6


@pytest.mark.parametrize("size", [32, 64])
def test_render_size_and_mode(size):
    img = world.render(world.Scene("triangle", "blue", "gray"), size)
    assert img.size == (size, size) and img.mode == "RGB"


def test_caption_round_trip():
    for s in world.sample_scenes(40, seed=2, shapes=world.ALL_SHAPES):
        text = world.caption(s)
        assert world.parse_caption(text) == {"shape": s.shape, "color": s.color, "background": s.background}
    assert world.caption(world.Scene("circle", "red", "white")) == "a red circle on a white background"
    assert world.caption(world.Scene("ring", "red", "white")) == f"a red {world.TRIGGER} on a white background"
    assert world.parse_caption("a blue square") == {"shape": "square", "color": "blue"}
    with pytest.raises(ValueError):
        world.parse_caption("a photo of a dog")


def test_prompts_cover_the_world():
    ps = world.prompts()
    assert len(ps) == len(set(ps)) == len(world.SHAPES) * len(world.COLORS) * len(world.BACKGROUNDS)
