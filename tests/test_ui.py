"""The web UI: its actions on tiny models, and the app served on loopback."""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest

from lorakit.errors import LoraKitError
from lorakit.ui import actions as A

from conftest import tiny_model_with_lora


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_with_lora(tmp_path_factory.mktemp("ui"))


def test_generate_action_returns_images_and_info(files, tmp_path):
    images, info = A.generate_images(str(files / "model"), "a cat", "", f"{files / 'a.safetensors'}:0.5", 2, 2, 5.0,
                                     3, 0, 0, "ddim", "", str(tmp_path))
    assert len(images) == 2 and images[0].size == (16, 16)
    assert "Seed: 3" in info and "<lora:a:0.5>" in info
    assert len(list(tmp_path.glob("*.png"))) == 3  # two images and the grid


def test_file_actions(files, tmp_path):
    report = json.loads(A.inspect_file(str(files / "a.safetensors")))
    assert report["family"] == "sd1"
    assert "wrote" in A.resize_file(str(files / "a.safetensors"), 4, "", str(tmp_path / "r.safetensors"))
    assert json.loads(A.inspect_file(str(tmp_path / "r.safetensors")))["format"] == "kohya"
    A.convert_file(str(files / "a.safetensors"), "diffusers", str(tmp_path / "d.safetensors"))
    assert (tmp_path / "d.safetensors").stat().st_size > 0
    msg = A.merge_files(f"{files / 'a.safetensors'}:0.5\n{tmp_path / 'r.safetensors'}:0.5", 0, "",
                        str(tmp_path / "m.safetensors"))
    assert "wrote" in msg


def test_evaluate_action_table_and_grid(files, tmp_path):
    table, grid = A.evaluate_sweep(str(files / "model"), f"{files / 'a.safetensors'}:0.5", "zzt a cat\na dog", "zzt",
                                   "1, 0.5", 1, 2, 5.0, 0, "ddim", str(tmp_path / "sweep.png"))
    rows = [line for line in table.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert [r.split("|")[1].strip() for r in rows] == ["0", "0.5", "1"]
    assert grid.size == (56 + 128 * 2, 28 + 128 * 3) and (tmp_path / "sweep.png").is_file()
    with pytest.raises(LoraKitError, match="strengths"):
        A.evaluate_sweep(str(files / "model"), str(files / "a.safetensors"), "a cat", "", "x", 1, 1, 5.0, 0)


def test_bad_input_becomes_a_gradio_error(files):
    import gradio as gr

    with pytest.raises(LoraKitError):
        A.inspect_file(str(files / "nope.safetensors"))
    with pytest.raises(gr.Error, match="nope.safetensors"):
        A.guarded(A.inspect_file)(str(files / "nope.safetensors"))


def test_app_serves_on_loopback(tmp_path):
    from lorakit.ui.app import build_app
    from lorakit.ui.studio import Studio

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(Studio(lora_dirs=[tmp_path], out_dir=tmp_path / "out"))
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and "lorakit" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.loads(r.read())
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"Prompt", "LoRAs (click one to add it to Generate)", "Images and captions", "Caption",
                "Training images (folder with captions, or dataset TOML)", "Loss", "Latest samples",
                "Strength × prompt grid", "Tag frequency"} <= labels
    finally:
        app.close()


# --- the Train tab ------------------------------------------------------------------------------------
def _form(model, data, out, **kw):
    from lorakit.ui.train_tab import train_config

    values = dict(model=str(model), data=str(data), trigger="zzt", out=str(out), preset="attn", rank=4, alpha=4,
                  conv_rank=0, steps=4, lr=1e-3, batch_size=1, resolution=32, optimizer="adamw",
                  scheduler="constant", train_text_encoder=False, class_prompt="", class_data="",
                  sample_prompts="zzt a square\nzzt a circle", sample_every=2, save_every=0,
                  extra_toml="[data]\nbucket_step = 8\n[output]\ntensorboard = false\nprogress = false\n"
                             "sample_steps = 2", resume="")
    values.update(kw)
    return train_config(**values)


