"""How faithfully each number format shows a LoRA's effect, on SD 1.5's real-size UNet.

A LoRA's effect is the output with it minus the output without it; its error is
‖effect − effect_fp32‖ / ‖effect_fp32‖. SD 1.5's UNet is built from the shipped config with random
weights (diffusers' init: W rms 0.017); the LoRA is rank 16 on kohya's default UNet targets (192
layers), random factors scaled to ΔW rms 1.4e-4 (a modest LoRA), at strengths 0.3 and 1.0, merged
and on the fly through lorakit's own paths (`LoRANetwork.merge` / `.apply`), its factors in fp32.
  (a) one UNet call at 256 px (batch 1, t = 500, a fixed random text embedding);
  (b) a whole image: 20 DDIM steps at guidance 7.5, compared on the final latents (the VAE adds
      nothing to the comparison), merged; at 64 px because fp16 is emulated on this CPU (one
      256 px UNet call takes minutes in fp16), so larger images would take hours in that row.
Rows:
  fp32: the reference, and what `generate` now runs on a CPU by default;
  bf16: weights and arithmetic in bf16, the previous CPU default for denoisers ≥ 20 M parameters;
  fp16: weights and arithmetic in fp16, what A1111 and ComfyUI users run on GPUs (the bar to meet);
  bf16 weights, fp32 arithmetic: diffusers' `enable_layerwise_casting(bf16, fp32)` (bf16's memory);
  bf16, adapted layers in fp32: the adapted layers compute (W + m·ΔW)·x in fp32 (ΔW never rounded
  to bf16), everything else in bf16.
Speed: seconds per UNet call at 256 and 512 px (batch 2, as with guidance), the rows side by side in
alternating rounds (medians), ratios against bf16 from the same rounds: an image's time is its UNet
calls'. fp16 is too slow to repeat: its one 256 px call of (a) is shown instead. The per-row times of
(a) and (b) are kept in the JSON but not compared: they ran minutes apart on a shared machine.

    python benchmarks/lora_effect.py [--rounds 3] [--image-size 64] [--steps 20]
    python benchmarks/lora_effect.py --quick   # a tiny UNet: a smoke run

Prints a markdown table and writes benchmarks/results/lora_effect.json (peak RSS 7.3 GB).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import CONFIGS, machine, peak_rss_gb, table, write_results  # noqa: E402

RANK, DELTA_RMS, STRENGTHS, GUIDANCE = 16, 1.4e-4, (0.3, 1.0), 7.5
BF16_W_FP32_MATH, ADAPTED_FP32 = "bf16 weights, fp32 arithmetic", "bf16, adapted layers in fp32"


def _unet_config(quick: bool) -> dict:
    if quick:
        from lorakit.models.tiny import unet_config

        return unet_config("sd1")
    return json.loads((CONFIGS / "sd15" / "unet" / "config.json").read_text())


def _unet(config: dict, dtype=None, device: str = "cpu"):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
    return (unet if dtype is None else unet.to(dtype)).eval().requires_grad_(False)


def _cast_copy(ref, dtype):
    """The reference's weights cast to `dtype`, in a UNet built on the meta device (no fp32 copy)."""
    unet = _unet(dict(ref.config), dtype, "meta")
    unet.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()}, assign=True)
    return unet


def _network(unet):
    from lorakit.lora import LoRANetwork
    from lorakit.lora.targets import ModelParts

    net = LoRANetwork.create(ModelParts("sd1", unet, (), dict(unet.config)), rank=RANK, alpha=RANK,
                             text_encoder=False, init=None)
    return net.requires_grad_(False)


def random_factors(ref) -> dict:
    """Factors with ΔW rms DELTA_RMS on every layer: down N(0, 0.1²), up scaled to match."""
    import torch

    net = _network(ref)
    g = torch.Generator().manual_seed(2)
    sd = {}
    for name, a in net.adapters.items():
        down = torch.randn(a.lora_down.weight.shape, generator=g) * 0.1
        up = torch.randn(a.lora_up.weight.shape, generator=g) * (DELTA_RMS / (0.1 * RANK ** 0.5))
        sd[f"adapters.{name}.lora_down.weight"], sd[f"adapters.{name}.lora_up.weight"] = down, up
        sd[f"adapters.{name}.alpha"] = torch.tensor(float(RANK))
    return sd


def _attached(unet, factors):
    net = _network(unet)
    net.load_state_dict(factors)  # the factors stay fp32 on every row, as `attach_loras` keeps them
    return net


@contextmanager
def _adapted_in_fp32(net, strength: float):
    """Each adapted layer computes (W + m·ΔW)·x in fp32 and gives its output back in x's dtype."""
    import torch
    import torch.nn.functional as F

    def forward(module, x, adapter=None):
        w = module.weight.float()
        if adapter is not None and strength:
            adapter.add_delta_to(w, strength)
        bias = None if module.bias is None else module.bias.float()
        y = F.linear(x.float(), w, bias) if isinstance(module, torch.nn.Linear) else \
            module._conv_forward(x.float(), w, bias)
        return y.to(x.dtype)

    layers = [(net.targets[name].module, a) for name, a in net.adapters.items()]
    for module, adapter in layers:
        module.forward = types.MethodType(lambda m, x, a=adapter: forward(m, x, a), module)
    try:
        yield
    finally:
        for module, _ in layers:
            del module.forward


