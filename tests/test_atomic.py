"""The atomic writer on a real full disk (a tiny tmpfs) and a folder write that fails half-way."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from lorakit.atomic import atomic_dir
from lorakit.cli import main as cli
from lorakit.errors import LoraKitError
from lorakit.formats import save_lora

NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def _lora(path, rank):
    save_lora(path, {NAME: {"lora_down.weight": torch.randn(rank, 320), "lora_up.weight": torch.randn(320, rank),
                            "alpha": torch.tensor(float(rank))}}, family="sd1", dtype=torch.float32)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs the right to mount: root in a container that allows it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode}); the patched "
                    "writers of test_train_crash.py cover the same path")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_full_tmpfs_keeps_the_old_file_and_says_so_in_one_line(tmp_path, tiny_disk, capsys):
    small, big = tmp_path / "small.safetensors", tmp_path / "big.safetensors"
    _lora(small, 2)   # ~5 KiB
    _lora(big, 64)    # ~160 KiB: more than the disk holds
    out = tiny_disk / "lora.safetensors"
    assert cli(["convert", str(small), "--to", "kohya", "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert cli(["convert", str(big), "--to", "kohya", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out}: cannot write (no space left on device)"
    assert out.read_bytes() == before and load_file(out)[f"{NAME}.lora_down.weight"].shape == (2, 320)
    assert [p.name for p in tiny_disk.iterdir()] == ["lora.safetensors"]  # no temporary file left


def test_a_folder_write_that_fails_leaves_the_old_folder(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(LoraKitError, match=r"model/b.txt: cannot write \(no space left on device\)"):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            raise OSError(28, "No space left on device", str(tmp / "b.txt"))
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
