"""Two CPU processes (gloo) through accelerate: DDP keeps the LoRA weights identical in both."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from train_support import config, ddp_worker, make_images, tiny_model_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    model = tiny_model_dir(tmp_path, "sd1")
    data = make_images(tmp_path / "images", sizes=((32, 32),) * 4)
    cfg = config(model, data, tmp_path / "run", steps=3, lr=1e-3, shuffle_caption=True, trigger="sks",
                 dropout=0.1, flip=True)
    mp.spawn(ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a), "the two processes ended with different weights"
    assert any(k.endswith("lora_up.weight") and a[k].abs().sum() > 0 for k in a)  # they did train
    assert cfg.out.is_file()  # written once, by the main process
    state = cfg.resolved_run_dir() / "state-000003"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in state.iterdir()}


@pytest.mark.slow
def test_accelerate_launch_cli(tmp_path):
    """The documented command line. `accelerate launch --cpu` starts a single process unless MPI is set
    up; `--multi_gpu` starts N processes through torchrun, and on a machine without GPUs lorakit
    runs them on the CPU with gloo."""
    model = tiny_model_dir(tmp_path, "sd1")
    data = make_images(tmp_path / "images", sizes=((32, 32),) * 4)
    out = tmp_path / "lora.safetensors"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                           str(_free_port()), "-m", "lorakit", "train", "--model", str(model), "--data", str(data),
                           "--out", str(out), "--resolution", "32", "--bucket-step", "8", "--steps", "2",
                           "--rank", "4", "--no-progress", "--no-tensorboard"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
    state = out.with_name("lora-run") / "state-000002"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in state.iterdir()}