class Inputs:
    def __init__(self, config: dict, size: int, batch: int = 1, seed: int = 1):
        import torch

        g = torch.Generator().manual_seed(seed)
        side = size // 8
        self.latents = torch.randn(batch, config["in_channels"], side, side, generator=g)
        self.context = torch.randn(batch, 77, config["cross_attention_dim"], generator=g)


def unet_call(unet, inputs: Inputs, dtype):
    import torch

    with torch.no_grad():
        return unet(inputs.latents.to(dtype), torch.tensor([500]), encoder_hidden_states=inputs.context.to(dtype)
                    ).sample.float()


def image(unet, config: dict, dtype, size: int, steps: int):
    """20 DDIM steps with classifier-free guidance from fixed noise and embeddings: the final latents."""
    import torch
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_pretrained(CONFIGS / "sd15" / "scheduler")
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(3)
    side = size // 8
    lat = torch.randn(1, config["in_channels"], side, side, generator=g)
    ctx = torch.randn(2, 77, config["cross_attention_dim"], generator=g).to(dtype)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(torch.cat([lat, lat]).to(dtype), t, encoder_hidden_states=ctx).sample.float()
            uncond, cond = eps.chunk(2)
            lat = sched.step(uncond + GUIDANCE * (cond - uncond), t, lat).prev_sample
    return lat


@contextmanager
def _lora(net, mode: str, strength: float):
    """The LoRA at `strength` for a while: merged, on the fly, or in fp32 adapted layers (strength 0: none)."""
    if mode == "adapted fp32":
        with _adapted_in_fp32(net, strength):
            yield
        return
    if strength:
        net.multiplier = strength
        net.merge() if mode == "merged" else net.apply()
    try:
        yield
    finally:
        net.unmerge()
        net.remove()


def effects(unet, factors, run, modes) -> tuple[dict, dict, object]:
    """({(mode, strength): effect}, {(mode, strength): seconds}, the output without the LoRA) of one
    row; `run(unet)` gives the output. A row's base is computed as its LoRA runs, minus the LoRA."""
    net = _attached(unet, factors)
    with _lora(net, modes[0], 0.0):
        t0 = time.perf_counter()
        base = run(unet)
    seconds = {("base", 0.0): time.perf_counter() - t0}
    out = {}
    for mode in modes:
        for m in STRENGTHS:
            with _lora(net, mode, m):
                t0 = time.perf_counter()
                y = run(unet)
            seconds[(mode, m)] = time.perf_counter() - t0
            out[(mode, m)] = y - base
    return out, seconds, base


def error(effect, reference) -> float:
    return float((effect - reference).norm() / reference.norm())


def timing(rows: dict, sizes, rounds: int, config: dict) -> dict:
    """Seconds per UNet call (batch 2), the rows in alternating order, median over rounds."""
    out = {}
    for size in sizes:
        inputs = Inputs(config, size, batch=2, seed=4)
        times = {k: [] for k in rows}
        for k, fn in rows.items():
            fn(inputs)  # warm-up
        for r in range(rounds):
            for k in (list(rows) if r % 2 == 0 else list(rows)[::-1]):
                t0 = time.perf_counter()
                rows[k](inputs)
                times[k].append(time.perf_counter() - t0)
        out[size] = {k: {"median": statistics.median(v), "all": v} for k, v in times.items()}
    return out


