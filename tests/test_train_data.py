"""Training data without a model: buckets never distort, captions, folders, TOML config, batch order, caches."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lorakit.data import (BatchPlan, BucketSettings, Subset, TensorStore, TrainingData, augment, load_dataset_config,
                          make_buckets, nearest_bucket, pixels, place, scan, subsets_in, with_trigger)
from lorakit.data.buckets import check_size
from lorakit.errors import LoraKitError


def _img(path, w, h, color=(200, 30, 30)):
    Image.new("RGB", (w, h), color).save(path)
    return path


# --- buckets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("res,step", [(512, 64), (1024, 32), (768, 64), (64, 16)])
def test_buckets_respect_area_and_step(res, step):
    buckets = make_buckets(res, step)
    assert (res, res) in buckets
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert w * h <= res * res
    # every bucket is nearly full: one more step in height would overflow (or hit the side cap)
    for w, h in buckets:
        assert (h + step) * w > res * res or h + step > 2 * res or w * h >= 0.75 * res * res


def test_bucketing_never_distorts():
    """Uniform scale then crop: the kept region has the image's own aspect ratio (within a pixel),
    and the bucket's aspect is the nearest available to the image's."""
    rng = random.Random(0)
    buckets = make_buckets(512, 64)
    worst_scale_gap, worst_ar = 0.0, 0.0
    for _ in range(2000):
        w, h = rng.randint(200, 4000), rng.randint(200, 4000)
        b = nearest_bucket(w, h, buckets)
        p = place(w, h, b)
        sx, sy = p.resized[0] / w, p.resized[1] / h
        worst_scale_gap = max(worst_scale_gap, abs(sx - sy) / max(sx, sy))
        assert p.resized[0] >= b[0] and p.resized[1] >= b[1]
        top, left = p.crop
        assert 0 <= left <= p.resized[0] - b[0] and 0 <= top <= p.resized[1] - b[1]
        # one side is not cropped at all (within rounding): the image just covers the bucket
        assert min(p.resized[0] - b[0], p.resized[1] - b[1]) <= 1
        ar_err = abs(math.log((b[0] / b[1]) / (w / h)))
        best = min(abs(math.log((c[0] / c[1]) / (w / h))) for c in buckets)
        assert ar_err == pytest.approx(best)
        if 0.5 <= w / h <= 2:
            worst_ar = max(worst_ar, ar_err)
    # rounding only: the two scales agree within one pixel's worth
    assert worst_scale_gap < 1 / 200 + 1e-9
    # the crop is bounded by half the widest gap between neighbouring bucket shapes
    logs = sorted(math.log(c[0] / c[1]) for c in buckets if 0.45 <= c[0] / c[1] <= 2.2)
    half_gap = max(b - a for a, b in zip(logs, logs[1:])) / 2
    assert worst_ar <= half_gap + 1e-9 and half_gap < 0.15


def test_a_circle_stays_a_circle(tmp_path):
    """Pixels end to end: a circle drawn in a wide image is still round after bucketing."""
    w, h = 900, 500
    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).ellipse((350, 150, 550, 350), fill="black")  # 200 px circle
    path = tmp_path / "wide.png"
    im.save(path)
    buckets = make_buckets(256, 32)
    placement = place(w, h, nearest_bucket(w, h, buckets))
    from lorakit.data.folders import ImageItem

    t = pixels(ImageItem(path, "", Subset(tmp_path)), placement, False)
    dark = (t.mean(0) < 0).numpy()
    ys, xs = np.nonzero(dark)
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(bw - bh) <= 1, (bw, bh)
    assert t.shape[1:] == (placement.bucket[1], placement.bucket[0])
    flipped = pixels(ImageItem(path, "", Subset(tmp_path)), placement, True)
    assert torch.equal(flipped, t.flip(-1))


def test_too_small_image_is_refused(tmp_path):
    with pytest.raises(LoraKitError, match="too small"):
        check_size(tmp_path / "x.png", 100, 80, (512, 512), 2.0)
    check_size(tmp_path / "x.png", 300, 300, (512, 512), 2.0)


# --- captions ----------------------------------------------------------------------------------------
def test_trigger_prepended_once():
    assert with_trigger("a dog, grass", "sks") == "sks, a dog, grass"
    assert with_trigger("sks, a dog", "sks") == "sks, a dog"
    assert with_trigger("a photo of sks dog on a beach", "sks dog") == "a photo of sks dog on a beach"
    assert with_trigger("sksx, a dog", "sks") == "sks, sksx, a dog"
    assert with_trigger("a dog", None) == "a dog"


def test_shuffle_keeps_trigger_and_kept_tokens():
    cap = "sks, a dog, red collar, grass, sunny, park"
    seen = set()
    for seed in range(50):
        out = augment(cap, random.Random(seed), trigger="sks", shuffle=True, keep_tokens=1)
        parts = out.split(", ")
        assert parts[:2] == ["sks", "a dog"]
        assert sorted(parts) == sorted(cap.split(", "))
        seen.add(out)
    assert len(seen) > 10


def test_caption_dropout_rate():
    rng = random.Random(0)
    dropped = sum(augment("sks, dog", rng, trigger="sks", dropout=0.3) == "" for _ in range(4000))
    assert 0.27 < dropped / 4000 < 0.33


# --- folders -----------------------------------------------------------------------------------------
def test_repeat_folders_and_captions(tmp_path):
    root = tmp_path / "photos"
    (root / "10_sks dog").mkdir(parents=True)
    (root / "2_style").mkdir()
    _img(root / "10_sks dog" / "a.png", 64, 64)
    (root / "10_sks dog" / "a.txt").write_text("a dog on grass\n")
    _img(root / "10_sks dog" / "b.jpg", 64, 64)  # no caption: the folder's class tokens
    _img(root / "2_style" / "c.png", 64, 64)
    (root / "2_style" / "c.caption").write_text("painting")
    _img(root / "top.png", 64, 64)
    subsets = subsets_in(root)
    assert [(s.name, s.repeats) for s in subsets] == [("photos", 1), ("10_sks dog", 10), ("2_style", 2)]
    items = {it.path.name: it.caption for s in subsets for it in scan(s)}
    assert items == {"top.png": "", "a.png": "a dog on grass", "b.jpg": "sks dog", "c.png": "painting"}


@pytest.mark.parametrize("case", ["empty", "orphan", "unreadable", "missing"])
def test_bad_folders_stop_with_one_line(tmp_path, case):
    d = tmp_path / "d"
    d.mkdir()
    if case == "orphan":
        _img(d / "a.png", 64, 64)
        (d / "ghost.txt").write_text("no image")
    elif case == "unreadable":
        (d / "broken.png").write_bytes(b"not a png at all")
    elif case == "missing":
        d = tmp_path / "nope"
    with pytest.raises(LoraKitError) as e:
        for s in subsets_in(d):
            scan(s)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg
    expected = {"empty": "no images", "orphan": "no image of the same name", "unreadable": "cannot read image",
                "missing": "does not exist"}[case]
    assert expected in msg


def test_truncated_image_fails_when_decoded(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    _img(d / "ok.png", 64, 64)
    data = (d / "ok.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    items = scan(Subset(d))
    from lorakit.data.buckets import place as _place

    cut = next(it for it in items if it.path.name == "cut.png")
    with pytest.raises(LoraKitError, match="cannot read image"):
        pixels(cut, _place(64, 64, (64, 64)), False)


# --- TOML dataset config -------------------------------------------------------------------------------
def test_toml_dataset_config(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "dogs").mkdir()
    _img(tmp_path / "photos" / "a.png", 64, 64)
    _img(tmp_path / "dogs" / "d.png", 64, 64)
    cfg = tmp_path / "data.toml"
    cfg.write_text("""
