"""The text cache of a training run: with fixed captions it holds every caption for the whole run
(the text encoders go once it is filled), it is refused up front when it cannot fit in RAM, and it
holds each tensor once (SD 3.x's T5 sequence is part of its `hidden`, Flux's is its `hidden`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import tiny_flux_pipeline  # noqa: E402
from sd3_support import tiny_sd3_pipeline  # noqa: E402
from train_support import config, make_images, one_thread, tiny_model_dir  # noqa: E402

from lorakit.cli import main  # noqa: E402
from lorakit.data import TensorStore  # noqa: E402
from lorakit.train import loop  # noqa: E402

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
CAPTIONS = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("textcache")


@pytest.fixture(scope="module")
def images(root):
    """Five images, five different captions."""
    return make_images(root / "images", sizes=((32, 32),) * CAPTIONS)


@pytest.fixture(scope="module")
def models(root):
    tiny_flux_pipeline().save_pretrained(root / "flux")
    tiny_sd3_pipeline().save_pretrained(root / "sd3")
    return {"sd1": tiny_model_dir(root, "sd1"), "flux": root / "flux", "sd3": root / "sd3"}


def _captions(images: Path) -> list[str]:
    return sorted(p.read_text() for p in images.glob("*.txt"))


def test_fixed_captions_beyond_the_store_limit_all_stay_for_the_whole_run(models, images, tmp_path, monkeypatch):
    """A store limit of 2 (standing for the 4096 entries a cache of varying captions keeps) must not
    apply to fixed captions: the encoders are released once they are cached, and every one of the
    five captions is read again during the run."""

    class Limited(TensorStore):
        def __init__(self, mode="memory", directory=None, max_items=None):
            super().__init__(mode, directory, max_items=2 if max_items else None)

    monkeypatch.setattr(loop, "TensorStore", Limited)
    trainer = loop.Trainer(config(models["sd1"], images, tmp_path, steps=2 * CAPTIONS, train_text_encoder=False))
    trainer.run()  # each caption twice (one image per batch), long after the text encoder went
    assert trainer.model.pipe.text_encoder is None
    seen = {s.caption for m in range(2 * CAPTIONS) for s in trainer.data.batch(m)[1]}
    assert len(seen) == CAPTIONS and len(trainer.texts._mem) == CAPTIONS

    from lorakit.models import load_model
    from lorakit.train.conditioning import Conditioner

    want = Conditioner(load_model(str(models["sd1"])).pipe, "sd1").encode(sorted(seen))
    for i, caption in enumerate(sorted(seen)):
        got = trainer.texts.get(trainer._text_key(caption))
        assert torch.allclose(got["hidden"], want["hidden"][i], atol=1e-6)


def _train_argv(model, images, out, *extra):
    return [str(a) for a in ["train", "--model", model, "--data", images, "--out", out, "--steps", 1,
                             "--resolution", 32, "--bucket-step", 8, "--no-progress", "--no-tensorboard",
                             "--no-train-text-encoder", *extra]]


def test_text_cache_that_cannot_fit_is_refused_before_any_caching(models, images, tmp_path, monkeypatch, capsys):
    """Five captions of 77 tokens × the CLIP width in fp32: one byte less free RAM than that is refused
    (exit 2, one line, naming --cache-text disk, no run folder); exactly that much trains."""
    import lorakit.fit_check

    width = json.loads((models["sd1"] / "text_encoder" / "config.json").read_text())["hidden_size"]
    need = CAPTIONS * 77 * width * 4
    monkeypatch.setattr(lorakit.fit_check, "training_bytes", lambda *a, **k: 0)  # only the text cache is measured here
    free = {"bytes": need - 1}
    monkeypatch.setattr(lorakit.fit_check, "available_bytes", lambda device="cpu": free["bytes"])
    out = tmp_path / "a" / "lora.safetensors"
    out.parent.mkdir()
    assert main(_train_argv(models["sd1"], images, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"the text cache of {CAPTIONS} captions needs at least" in err and "--cache-text disk" in err, err
    assert list(out.parent.iterdir()) == []  # refused before the run folder, before any latent was cached

    free["bytes"] = need
    assert main(_train_argv(models["sd1"], images, out)) == 0
    capsys.readouterr()
    assert main(_train_argv(models["sd1"], images, tmp_path / "b" / "lora.safetensors", "--cache-text", "disk")) == 0


def _reference(family: str, pipe, caption: str) -> dict[str, torch.Tensor]:
    """The pipeline's own encode_prompt: (sequence, pooled) and T5's last hidden state alone."""
    if family == "flux":
        hidden, pooled, _ = pipe.encode_prompt(caption, None, device="cpu", max_sequence_length=32)
        ids = pipe.tokenizer_2(caption, padding="max_length", max_length=32, truncation=True,
                               return_tensors="pt").input_ids
        return {"hidden": hidden[0], "pooled": pooled[0], "t5": pipe.text_encoder_2(ids)[0][0]}
    hidden, _, pooled, _ = pipe.encode_prompt(caption, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=77)
    ids = pipe.tokenizer_3(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return {"hidden": hidden[0], "pooled": pooled[0], "t5": pipe.text_encoder_3(ids)[0][0]}


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("clip_lora", [False, True], ids=["frozen-text", "clip-lora"])
def test_disk_text_cache_holds_each_tensor_once(models, images, tmp_path, family, clip_lora):
    """--cache-text disk on SD 3.x and Flux: without a text-encoder LoRA each caption's file holds the
    conditioning (sequence and pooled vector) and nothing twice; with a CLIP LoRA only T5's sequence
    (CLIP runs again with gradients). The tensors equal the pipeline's own encoding."""
    from lorakit.models import load_model

    trainer = loop.Trainer(config(models[family], images, tmp_path, steps=2, cache_text="disk",
                                  train_text_encoder=clip_lora))
    trainer.run()
    files = sorted((trainer.run_dir / "cache" / "text").rglob("*.safetensors"))
    assert len(files) == CAPTIONS
    pipe = load_model(str(models[family])).pipe
    with torch.no_grad():
        for caption in _captions(images):
            got = trainer.texts.get(trainer._text_key(caption))
            want = _reference(family, pipe, caption)
            assert set(got) == ({"t5"} if clip_lora else {"hidden", "pooled"})
            for k in got:
                assert got[k].shape == want[k].shape and torch.allclose(got[k], want[k], atol=1e-5), (caption, k)
