"""One adapted layer on the fly: the low-rank branch against the effective weight W + ΔW, per shape.

SD 1.5's attention and feed-forward shapes at 512 px with guidance (batch 2: 8 192 tokens at 64×64,
2 048 at 32×32, 512 at 16×16, 154 for cross-attention's keys and values), a rank-32 LoRA, bf16
activations and weights (what `--dtype auto` runs here), no gradient (generation). For each shape:
the frozen layer alone (what merged weights cost), the branch (W·x + up(down(x))), the effective
weight ((W + ΔW)·x, ΔW built in fp32 for the call), and which of the two `lorakit.lora.live`
picks. Milliseconds per call, median of `--repeats`, through the real on-the-fly code path.

    python benchmarks/live_layer.py [--repeats 20] [--rank 32]

Prints a markdown table and writes benchmarks/results/live_layer.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, table, write_results  # noqa: E402

# (where, tokens, in features k, out features d)
SHAPES = [
    ("64×64 self-attention q/k/v/out", 8192, 320, 320),
    ("64×64 feed-forward in (GEGLU)", 8192, 320, 2560),
    ("64×64 feed-forward out", 8192, 1280, 320),
    ("32×32 self-attention q/k/v/out", 2048, 640, 640),
    ("16×16 self-attention q/k/v/out", 512, 1280, 1280),
    ("8×8 self-attention q/k/v/out", 128, 1280, 1280),
    ("64×64 cross-attention k/v (77 tokens × 2)", 154, 768, 320),
]


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(tokens: int, k: int, d: int, rank: int, repeats: int) -> dict:
    import torch
    from torch import nn

    from lorakit.lora import LoRAModule, LoRANetwork, live
    from lorakit.lora.targets import Target

    torch.manual_seed(0)
    layer = nn.Linear(k, d).to(torch.bfloat16).requires_grad_(False)
    lora = LoRAModule(layer, rank=rank, alpha=rank / 2)
    nn.init.normal_(lora.lora_up.weight, std=0.02)
    lora.requires_grad_(False)
    net = LoRANetwork()
    net.add(Target("lora_unet_x", "x", "unet", layer, ""), lora)
    x = torch.randn(tokens, k, dtype=torch.bfloat16)
    out = {}
    with torch.no_grad():
        out["base"] = _median_ms(lambda: layer(x), repeats)
        net.apply()
        chosen = live._weight_space_pays(layer, x, layer._lorakit_live)
        factor = live.WEIGHT_SPACE_FACTOR
        try:
            live.WEIGHT_SPACE_FACTOR = float("inf")
            out["branch"] = _median_ms(lambda: layer(x), repeats)
            live.WEIGHT_SPACE_FACTOR = 0.0
            out["weight"] = _median_ms(lambda: layer(x), repeats)
        finally:
            live.WEIGHT_SPACE_FACTOR = factor
        net.remove()
    out["chosen"] = "effective weight" if chosen else "branch"
    out["right"] = (out["weight"] <= out["branch"]) == chosen
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="two shapes, 3 repeats: a smoke run")
    args = ap.parse_args(argv)
    shapes = SHAPES[3:5] if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    results = {}
    for where, tokens, k, d in shapes:
        results[where] = {"tokens": tokens, "in": k, "out": d, **measure(tokens, k, d, args.rank, repeats)}
    rows = [[where, f"{r['tokens']}", f"{r['in']}→{r['out']}", f"{r['base']:.2f}", f"{r['branch']:.2f}",
             f"{r['weight']:.2f}", r["chosen"] + ("" if r["right"] else " (the slower)")]
            for where, r in results.items()]
    text = (f"one bf16 Linear with a rank-{args.rank} LoRA on the fly, ms per call (median of {repeats})\n\n"
            + table(rows, ["layer", "tokens", "features", "layer alone", "branch", "effective weight", "chosen"]))
    print(text)
    data = {"machine": machine(), "settings": {"rank": args.rank, "repeats": repeats, "quick": args.quick},
            "results": results, "table": text}
    print(f"wrote {write_results('live_layer_quick' if args.quick else 'live_layer', data)}")
    return data


if __name__ == "__main__":
    main()