def main(argv=None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="(a)'s image size in pixels")
    ap.add_argument("--image-size", type=int, default=64, help="(b)'s image size in pixels")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--time-sizes", default="256,512")
    ap.add_argument("--quick", action="store_true", help="a tiny UNet, 2 steps, one round: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.size, args.image_size, args.steps, args.time_sizes = 1, 64, 64, 2, "64"
    sizes = [int(s) for s in args.time_sizes.split(",")]
    config = _unet_config(args.quick)
    torch.manual_seed(0)
    ref = _unet(config)
    factors = random_factors(ref)
    net = _attached(ref, factors)
    w = torch.cat([t.module.weight.flatten() for t in net.targets.values()])
    dw = torch.cat([a.delta_weight().flatten() for a in net.adapters.values()])
    stats = {"W rms": float(w.pow(2).mean().sqrt()), "dW rms": float(dw.pow(2).mean().sqrt()),
             "adapted layers": len(net.adapters), "parameters": sum(p.numel() for p in ref.parameters())}
    del net, w, dw
    call_in = Inputs(config, args.size)
    call = {}  # row → {"effects", "seconds", "base"} for (a)
    img = {}  # row → same for (b)

    def measure(row, unet, dtype, modes=("merged", "fly")):
        call[row] = effects(unet, factors, lambda u: unet_call(u, call_in, dtype), modes)
        img[row] = effects(unet, factors, lambda u: image(u, config, dtype, args.image_size, args.steps),
                           ("merged",) if "adapted fp32" not in modes else modes)
        print(f"measured {row}", file=sys.stderr, flush=True)

    measure("fp32", ref, torch.float32)
    fp16 = _cast_copy(ref, torch.float16)
    measure("fp16", fp16, torch.float16)
    del fp16
    gc.collect()
    bf16 = _cast_copy(ref, torch.bfloat16)
    measure("bf16", bf16, torch.bfloat16)
    measure(ADAPTED_FP32, bf16, torch.bfloat16, modes=("adapted fp32",))
    adapted_net = _attached(bf16, factors)
    adapted_net.multiplier = 1.0

    def adapted(inputs):
        with _adapted_in_fp32(adapted_net, 1.0):
            return unet_call(bf16, inputs, torch.bfloat16)

    speed = timing({"fp32": lambda i: unet_call(ref, i, torch.float32),
                    "bf16": lambda i: unet_call(bf16, i, torch.bfloat16), ADAPTED_FP32: adapted},
                   sizes, args.rounds, config)
    # bf16 weights with fp32 arithmetic: the reference itself, its layers cast to bf16 for storage
    ref.enable_layerwise_casting(storage_dtype=torch.bfloat16, compute_dtype=torch.float32)
    gc.collect()
    measure(BF16_W_FP32_MATH, ref, torch.float32)
    speed_b = timing({BF16_W_FP32_MATH: lambda i: unet_call(ref, i, torch.float32),
                      "bf16": lambda i: unet_call(bf16, i, torch.bfloat16)}, sizes, args.rounds, config)
    for size in sizes:  # its ratio to bf16 from its own rounds, expressed against phase one's bf16
        ratio = speed_b[size][BF16_W_FP32_MATH]["median"] / speed_b[size]["bf16"]["median"]
        speed[size][BF16_W_FP32_MATH] = {"median": ratio * speed[size]["bf16"]["median"],
                                         "all": speed_b[size][BF16_W_FP32_MATH]["all"], "ratio_own_rounds": ratio}

    rows_order = ["fp32", "bf16", "fp16", BF16_W_FP32_MATH, ADAPTED_FP32]
    results = {}
    for row in rows_order:
        eff, sec, base = call[row]
        ieff, isec, ibase = img[row]
        r = {"call_base_error": error(base, call["fp32"][2]) if row != "fp32" else 0.0,
             "image_base_error": error(ibase, img["fp32"][2]) if row != "fp32" else 0.0}
        for (mode, m), e in eff.items():
            r[f"call {mode} {m}"] = error(e, call["fp32"][0][("fly", m)])
        for (mode, m), e in ieff.items():
            r[f"image {mode} {m}"] = error(e, img["fp32"][0][("merged", m)])
        r["s_per_image_apart"] = statistics.median(isec.values())  # not side by side: not compared
        r["s_per_call_single"] = statistics.median(sec.values())
        for size in sizes:
            if row in speed[size]:
                r[f"s_per_call_{size}"] = speed[size][row]["median"]
        results[row] = r

    def pct(v):
        return f"{100 * v:.2f} %" if v < 10 else f"{100 * v:.0f} %"

    rows = []
    for row in rows_order:
        r = results[row]
        mode = "adapted fp32" if row == ADAPTED_FP32 else None
        cells = [row]
        for m in STRENGTHS:
            for md in ((mode,) if mode else ("merged", "fly")):
                cells.append(pct(r[f"call {md} {m}"]))
            if mode:
                cells.append("(same)")
        for m in STRENGTHS:
            cells.append(pct(r[f"image {mode or 'merged'} {m}"]))
        for size in sizes:
            v = r.get(f"s_per_call_{size}")
            cells.append("—" if v is None else f"{v:.2f} ({v / results['bf16'][f's_per_call_{size}']:.2f}×)")
        if row == "fp16":
            cells[-len(sizes)] = f"{r['s_per_call_single']:.0f} once, batch 1"
        rows.append(cells)
    header = ["row"] + [f"(a) {md} m={m}" for m in STRENGTHS for md in ("merged", "fly")] + \
        [f"(b) m={m}" for m in STRENGTHS] + [f"s/call {s} px (× bf16)" for s in sizes]
    text = (f"the LoRA's effect: error against fp32 (a: one UNet call at {args.size} px; b: {args.steps} DDIM "
            f"steps at {args.image_size} px, guidance {GUIDANCE}, final latents, merged); W rms "
            f"{stats['W rms']:.4f}, ΔW rms {stats['dW rms']:.2e}, {stats['adapted layers']} adapted layers; "
            f"fp32's effect is {100 * float(call['fp32'][0][('fly', 1.0)].norm() / call['fp32'][2].norm()):.2f} % "
            f"of the output at strength 1\n\n" + table(rows, header))
    print(text)
    data = {"machine": machine(), "settings": vars(args), "stats": stats, "results": results,
            "timing": {str(k): v for k, v in speed.items()}, "peak_rss_gb": peak_rss_gb(), "table": text}
    print(f"wrote {write_results('lora_effect_quick' if args.quick else 'lora_effect', data)}")
    return data


if __name__ == "__main__":
    main()
