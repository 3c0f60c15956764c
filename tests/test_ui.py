"""The web UI: its actions on tiny models, and the app served on loopback."""

from __future__ import annotations

import json
import os
import socket
import urllib.request

import pytest
import torch

from lorakit.errors import LoraKitError
from lorakit.lora import LoRANetwork
from lorakit.models.tiny import tiny_pipeline
from lorakit.ui import actions as A

from conftest import parts_of


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from lorakit.formats import save_lora

    root = tmp_path_factory.mktemp("ui")
    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(root / "model")
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=8, alpha=4)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    save_lora(root / "a.safetensors", net.kohya_modules(), {}, family="sd1")
    return root


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


def test_bad_input_becomes_a_gradio_error(files):
    import gradio as gr

    with pytest.raises(LoraKitError):
        A.inspect_file(str(files / "nope.safetensors"))
    with pytest.raises(gr.Error, match="nope.safetensors"):
        A.guarded(A.inspect_file)(str(files / "nope.safetensors"))


def test_app_serves_on_loopback():
    from lorakit.ui.app import build_app

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app("toy")
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and "lorakit" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.loads(r.read())
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"Prompt", "LoRA file", "Image folder"} <= labels
    finally:
        app.close()
