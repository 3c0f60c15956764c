"""`lorakit evaluate`'s learned measures with tiny CLIP and DINOv2 models built from configs here:
embedding shapes and ranges, similarities against the math done by hand, drift against strength,
the report files (JSON, HTML with every image inline, grid), and the note for a missing model."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.cli import main as cli
from lorakit.evaluation.run import evaluate
from lorakit.evaluation import encoders
from lorakit.evaluation.files import write_report
from lorakit.evaluation.prompts import default_prompts
from lorakit.evaluation.similarity import mean_pairwise
from lorakit.generate import LoraSpec
from lorakit.models import load_model

from conftest import tiny_model_with_lora
from evaluate_support import save_tiny_clip, save_tiny_dino

PROMPTS = ["zzt a cat", "a dog on a hill", "a red house"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-metrics")
    tiny_model_with_lora(root, rank=4, alpha=4, std=0.3, seed=0)
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = np.full((32, 32, 3), rng.integers(0, 255, 3), np.uint8)
        arr[8:24, 8:24] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(data / f"img{i}.png")
        (data / f"img{i}.txt").write_text("zzt a cat")
    return {"root": root, "model": root / "model", "lora": root / "a.safetensors", "data": data,
            "clip": save_tiny_clip(root / "clip"), "dino": save_tiny_dino(root / "dino")}


@pytest.fixture(scope="module")
def sweep(world):
    model = load_model(str(world["model"]))
    return evaluate(model, [LoraSpec(world["lora"], 1.0)], PROMPTS, strengths=[0.25, 0.5, 1], trigger="zzt", n=2,
                    seed=3, steps=3, sampler="ddim", progress=False, data=world["data"],
                    clip_model=str(world["clip"]), dino_model=str(world["dino"]), class_word="a")


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("kind", ["clip", "dino"])
def test_embeddings_shapes_ranges_and_identity(world, kind):
    encoder, note = encoders.load(kind, str(world[kind]))
    assert note is None and encoder is not None
    ims = _images(3)
    emb = encoder.images(ims)
    width = 16 if kind == "clip" else 32  # CLIP's projection; DINOv2's hidden size (its CLS token)
    assert emb.shape == (3, width)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert mean_pairwise(emb[:1], encoder.images([ims[0].copy()])) == pytest.approx(1.0, abs=1e-5)
    sims = emb @ emb.T
    assert (sims <= 1 + 1e-5).all() and (sims >= -1 - 1e-5).all()
    # every pair but the diagonal, by hand
    off = [float(sims[i, j]) for i in range(3) for j in range(3) if i != j]
    assert mean_pairwise(emb, emb, skip_diagonal=True) == pytest.approx(np.mean(off), abs=1e-6)
    if kind == "clip":
        text = encoder.texts(["a red square", "a cat"])
        assert text.shape == (2, 16)
        assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_sweep_figures_by_hand(world, sweep):
    by = {r.strength: r for r in sweep.rows}
    assert sweep.strengths == [0.0, 0.25, 0.5, 1.0] and sweep.own == [True, False, False]
    assert len(sweep.per_prompt) == 4 * 3 and sweep.notes == {}
    assert sweep.models == {"clip": str(world["clip"]), "dino": str(world["dino"])}
    # subject fidelity at strength 1, redone: own prompt's two images against the three training images
    dino, _ = encoders.load("dino", str(world["dino"]))
    data = [Image.open(p).convert("RGB") for p in sorted(world["data"].glob("*.png"))]
    expected = float((dino.images(sweep.images[(1.0, 0)]) @ dino.images(data).T).mean())
    assert by[1.0].subject_dino == pytest.approx(expected, abs=1e-5)
    # CLIP-T: each image against its prompt's text, the trigger replaced by the class word
    clip, _ = encoders.load("clip", str(world["clip"]))
    assert sweep.text_prompts[0] == "a a cat"
    text = clip.texts(["a a cat"])
    assert by[1.0].prompt_clip == pytest.approx(float((clip.images(sweep.images[(1.0, 0)]) @ text.T).mean()), abs=1e-5)
    for r in sweep.rows:
        for v in (r.subject_dino, r.subject_clip, r.prompt_clip, r.prompt_clip_other):
            assert v is not None and -1 <= v <= 1
    assert sweep.reference["images"] == 3 and -1 <= sweep.reference["dino"] <= 1


def test_drift_is_zero_at_strength_zero_and_grows(sweep):
    by = {r.strength: r for r in sweep.rows}
    for attr in ("drift_other", "drift_clip_other", "drift_dino_other", "drift_trigger", "drift_clip_trigger"):
        values = [getattr(by[s], attr) for s in (0.0, 0.25, 0.5, 1.0)]
        assert values[0] == 0.0, attr
        assert 0 < values[1] < values[2] < values[3], (attr, values)
    # pixel drift of one prompt, by hand
    row = next(r for r in sweep.per_prompt if r.strength == 1.0 and r.prompt == PROMPTS[1])
    diffs = [np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255
             for a, b in zip(sweep.images[(1.0, 1)], sweep.images[(0.0, 1)])]
    assert row.drift == pytest.approx(float(np.mean(diffs)), abs=1e-7)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.external = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and not str(attrs[key]).startswith("data:"):
                self.external.append((tag, attrs[key]))


def test_report_files_html_holds_every_image_inline(world, sweep, tmp_path):
    paths = write_report(sweep, tmp_path / "report")
    assert {p.name for p in paths.values()} == {"report.json", "report.html", "grid.png"}
    doc = json.loads(paths["json"].read_text())
    assert [r["strength"] for r in doc["rows"]] == [0.0, 0.25, 0.5, 1.0]
    assert doc["models"]["dino"] == str(world["dino"]) and doc["notes"] == {}
    parser = _Images()
    parser.feed(paths["html"].read_text())
    parser.close()
    assert parser.external == []
    generated = 4 * 3 * 2
    assert len(parser.srcs) == generated + 3 + 1  # every drawn image, the training images, the chart
    for src in parser.srcs:
        head, payload = src.split(",", 1)
        assert head in ("data:image/png;base64", "data:image/jpeg;base64")
        Image.open(io.BytesIO(base64.b64decode(payload))).verify()
    assert Image.open(paths["grid"]).size == (56 + 128 * 3, 28 + 128 * 4)


def test_missing_model_gives_the_note(world, tmp_path):
    model = load_model(str(world["model"]))
    report = evaluate(model, [LoraSpec(world["lora"], 1.0)], PROMPTS[:2], strengths=[1], trigger="zzt", steps=2,
                      sampler="ddim", progress=False, data=world["data"], clip_model=str(tmp_path / "no-clip"),
                      dino_model=str(world["dino"]))
    note = report.notes["clip"]
    assert "not available offline" in note and "CLIP-I" in note and "--clip-model" in note
    assert report.models["clip"] is None
    row = report.row(1.0)
    assert row.subject_clip is None and row.prompt_clip is None and row.drift_clip_other is None
    assert row.subject_dino is not None and row.drift_dino_other > 0  # the rest goes on
    html = write_report(report, tmp_path / "r")["html"].read_text()
    assert "not available offline" in html and 'class="note"' in html
    assert "note: CLIP model" in report.table()


def test_cli_writes_the_report_folder(world, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["evaluate", "--model", str(world["model"]), "--lora", str(world["lora"]), "--trigger", "zzt",
            "--prompt", "zzt a cat", "--prompt", "a dog", "--strengths", "1", "--steps", "2", "--sampler", "ddim",
            "--data", str(world["data"]), "--clip-model", str(world["clip"]), "--dino-model", "none",
            "--out", str(out)]
    assert cli(args) == 0
    text = capsys.readouterr().out
    assert "subject CLIP-I" in text and "DINOv2 not requested" in text
    assert {p.name for p in out.iterdir()} == {"report.json", "report.html", "grid.png"}
    doc = json.loads((out / "report.json").read_text())
    assert doc["notes"]["dino"].startswith("DINOv2 not requested")


def test_default_prompts():
    from lorakit.toy import concept, world as toy_world

    prompts, own = default_prompts("zqx", toy=True)
    assert own == [True] * 4 + [False] * 4
    trained = {(s.color, s.background) for s in concept.scenes()}
    for p, o in zip(prompts, own):
        fields = toy_world.parse_caption(p)
        assert (fields["shape"] == "ring") == o
        if o:
            assert (fields["color"], fields["background"]) not in trained  # a new context
    prompts, own = default_prompts("sks dog", class_prompts=["a photo of a dog"])
    assert prompts[0] == "a photo of a sks dog" and "a photo of a dog" in prompts and sum(own) == 4


def test_hub_id_loads_from_the_hub_cache_offline(world, tmp_path, monkeypatch):
    """A hub id is found in the hub cache's snapshot layout and read from there, with no network."""
    import shutil

    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-dino" / "snapshots" / ("0" * 40)
    shutil.copytree(world["dino"], snapshot)
    (tmp_path / "hub" / "models--someone--tiny-dino" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-dino" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert encoders.locate("someone/tiny-dino") == snapshot
    encoder, note = encoders.load("dino", "someone/tiny-dino")
    assert note is None and encoder.name == "someone/tiny-dino"
    direct, _ = encoders.load("dino", str(world["dino"]))
    ims = _images(2, seed=5)
    assert torch.allclose(encoder.images(ims), direct.images(ims), atol=1e-6)
    assert encoders.locate("someone/not-cached") is None
