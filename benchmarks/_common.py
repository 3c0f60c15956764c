"""Shared bits of the benchmark scripts: SD 1.5-sized models with random weights, tables, JSON."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "models" / "configs"
RESULTS = Path(__file__).resolve().parent / "results"


def sd15_unet(dtype=torch.float32, device="cpu"):
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / "sd15" / "unet" / "config.json").read_text())
    with torch.device(device):
        return UNet2DConditionModel.from_config(config).to(dtype).eval().requires_grad_(False)


def sd15_text_encoder(dtype=torch.float32):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_json_file(str(CONFIGS / "sd15" / "text_encoder" / "config.json"))
    return CLIPTextModel(config).to(dtype).eval().requires_grad_(False)


@contextmanager
def timer(into: dict, key: str):
    t = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def machine() -> dict:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def run_worker(script: str, args: list[str], label: str) -> dict:
    """Run `script --worker ...` in its own process (its peak RSS is its own) and return the JSON
    dict it prints on its last line; a failed worker stops the benchmark with its stderr's tail."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        raise SystemExit(f"worker {label} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seeds_arg(text: str) -> list[int]:
    """`0-4`, `100-139`, `0,3,7`: a seed range for a benchmark's --seeds."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out
