"""Progress while a base loads: bytes of the tensors read, per named component, on a tiny model saved
as a single file and as a diffusers folder; the same updates reaching the page (gradio's tracked tqdm
for Generate, the training job's status for Train) and the caching passes as bars."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from safetensors import safe_open

from lorakit import progress
from lorakit.models import load_model, save_model
from lorakit.models.tiny import tiny_pipeline
from models_support import write_config_dir

# original-layout prefixes of the tiny files' parts (DESIGN.md), to count each part's bytes by hand
FILE_PARTS = {"sd1": {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.",),
                      "text_encoder": ("cond_stage_model.",)},
              "sdxl": {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.",),
                       "text_encoder": ("conditioner.embedders.0.",), "text_encoder_2": ("conditioner.embedders.1.",)}}


def tensor_bytes(path, prefixes=("",)) -> int:
    """numel × element size of the file's tensors under `prefixes`, from the tensors themselves."""
    with safe_open(str(path), framework="pt") as f:
        return sum(t.numel() * t.element_size() for t in (f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)))


def per_component(stages) -> dict[str, int]:
    """{component: bytes} from the updates a listener got: each component's bar starts where the last ended."""
    out, start, last = {}, 0, {}
    for s in stages:
        name = s.desc.rpartition(" · ")[2]
        if name not in last:
            start = max(last.values(), default=0)
        last[name] = s.done
        out[name] = s.done - start
    return out


@pytest.fixture(scope="module")
def pipes():
    return {f: tiny_pipeline(f, seed=3) for f in ("sd1", "sdxl")}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_load_counts_each_components_bytes(family, pipes, tmp_path):
    pipe = pipes[family]
    out = save_model(pipe, tmp_path / "m.safetensors", dtype=torch.float32)
    stages = []
    with progress.listening(stages.append):
        load_model(str(out), config_dir=write_config_dir(pipe, tmp_path / "configs"))
    assert stages[-1].total == stages[-1].done == tensor_bytes(out) > 0
    assert {s.unit for s in stages} == {"B"} and stages[0].desc.startswith("loading m.safetensors · ")
    expected = {name: tensor_bytes(out, p) for name, p in FILE_PARTS[family].items()}
    assert sum(expected.values()) == tensor_bytes(out)  # the prefixes cover the whole file
    assert per_component(stages) == expected
    assert all(b.done <= a.total and a.done <= b.done for a, b in zip(stages, stages[1:]))  # never backwards


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: the denoiser streamed in groups
def test_folder_load_counts_each_components_bytes(dtype, pipes, tmp_path):
    folder = save_model(pipes["sdxl"], tmp_path / "xl")
    parts = ("text_encoder", "text_encoder_2", "unet", "vae")
    expected = {p: sum(tensor_bytes(f) for f in (folder / p).glob("*.safetensors")) for p in parts}
    stages = []
    with progress.listening(stages.append):
        model = load_model(str(folder), dtype=dtype)
    assert model.pipe.unet.dtype == dtype
    assert stages[-1].total == stages[-1].done == sum(expected.values())
    assert per_component(stages) == expected
    assert stages[0].desc.startswith("loading xl · ")


def test_no_load_no_bars(pipes, tmp_path, capsys):
    """Reading a file outside a load (extract, inspect) counts nothing and prints nothing."""
    from lorakit.models.checkpoint import open_checkpoint

    out = save_model(pipes["sd1"], tmp_path / "m.safetensors")
    stages = []
    with progress.listening(stages.append):
        assert open_checkpoint(out).read(["first_stage_model."])
    assert stages == [] and capsys.readouterr().err == ""


def test_caching_passes_tell_their_steps():
    stages = []
    with progress.listening(stages.append):
        assert list(progress.track([10, 20, 30], "caching latents", disable=True)) == [10, 20, 30]
    assert [(s.desc, s.done, s.total) for s in stages] == [("caching latents", i, 3) for i in (1, 2, 3)]


# --- the page -----------------------------------------------------------------------------------------
@pytest.mark.slow  # a served app and a generation: 45 s and more on a shared 2-core machine
def test_generate_page_shows_the_load_through_gradios_tqdm_tracking(pipes, tmp_path, monkeypatch):
    """The app served on loopback, its Generate button pressed through gradio's client (no browser):
    the updates gradio's queue sends to the page carry the load's bars, named, in bytes."""
    from gradio_client import Client

    from lorakit.ui import actions as A
    from lorakit.ui.app import build_app
    from lorakit.ui.studio import Studio

    folder = save_model(pipes["sd1"], tmp_path / "lib" / "base")
    expected = sum(tensor_bytes(f) for f in folder.glob("*/*.safetensors"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    monkeypatch.setattr(A, "_MODELS", {})  # a fresh page: nothing loaded yet
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(Studio(lora_dirs=[tmp_path / "lib"], out_dir=tmp_path / "out"))
    tracked = {str(f.api_name) for f in app.fns.values() if f.tracks_progress}
    assert {"generate", "sweep", "evaluate", "train", "resume_stopped"} <= tracked  # gradio hands them a live bar
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    sent = []
    original = app._queue.set_progress

    def record(event_id, iterables):
        sent.append([(it.desc, it.index, it.length, it.unit) for it in iterables or []])
        return original(event_id, iterables)
    app._queue.set_progress = record
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, httpx_kwargs={"timeout": 600})  # a busy machine
        client.predict(str(folder), "a cat", "", 1, 2, 5.0, 0, 0, 0, "ddim", False, api_name="/generate")
    finally:
        app.close()
    loads = [u for update in sent for u in update if (u[0] or "").startswith("loading base · ")]
    assert {d.rpartition(" · ")[2] for d, *_ in loads} == {"unet", "vae", "text_encoder"}
    assert {(length, unit) for _, _, length, unit in loads} == {(expected, "B")}
    assert max(index for _, index, *_ in loads) == expected
    assert any(u[0] is None or "loading" not in (u[0] or "") for update in sent for u in update)  # then the steps


@pytest.mark.slow  # a training run
def test_train_page_status_shows_the_load_then_the_caching(tmp_path):
    from lorakit.ui.train_tab import TrainJob
    from test_ui import _form
    from train_support import make_images
    from conftest import tiny_model_with_lora

    files = tiny_model_with_lora(tmp_path / "f")
    data = make_images(tmp_path / "data")
    job = TrainJob(_form(files / "model", data, tmp_path / "ui.safetensors", steps=1, sample_every=0))
    seen, statuses = [], []

    def on_stage(stage):
        seen.append(stage)
        job.stage = stage
        statuses.append(job.status())
    job._on_stage = on_stage
    assert job.start().wait(timeout=300) and job.error is None, job.error
    part = {p: sum(tensor_bytes(f) for f in (files / "model" / p).glob("*.safetensors"))
            for p in ("text_encoder", "unet", "vae")}
    loads = [s for s in seen if s.unit == "B"]
    # a staged run: the encoders and the VAE first (to cache), then the UNet alone; each load ends complete
    totals = {part["text_encoder"] + part["vae"], part["unet"]}
    assert {s.total for s in loads} == totals
    assert {max(s.done for s in loads if s.total == t) for t in totals} == totals
    assert [s.done for s in seen if s.desc == "caching latents"] == [1, 2, 3, 4]  # four images, one bar step each
    assert any(line.startswith("preparing: loading model · unet: ") for line in statuses)
    assert any(line.startswith("preparing: caching latents: 4/4") for line in statuses)