[general]
shuffle_caption = true
keep_tokens = 1
[[datasets]]
resolution = 64
batch_size = 2
  [[datasets.subsets]]
  image_dir = "photos"
  num_repeats = 5
  class_tokens = "sks dog"
  flip_aug = true
  [[datasets.subsets]]
  image_dir = "dogs"
  is_reg = true
""")
    dc = load_dataset_config(cfg, defaults=Subset(tmp_path, caption_dropout=0.1))
    assert dc.options == {"resolution": 64, "batch_size": 2}
    a, b = dc.subsets
    assert (a.dir, a.repeats, a.class_tokens, a.flip, a.shuffle_caption, a.keep_tokens, a.caption_dropout) == \
        (tmp_path / "photos", 5, "sks dog", True, True, 1, 0.1)
    assert b.is_reg and not b.flip
    cfg.write_text("[[subsets]]\nimage_dir = 'photos'\nbogus = 1\n")
    with pytest.raises(LoraKitError, match="unknown subset option 'bogus'"):
        load_dataset_config(cfg)
    cfg.write_text("[[datasets.subsets]]\nimage_dir = 'photos'\n[[datasets.subsets]]\nimage_dir = 'dogs'\n"
                   "is_reg = true\n")  # no [[datasets]] header: one dataset
    assert [(s.dir.name, s.is_reg) for s in load_dataset_config(cfg).subsets] == [("photos", False), ("dogs", True)]
    cfg.write_text("datasets = 3\n")
    with pytest.raises(LoraKitError, match=r"data.toml.*\[\[datasets\]\] tables"):
        load_dataset_config(cfg)


# --- batch order ---------------------------------------------------------------------------------------
def test_batches_are_bucket_pure_deterministic_and_disjoint():
    buckets = [(64, 64)] * 5 + [(96, 64)] * 4 + [(64, 96)] * 3
    plan = BatchPlan(buckets, [2] * 12, batch_size=2, seed=7)
    again = BatchPlan(buckets, [2] * 12, batch_size=2, seed=7)
    e0 = plan.epoch(0)
    assert e0 == again.epoch(0) and plan.epoch(1) != e0
    for batch in e0:
        assert len({buckets[i] for i in batch}) == 1
    counts = np.bincount([i for b in e0 for i in b], minlength=12)
    assert (counts == 2).all()  # every image seen `repeats` times per epoch
    # two processes read disjoint batches that together are the single-process stream
    n = plan.batches_per_epoch
    single = [plan.at(m)[1] for m in range(2 * n)]
    two = [plan.at(m, r, 2)[1] for m in range(n) for r in range(2)]
    assert single == two


def test_training_data_samples(tmp_path):
    for i, (w, h) in enumerate([(64, 64), (96, 64), (64, 96)]):
        _img(tmp_path / f"i{i}.png", w, h)
        (tmp_path / f"i{i}.txt").write_text(f"thing {i}, red, round")
    s = Subset(tmp_path, repeats=2, shuffle_caption=True, flip=True)
    data = TrainingData([s], BucketSettings(64, 16), batch_size=1, trigger="sks", seed=3)
    assert data.tag_frequency()[tmp_path.name]["sks"] == 3
    assert len(data.variants()) == 6  # flip doubles what the latent cache holds
    e, inst, reg = data.batch(5)
    e2, inst2, _ = data.batch(5)
    assert [x.caption for x in inst] == [x.caption for x in inst2] and not reg
    assert all(x.caption.startswith("sks, ") for x in inst)
    flips = {data.batch(m)[1][0].flip for m in range(20)}
    assert flips == {True, False}


# --- caches --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_tensor_store(tmp_path, mode):
    store = TensorStore(mode, tmp_path / "c", max_items=2)
    t = {"latents": torch.randn(4, 8, 8)}
    assert store.get("k") is None
    store.put("k", t)
    assert "k" in store and torch.equal(store.get("k")["latents"], t["latents"])
    if mode == "memory":
        store.put("a", t)
        store.put("b", t)
        assert "k" not in store  # least recently used goes first
    else:
        assert not list((tmp_path / "c").rglob("*.tmp"))
