"""Where bf16 starts to pay on this CPU: forward + backward of UNets of growing size, fp32 against bf16.

Each (size, dtype) runs in its own process; the rounds alternate fp32 and bf16 so that load from
other programs hits both alike. The frozen UNet (random weights) runs forward and backward to its
input, as a LoRA step does: "bf16" holds the weights in bf16 and runs without autocast (lorakit's
bf16 path on CPU), "bf16 autocast" keeps fp32 weights under torch.autocast.

Sizes: the toy UNet (2.2 M parameters, batch 8, 8×8 latents: how the toy trains) and SD 1.5's
UNet with its widths scaled (batch 1, 32×32 latents = 256 px) up to the real one (860 M).
lorakit's threshold (`lorakit.precision.BF16_MIN_PARAMETERS_CPU`) is checked against this table.

    python benchmarks/precision_crossover.py [--steps 3] [--rounds 1] [--quick]

Prints a markdown table and writes benchmarks/results/precision_crossover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import CONFIGS, machine, run_worker, table, write_results  # noqa: E402

TOY = HERE.parent / "src" / "lorakit" / "toy" / "assets" / "base" / "unet" / "config.json"
# SD 1.5's block widths scaled down; the last is SD 1.5 itself
WIDTHS = {"w64": (64, 128, 256, 256), "w128": (128, 256, 512, 512), "w192": (192, 384, 768, 768),
          "w256": (256, 512, 1024, 1024), "sd15": (320, 640, 1280, 1280)}  # 38, 142, 314, 553, 860 M parameters
QUICK_WIDTHS = {"w32": (32, 64, 64, 64)}
MODES = ("fp32", "bf16", "bf16_autocast")


def _unet(size: str):
    import torch
    from diffusers import UNet2DConditionModel

    if size == "toy":
        config = json.loads(TOY.read_text())
        batch, side, ctx = 8, config["sample_size"], (8, 16, config["cross_attention_dim"])
    else:
        config = json.loads((CONFIGS / "sd15" / "unet" / "config.json").read_text())
        config["block_out_channels"] = list({**WIDTHS, **QUICK_WIDTHS}[size])
        if size in QUICK_WIDTHS:
            config["layers_per_block"], config["norm_num_groups"] = 1, 16
        batch, side, ctx = 1, 32, (1, 77, config["cross_attention_dim"])
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).requires_grad_(False).eval()
    return unet, (batch, config["in_channels"], side, side), ctx


def worker(size: str, mode: str, steps: int) -> dict:
    import contextlib

    import torch

    unet, shape, ctx = _unet(size)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    torch.nn.Module.to(unet, dtype=dtype)  # not diffusers' to(), which warns on a dtype cast
    params = sum(p.numel() for p in unet.parameters())
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(ctx, generator=g).to(dtype)
    times = []
    for _ in range(steps):
        x = torch.randn(shape, generator=g).to(dtype).requires_grad_(True)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        ctxm = torch.autocast("cpu", torch.bfloat16) if mode == "bf16_autocast" else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctxm:
            out = unet(x, t, hidden, return_dict=False)[0]
        out.float().square().mean().backward()
        times.append(time.perf_counter() - t0)
    return {"params": params, "times": times}


def _spawn(size: str, mode: str, steps: int, threads: int) -> dict:
    return run_worker(__file__, ["--worker", f"{size}:{mode}", "--steps", str(steps), "--threads", str(threads)],
                      f"{size}:{mode}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per worker (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sizes", default="toy," + ",".join(WIDTHS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="toy and one tiny SD-shaped UNet, 2 steps: a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        size, mode = args.worker.split(":")
        print(json.dumps(worker(size, mode, args.steps)))
        return {}
    if args.quick:
        import torch

        args.sizes, args.steps = "toy,w32", 2
        torch.set_num_threads(args.threads or 1)  # tiny models: one thread beats two contended ones
    sizes = args.sizes.split(",")
    runs: dict[tuple, list] = {}
    params: dict[str, int] = {}
    for r in range(args.rounds):
        for size in sizes:
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                res = worker(size, mode, args.steps) if args.quick else _spawn(size, mode, args.steps, args.threads)
                params[size] = res["params"]
                runs.setdefault((size, mode), []).extend(res["times"][1:] or res["times"])
                print(f"round {r + 1}: {size} {mode} {statistics.median(res['times'][1:] or res['times']):.3f} s",
                      flush=True)
    rows, out = [], []
    for size in sizes:
        t = {m: statistics.median(runs[(size, m)]) for m in MODES}
        rows.append([size, f"{params[size] / 1e6:.1f} M", f"{t['fp32']:.3f}", f"{t['bf16']:.3f}",
                     f"{t['bf16_autocast']:.3f}", f"{t['fp32'] / t['bf16']:.2f}×", f"{t['fp32'] / t['bf16_autocast']:.2f}×"])
        out.append({"size": size, "parameters": params[size], "s_fp32": t["fp32"], "s_bf16": t["bf16"],
                    "s_bf16_autocast": t["bf16_autocast"], "speedup_bf16": t["fp32"] / t["bf16"]})
    text = table(rows, ["UNet", "parameters", "fp32 s", "bf16 s", "bf16 autocast s", "fp32/bf16", "fp32/autocast"])
    print(text)
    data = {"machine": {**machine(), "load_average_at_end": os.getloadavg()},
            "settings": {"steps": args.steps, "rounds": args.rounds, "quick": args.quick}, "rows": out, "table": text}
    print(f"wrote {write_results('precision_crossover' + ('_quick' if args.quick else ''), data)}")
    return data


if __name__ == "__main__":
    main()
