"""The memory plan against measured peaks: mid-size models of real width, random weights, each run in
its own process.

Models (diffusers folders, bf16 weights, written once under WORK):
- sd35m-8: SD 3.5-medium's transformer config with 8 of its 24 blocks, real CLIP-L and VAE, CLIP-G
  with 8 of 32 layers, a T5 of XXL width with 2 of 24 layers;
- flux-2-4: Flux.1-dev's transformer config with 2 double and 4 single blocks, real CLIP-L and VAE,
  the same T5.
Each is trained one step (512 px, batch 1, rank 16, one image) with and without gradient checkpointing
and made to generate one 4-step image in bf16; peak RSS is the child's ru_maxrss, the estimate `--plan`'s total.

    python benchmarks/plan_calibration.py [--work /tmp/plancal] [--models sd35m-8,flux-2-4]

Measured on this project's 2-core CPU (avx512_bf16, bf16 weights chosen by --mixed-precision auto):

| model | run | estimate GiB | peak RSS GiB | estimate/peak |
|---|---|---|---|---|
| sd35m-8 | train | 3.98 | 4.34 | 0.917 |
| sd35m-8 | train --gradient-checkpointing | 3.98 | 4.89 | 0.813 |
| sd35m-8 | generate | 4.51 | 4.55 | 0.990 |
| flux-2-4 | train | 4.89 | 5.07 | 0.964 |
| flux-2-4 | train --gradient-checkpointing | 3.76 | 3.62 | 1.039 |
| flux-2-4 | generate | 4.74 | 4.62 | 1.026 |

Per phase (peak RSS between phase boundaries, /proc/self/clear_refs; measured / planned GiB): sd35m-8
checkpointed: loading the encoders 4.19 / 3.98, filling the caches 3.66 / 3.52, loading the denoiser
3.82 / 2.49 (its file holds pos_embed in fp32, cast while read: not in the plan), training step 2.75 /
2.71 (plain 3.73 / 3.60); flux-2-4: training step 4.90 / 4.89, checkpointed 3.82 / 3.76. Whole-process
peaks vary by up to 0.7 GiB between runs of the same command (mapped file pages counted while resident).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SHIPPED = SRC / "lorakit" / "models" / "configs"

MODELS = {
    "sd35m-8": dict(config="sd35-medium", transformer=dict(num_layers=8, dual_attention_layers=list(range(4))),
                    encoders={"text_encoder_2": dict(num_hidden_layers=8), "text_encoder_3": dict(num_layers=2)},
                    t5_tokens=77),
    "flux-2-4": dict(config="flux1-dev", transformer=dict(num_layers=2, num_single_layers=4),
                     encoders={"text_encoder_2": dict(num_layers=2)}, t5_tokens=512),
}


def build(name: str, work: Path) -> Path:
    """The model's diffusers folder (random weights in bf16, seed 0), written once."""
    folder = work / name
    if (folder / "model_index.json").is_file():
        return folder
    import shutil

    import diffusers
    import torch
    import transformers

    spec = MODELS[name]
    source = SHIPPED / spec["config"]
    tmp = work / (name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = json.loads((source / "model_index.json").read_text())
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: never an fp32 copy of the weights
    for part, entry in index.items():
        if not isinstance(entry, list) or part.startswith(("tokenizer", "scheduler")):
            continue
        lib, cls_name = entry
        config = json.loads((source / part / "config.json").read_text())
        config.update(spec["transformer"] if part == "transformer" else spec["encoders"].get(part, {}))
        if lib == "diffusers":
            cls = getattr(diffusers, cls_name)
            model = cls.from_config(config)
            model.save_pretrained(tmp / part)
        else:
            cls = getattr(transformers, cls_name)
            cfg_cls = transformers.AutoConfig.for_model(config.pop("model_type"), **{
                k: v for k, v in config.items() if not k.startswith("_")})
            model = cls(cfg_cls)
            model.save_pretrained(tmp / part)
        del model
    shutil.copytree(source / "scheduler", tmp / "scheduler")
    for part, entry in index.items():
        if part.startswith("tokenizer") and entry[1].startswith("T5"):
            t5_tokenizer(spec["t5_tokens"]).save_pretrained(tmp / part)
    # the CLIP tokenizers stay listed without a folder: the loader gives them the shipped one
    index = {k: (["transformers", "PreTrainedTokenizerFast"] if k.startswith("tokenizer") and v[1].startswith("T5")
                 else v) for k, v in index.items()}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    torch.set_default_dtype(torch.float32)
    tmp.rename(folder)
    return folder


def t5_tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in ("a", "photo", "of", "sks", "dog", "red", "circle"):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def data(work: Path) -> Path:
    folder = work / "data"
    if not folder.is_dir():
        import numpy as np
        from PIL import Image

        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(folder / "a.png")
        (folder / "a.txt").write_text("a photo of sks dog")
    return folder


def measure(args: list[str]) -> tuple[int, float, str]:
    """(peak RSS bytes, seconds, output) of `lorakit ARGS` in a child process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    # VmHWM: the high-water mark of this process's own memory since its exec. ru_maxrss would also count
    # the parent's RSS at the fork (Linux carries it over the exec), e.g. a test runner's whole heap.
    code = ("import resource, sys\nfrom lorakit.cli import main\n"
            "def peak():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            return int(line.split()[1]) * 1024\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
            "rc = 0\ntry:\n    rc = main(sys.argv[1:]) or 0\n"
            "except SystemExit as e:\n    rc = e.code or 0\n"
            "print('PEAK', peak(), file=sys.stderr)\n"
            "sys.exit(rc)\n")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    found = re.search(r"PEAK (\d+)", proc.stderr)
    if proc.returncode or not found:
        raise RuntimeError(f"lorakit {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return int(found.group(1)), seconds, proc.stdout + proc.stderr


def estimate(args: list[str]) -> tuple[int, str]:
    _, _, out = measure([*args, "--plan"])
    found = re.search(r"peak\s+([\d.]+) GiB", out)
    if not found:
        raise RuntimeError(f"no total in the plan:\n{out}")
    return int(float(found.group(1)) * 2**30), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/plancal"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--runs", default="train,train-gc,generate")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.models.split(","):
        folder = build(name, a.work)
        if a.build_only:
            continue
        images = data(a.work)
        common = ["--model", str(folder)]
        runs = {
            "train": ["train", *common, "--data", str(images), "--steps", "1", "--resolution", "512", "--rank", "16",
                      "--out", str(a.work / "out" / f"{name}.safetensors"), "--no-progress", "--no-tensorboard"],
            "generate": ["generate", *common, "--prompt", "a photo of sks dog", "--steps", "4", "--width", "512",
                         "--height", "512", "--dtype", "bf16", "--out", str(a.work / "out" / f"{name}.png")],
        }
        runs["train-gc"] = runs["train"] + ["--gradient-checkpointing"]
        for run in a.runs.split(","):
            args = runs[run]
            guess, _ = estimate(args)
            peak, seconds, _ = measure(args)
            row = dict(model=name, run=run, estimate_gib=round(guess / 2**30, 2), peak_gib=round(peak / 2**30, 2),
                       ratio=round(guess / peak, 3), seconds=round(seconds, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if rows:
        print("| model | run | estimate GiB | peak RSS GiB | estimate/peak |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['run']} | {r['estimate_gib']} | {r['peak_gib']} | {r['ratio']} |")


if __name__ == "__main__":
    main()
