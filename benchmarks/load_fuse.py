"""Load + merge a rank-32 LoRA into an SD 1.5-sized UNet and text encoder: lorakit vs diffusers.

Same random model, same kohya file, one run. diffusers' path is `pipe.load_lora_weights` +
`pipe.fuse_lora` (PEFT underneath); switching is unfuse + unload + load + fuse. Both sides report
the best of --repeats runs. The floor row is the bare arithmetic of a merge (W += up·down per layer).
Usage: python benchmarks/load_fuse.py [--rank 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_gb, sd15_text_encoder, sd15_unet, table, write_results  # noqa: E402


def make_lora(parts, rank: int, seed: int, path: Path) -> None:
    from lorakit.formats import save_lora
    from lorakit.lora import LoRANetwork

    torch.manual_seed(seed)
    net = LoRANetwork.create(parts, rank=rank, alpha=rank / 2)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.01)
    save_lora(path, net.kohya_modules(), {}, family="sd1")


def lorakit_times(parts, file_a: Path, file_b: Path, repeats: int) -> dict:
    from lorakit.formats import load_network

    load_merge, switch, unmerge = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a = load_network(parts, file_a).merge()
        load_merge.append(time.perf_counter() - t)
        t = time.perf_counter()
        a.unmerge()
        b = load_network(parts, file_b).merge()
        switch.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.unmerge()
        unmerge.append(time.perf_counter() - t)
        del a, b
        gc.collect()
    return {"load_merge_s": min(load_merge), "switch_s": min(switch), "unmerge_s": min(unmerge)}


def floor_times(parts, file_a: Path, repeats: int) -> dict:
    """The arithmetic any merge must do, with nothing else: W += up·down for every adapted layer,
    factors already in memory. No loader can beat this; it says how close to the machine both come."""
    from lorakit.formats import load_network

    net = load_network(parts, file_a)
    pairs = []
    for name, adapter in net.adapters.items():
        w = net.targets[name].module.weight
        up, down = adapter.lora_up.weight.detach().float(), adapter.lora_down.weight.detach().float()
        pairs.append((w.view(w.shape[0], -1), up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for w, up, down in pairs:
            w.addmm_(up, down)
        best = min(best, time.perf_counter() - t)
        for w, up, down in pairs:
            w.addmm_(up, down, alpha=-1)
    return {"merge_floor_s": best, "layers": len(pairs),
            "weights_m": sum(w.numel() for w, _, _ in pairs) / 1e6}


def diffusers_times(unet, te, file_a: Path, file_b: Path, repeats: int) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    from lorakit.models.tiny import SCHEDULER, vae_config
    from lorakit.models.tokenizer import clip_tokenizer

    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**vae_config()), text_encoder=te, tokenizer=clip_tokenizer(),
                                   unet=unet, scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    runs = []
    for _ in range(repeats):  # best of the same number of runs as lorakit's
        out = {}
        t = time.perf_counter()
        pipe.load_lora_weights(str(file_a), adapter_name="a")
        out["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pipe.fuse_lora()
        out["fuse_s"] = time.perf_counter() - t
        out["load_merge_s"] = out["load_s"] + out["fuse_s"]
        t = time.perf_counter()
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        out["unfuse_unload_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pipe.load_lora_weights(str(file_b), adapter_name="b")
        pipe.fuse_lora()
        out["switch_s"] = out["unfuse_unload_s"] + time.perf_counter() - t
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        runs.append(out)
        gc.collect()
    best = {key: min(r[key] for r in runs) for key in runs[0]}
    best["first_run"] = runs[0]
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-diffusers", action="store_true")
    args = ap.parse_args()

    from lorakit.lora import ModelParts

    torch.manual_seed(0)
    unet, te = sd15_unet(), sd15_text_encoder()
    parts = ModelParts("sd1", unet, [te], dict(unet.config))
    with tempfile.TemporaryDirectory() as tmp:
        file_a, file_b = Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"
        make_lora(parts, args.rank, 1, file_a)
        make_lora(parts, args.rank, 2, file_b)
        size_mb = file_a.stat().st_size / 1e6
        ours = lorakit_times(parts, file_a, file_b, args.repeats)
        floor = floor_times(parts, file_a, args.repeats)
        ref = None if args.skip_diffusers else diffusers_times(unet, te, file_a, file_b, args.repeats)

    rows = [["load + merge", f"{ours['load_merge_s']:.3f}"], ["switch to another LoRA", f"{ours['switch_s']:.3f}"],
            ["unmerge", f"{ours['unmerge_s']:.3f}"]]
    header = ["task (SD 1.5 UNet + TE, rank %d, %.0f MB file)" % (args.rank, size_mb), "lorakit (s)"]
    if ref:
        header += ["diffusers (s)", "speed-up"]
        rows[0] += [f"{ref['load_merge_s']:.2f} (load {ref['load_s']:.2f} + fuse {ref['fuse_s']:.2f})",
                    f"{ref['load_merge_s'] / ours['load_merge_s']:.0f}×"]
        rows[1] += [f"{ref['switch_s']:.2f}", f"{ref['switch_s'] / ours['switch_s']:.0f}×"]
        rows[2] += [f"{ref['unfuse_unload_s']:.2f}", f"{ref['unfuse_unload_s'] / ours['unmerge_s']:.0f}×"]
    rows.append([f"floor: W += up·down on the {floor['layers']} layers ({floor['weights_m']:.0f} M weights)",
                 f"{floor['merge_floor_s']:.3f}"] + (["", ""] if ref else []))
    print(table(rows, header))
    if ref:
        first = ref["first_run"]
        print(f"diffusers' first call (cold): load + fuse {first['load_merge_s']:.2f} s "
              f"({first['load_merge_s'] / ours['load_merge_s']:.0f}× lorakit's best)")
    print(f"peak RSS {peak_rss_gb():.2f} GB; {machine()}")
    path = write_results("load_fuse", {"rank": args.rank, "file_mb": size_mb, "lorakit": ours, "diffusers": ref, "floor": floor,
                                       "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
