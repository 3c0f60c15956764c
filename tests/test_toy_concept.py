import numpy as np
from PIL import Image

from lorakit.toy import concept, scorer, world


def test_shipped_dataset_is_the_drawn_one(tmp_path):
    shipped = concept.dataset_path()
    fresh = concept.write_dataset(tmp_path)
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in fresh.iterdir())
    assert 5 <= len([n for n in names if n.endswith(".png")]) <= 10
    for png in fresh.glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(shipped / png.name)))
        assert (shipped / png.with_suffix(".txt").name).read_text() == png.with_suffix(".txt").read_text()


def test_captions_use_the_trigger_and_the_scorer_sees_the_concept():
    for png in sorted(concept.dataset_path().glob("*.png")):
        text = png.with_suffix(".txt").read_text().strip()
        assert f" {concept.TRIGGER} " in text
        assert scorer.matches(Image.open(png), text)
        assert scorer.score(Image.open(png))["shape"] == concept.SHAPE


def test_scorer_recognises_500_drawn_concepts():
    scenes = world.sample_scenes(500, seed=21, shapes=(concept.SHAPE,))
    right = sum(scorer.score(world.render(s)) == scorer.expected(s) for s in scenes)
    assert right / len(scenes) >= 0.99


def test_concept_is_not_confused_with_base_shapes():
    # drawn base shapes are never read as the concept
    scenes = world.sample_scenes(300, seed=22)
    assert sum(scorer.score(world.render(s))["shape"] == concept.SHAPE for s in scenes) == 0
