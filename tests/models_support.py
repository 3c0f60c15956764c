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
