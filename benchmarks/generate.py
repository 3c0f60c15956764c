"""Generation speed and memory: lorakit's default against diffusers' StableDiffusionPipeline, in one run.

SD 1.5's architecture (random weights), 512 px, 20 steps, guidance 7.5, batch 1, with one rank-32
LoRA (kohya's default targets, UNet and text encoder, random non-zero factors):
- lorakit, default precision (`--dtype auto`: bf16 on a CPU with AVX512-BF16 or AMX for a model of
  this size), the LoRA merged (`lorakit generate`'s default) and on the fly (`--on-the-fly`);
  seconds of `lorakit.generate.generate` (LoRA attached, image drawn, LoRA detached);
- diffusers: `StableDiffusionPipeline.from_pretrained(torch_dtype=fp32 | bf16)`, the LoRA through
  `load_lora_weights` + `fuse_lora`; seconds of the pipeline call.
Each worker runs in its own process (its peak RSS is its own) and draws one 2-step image first
(warm-up), then the timed image(s); the workers alternate and reverse their order every other round.

    python benchmarks/generate.py [--steps 20] [--rounds 1] [--images 1]
    python benchmarks/generate.py --quick      # lorakit's tiny SD 1 model, 64 px, 3 steps: a smoke run

Prints a markdown table and writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, run_worker, table, write_results  # noqa: E402

PROMPT, GUIDANCE, RANK = "a photo of a red cube on a wooden table", 7.5, 32
ROWS = [("lorakit (default: auto), LoRA merged", "lorakit", "merged"),
        ("lorakit (default: auto), LoRA on the fly", "lorakit", "fly"),
        ("diffusers, fp32, load_lora_weights + fuse_lora", "diffusers", "fp32"),
        ("diffusers, bf16, load_lora_weights + fuse_lora", "diffusers", "bf16")]


def setup(work: Path, quick: bool) -> Path:
    """The SD 1.5-architecture folder (shared with train_step.py) and one rank-32 kohya LoRA."""
    import torch

    from train_step import setup as model_setup

    model_setup(work, quick, resolutions=())
    lora = work / f"lora-r{RANK}.safetensors"
    if not lora.is_file():
        from lorakit.formats import save_lora
        from lorakit.lora import LoRANetwork
        from lorakit.models import load_model

        base = load_model(str(work / "sd15"), components=("unet", "text_encoders"))
        net = LoRANetwork.create(base.parts(), rank=RANK, alpha=RANK / 2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        save_lora(lora, net.kohya_modules(), {}, dtype=torch.float16, family="sd1")
    return lora


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_lorakit(work: Path, lora: Path, mode: str, steps: int, size: int, images: int) -> dict:
    from lorakit.devices import load_model_for_inference
    from lorakit.generate import LoraSpec, generate

    model = load_model_for_inference(str(work / "sd15"), "cpu", "auto")

    spec = [LoraSpec(lora, 1.0)]
    kw = dict(loras=spec, guidance=GUIDANCE, width=size, height=size, merge=mode == "merged", progress=False,
              sampler="ddim")
    generate(model, PROMPT, steps=2, **kw)  # warm-up
    times = []
    for i in range(images):
        t0 = time.perf_counter()
        generate(model, PROMPT, steps=steps, seed=i, **kw)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss(), "dtype": str(model.unet.dtype),
            "precision": model.precision.line()}


def worker_diffusers(work: Path, lora: Path, mode: str, steps: int, size: int, images: int) -> dict:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[mode]
    pipe = StableDiffusionPipeline.from_pretrained(work / "sd15", dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora))
    pipe.fuse_lora()
    pipe(PROMPT, num_inference_steps=2, guidance_scale=GUIDANCE, width=size, height=size)  # warm-up
    times = []
    for i in range(images):
        gen = torch.Generator().manual_seed(i)
        t0 = time.perf_counter()
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, width=size, height=size, generator=gen)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss(), "dtype": str(pipe.unet.dtype)}


WORKERS = {"lorakit": worker_lorakit, "diffusers": worker_diffusers}


def _spawn(name, mode, args, lora) -> dict:
    if args.quick:  # a smoke run: in this process (the subprocess round trip is what takes the time)
        return WORKERS[name](args.work, lora, mode, args.steps, args.size, args.images)
    return run_worker(__file__, ["--worker", f"{name}:{mode}", "--work", str(args.work), "--steps", str(args.steps),
                                 "--size", str(args.size), "--images", str(args.images), "--threads",
                                 str(args.threads)], f"{name}:{mode}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=1, help="timed images per worker")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-bench-train")
    ap.add_argument("--quick", action="store_true", help="lorakit's tiny SD 1 model, 64 px, 3 steps: a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        import torch

        args.steps, args.size, args.images, args.rounds = 3, 64, 1, 1
        torch.set_num_threads(args.threads or 1)  # tiny models: one thread beats two contended ones
        args.work = args.work.with_name(args.work.name + "-quick")
    lora = args.work / f"lora-r{RANK}.safetensors"
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        name, mode = args.worker.split(":")
        print(json.dumps(WORKERS[name](args.work, lora, mode, args.steps, args.size, args.images)))
        return {}
    args.work.mkdir(parents=True, exist_ok=True)
    setup(args.work, args.quick)
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.rounds):
        for label, name, mode in (ROWS if r % 2 == 0 else ROWS[::-1]):
            got = _spawn(name, mode, args, lora)
            runs.setdefault((name, mode), []).append(got)
            print(f"round {r + 1}: {label} {statistics.median(got['times']):.2f} s/image", flush=True)
    res = {f"{n}:{m}": {"s_per_image": statistics.median(t for x in v for t in x["times"]),
                        "peak_rss_gb": max(x["peak_rss"] for x in v) / 1e9, "dtype": v[0]["dtype"],
                        "all_times": [x["times"] for x in v], **({"precision": v[0]["precision"]}
                                                                   if "precision" in v[0] else {})}
           for (n, m), v in runs.items()}
    ref = res["diffusers:fp32"]
    rows = [[label, res[f"{n}:{m}"]["dtype"].replace("torch.", ""), f"{res[f'{n}:{m}']['s_per_image']:.2f}",
             f"{ref['s_per_image'] / res[f'{n}:{m}']['s_per_image']:.2f}×", f"{res[f'{n}:{m}']['peak_rss_gb']:.2f}"]
            for label, n, m in ROWS]
    merged, fly = res["lorakit:merged"]["s_per_image"], res["lorakit:fly"]["s_per_image"]
    text = (f"SD 1.5 architecture, {args.size} px, {args.steps} steps, batch 1, one rank-{RANK} LoRA "
            f"({res['lorakit:merged'].get('precision', '')})\n\n"
            + table(rows, ["", "dtype", "s/image", "speed-up vs diffusers fp32", "peak RSS (GB)"])
            + f"\n\ngoals: diffusers fp32 / lorakit {ref['s_per_image'] / merged:.2f}× (≥ 1.5×), "
              f"on the fly / merged {fly / merged:.2f}× (≤ 1.05×)")
    print(text)
    data = {"machine": {**machine(), "load_average_at_end": os.getloadavg()},
            "settings": {"size": args.size, "steps": args.steps, "guidance": GUIDANCE, "rank": RANK,
                         "images": args.images, "rounds": args.rounds, "quick": args.quick},
            "results": res, "table": text}
    print(f"wrote {write_results('generate_quick' if args.quick else 'generate', data)}")
    return data


if __name__ == "__main__":
    main()