def test_train_tab_runs_and_shows_curve_and_samples(files, tmp_path):
    from PIL import Image

    from lorakit.ui.train_tab import TrainJob
    from train_support import make_images

    data = make_images(tmp_path / "data")
    cfg = _form(files / "model", data, tmp_path / "ui.safetensors")
    assert (cfg.rank, cfg.bucket_step, cfg.sample_steps, cfg.tensorboard) == (4, 8, 2, False)
    job = TrainJob(cfg).start()
    assert job.wait(timeout=300)
    assert job.error is None, job.error
    assert job.steps == [1, 2, 3, 4] and len(job.losses) == 4
    assert (tmp_path / "ui.safetensors").is_file() and "done" in job.status()
    assert Image.open(job.loss_plot()).size == (700, 350)
    samples = Image.open(job.latest_samples())
    assert samples.size == (64, 32)  # the two sample prompts side by side, drawn at step 4
    assert job.latest_samples().endswith("step-000004.png")


def test_train_tab_stop_keeps_a_resume_state(files, tmp_path):
    from lorakit.ui.train_tab import TrainJob
    from train_support import make_images

    data = make_images(tmp_path / "data")
    cfg = _form(files / "model", data, tmp_path / "stop.safetensors", steps=6, sample_every=0)
    job = TrainJob(cfg)
    original = job._on_step

    def stop_at_3(step, loss):
        if step == 3:
            job.stop()
        original(step, loss)
    job._on_step = stop_at_3
    job.start()
    assert job.wait(timeout=300)
    assert job.stopped and job.error is None and job.steps[-1] == 3
    assert (cfg.resolved_run_dir() / "state-000003").is_dir()
    assert not (tmp_path / "stop.safetensors").exists()
    assert "Resume from" in job.status()
    resumed = _form(files / "model", data, tmp_path / "stop.safetensors", steps=6, sample_every=0,
                    resume=str(cfg.resolved_run_dir()))
    job = TrainJob(resumed).start()
    assert job.wait(timeout=300) and job.error is None, job.error
    assert job.steps == [4, 5, 6] and (tmp_path / "stop.safetensors").is_file()


def test_train_form_errors_are_one_line(files, tmp_path):
    with pytest.raises(LoraKitError, match="training images"):
        _form(files / "model", "", tmp_path / "x.safetensors")
    with pytest.raises(LoraKitError, match="more options: not TOML"):
        _form(files / "model", tmp_path, tmp_path / "x.safetensors", extra_toml="rank = = 3")
    with pytest.raises(LoraKitError, match="rankk"):
        _form(files / "model", tmp_path, tmp_path / "x.safetensors", extra_toml="rankk = 3")


def test_ui_command_refuses_a_missing_library_folder(tmp_path, capsys):
    from lorakit.cli import main

    assert main(["ui", "--lora-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope'}: not an existing folder" in err and "Traceback" not in err


def test_ui_command_binds_loopback_and_locks_folders_beyond_it(tmp_path, monkeypatch):
    """What `lorakit ui` hands to gradio: 127.0.0.1 by default; with --host the folder list is fixed."""
    import gradio as gr

    from lorakit.cli import main

    seen = {}

    def fake_build(studio, **kw):
        seen["studio"] = studio
        return gr.Blocks()

    def fake_launch(self, **kw):
        seen.update(kw)
    monkeypatch.setenv("HOME", str(tmp_path))  # the recent-models list goes to ~/.cache/lorakit
    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr("lorakit.ui.app.build_app", fake_build)
    assert main(["ui", "--lora-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["share"] is False and not seen["studio"].locked
    assert seen["studio"].lora_dirs == [tmp_path]
    assert (tmp_path / ".cache" / "lorakit" / "ui-recent-models.json").read_text() == '["toy"]'
    seen.clear()
    assert main(["ui", "--host", "0.0.0.0", "--lora-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 0
    assert seen["server_name"] == "0.0.0.0" and seen["studio"].locked
