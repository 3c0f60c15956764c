"""What each `--network` costs on the demo's recipe: file size (fp16, as the demo saves it) and the
training step's time against LoRA's, the networks built on the toy base exactly as `lorakit demo
--network A` builds them.

Steps are timed interleaved (every algorithm once per round, the median of the rounds), so a busy
machine slows them alike and the ratios hold. The demo's quality per algorithm over seeds comes from
`python benchmarks/demo_seeds.py --seeds 0-4 --set network=loha`.

    python benchmarks/adapters.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lorakit.formats import save_lora  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.lora.targets import ModelParts  # noqa: E402
from lorakit.models import load_model  # noqa: E402
from lorakit.train.demo import demo_config  # noqa: E402

ALGOS = ("lora", "loha", "lokr", "dora", "oft")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model("toy")
    pipe = model.pipe
    unet, te = pipe.unet.requires_grad_(False), pipe.text_encoder.requires_grad_(False)
    ids = pipe.tokenizer(["a red zqx on a white background"] * 4, padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    side = 32 // (8 if pipe.vae is not None else 1)
    latents = torch.randn(4, unet.config.in_channels, side, side)
    nets, out = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for algo in ALGOS:
            cfg = demo_config(Path(tmp), network=algo, prior=False)
            spec = cfg.network_spec()
            torch.manual_seed(0)
            net = LoRANetwork.create(ModelParts(model.family, unet, [te], dict(unet.config)), rank=cfg.rank,
                                     alpha=cfg.alpha, preset=cfg.preset, conv_rank=spec.get("conv_dim"),
                                     conv_alpha=spec.get("conv_alpha"), spec=spec)
            path = Path(tmp) / f"{algo}.safetensors"
            save_lora(path, net.kohya_modules(), {}, family=model.family, dtype=torch.float16)
            nets[algo] = net
            out[algo] = {"file_bytes": path.stat().st_size, "parameters": sum(p.numel() for p in net.parameters())}
    times = {a: [] for a in ALGOS}
    for _ in range(args.rounds):
        for algo, net in nets.items():
            net.train().apply()
            t0 = time.perf_counter()
            for _ in range(5):
                enc = te(ids)[0]
                unet(latents, torch.tensor([500] * 4), enc).sample.square().mean().backward()
            times[algo].append((time.perf_counter() - t0) / 5)
            net.remove()
    base = statistics.median(times["lora"])
    for algo in ALGOS:
        out[algo]["step_vs_lora"] = round(statistics.median(times[algo]) / base, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
