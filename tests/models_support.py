"""Shared helpers for the tests/test_models_*.py files: an offline guard and config folders."""

from __future__ import annotations

import shutil
import socket

import pytest


@pytest.fixture
def no_network(monkeypatch):
    """HF_HUB_OFFLINE=1, and every socket connection or DNS lookup raises and is recorded.

    Recording matters: loaders may catch the error, so the test asserts on the record itself.
    """
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"network access attempted: {attempts[:3]}"


def write_config_dir(pipe, path):
    """The pipeline's diffusers configs with no weights and no tokenizer files."""
    pipe.save_pretrained(path)
    for f in list(path.rglob("*.safetensors")) + list(path.rglob("*.bin")):
        f.unlink()
    for tok in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(path / tok, ignore_errors=True)
    return path


def random_weights(module, dtype, std=0.02):
    """Real-size weights without first building them in fp32: parameters made on the meta device
    (`init_empty_weights(include_buffers=False)`), then empty, then normal. Buffers keep what their
    constructors computed (position tables, ids): emptied, they would hold whatever memory was
    there, which made a saved checkpoint's position embedding garbage on some runs (a NaN loss)."""
    import torch

    buffers = {name: b.clone() for name, b in module.named_buffers()}
    if any(b.is_meta for b in buffers.values()):
        raise ValueError("build the module under init_empty_weights(include_buffers=False)")
    module = module.to(dtype).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(dtype) * std)
        for name, b in module.named_buffers():
            b.copy_(buffers[name])
    return module.eval()
