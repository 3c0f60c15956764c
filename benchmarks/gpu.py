"""Training on a CUDA GPU: seconds per step and peak VRAM, lorakit against the diffusers reference loop.

SD 1.5 at 512 px and SDXL at 1024 px (random weights from the configs shipped in lorakit), batch 1,
LoRA rank 16 on to_q/to_k/to_v/to_out.0, latents and text embeddings computed beforehand; fp16 and
bf16, with and without gradient checkpointing:
- lorakit: `lorakit.train.run` (`--mixed-precision fp16|bf16`, `--gradient-checkpointing`);
- reference: the loop of diffusers' train_text_to_image_lora.py / train_text_to_image_lora_sdxl.py:
  frozen UNet in weight_dtype, PEFT adapter, LoRA upcast to fp32 for fp16 only (as the scripts do),
  AdamW, accelerate (autocast, and the grad scaler for fp16), clip_grad_norm_.
Each measurement runs in its own process; peak VRAM is torch.cuda.max_memory_allocated() of that
process (model load included), s/step the median of its steps after the first.

    python benchmarks/gpu.py [--steps 6] [--models sd15,sdxl]
    python benchmarks/gpu.py --tiny --device cpu   # tiny models on the CPU: a smoke run of the code paths

Big bases (Flux.1-dev, SD 3.5-large/-medium per base precision, and with --blocks-to-swap) are
measured by `python benchmarks/memory.py --device cuda`: the same table as on the CPU, in peak VRAM.

Without CUDA (and without --device cpu) it stops with exit code 2. Prints a markdown table and writes
benchmarks/results/gpu.json.
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
from _common import machine, peak_rss_gb, run_worker, table, write_results  # noqa: E402

RANK, LR = 16, 1e-4
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
MODELS = {"sd15": ("sd15", "sd1", 512), "sdxl": ("sdxl-base", "sdxl", 1024)}  # config folder, family, px
TINY_SIZE = 64


def build_model(work: Path, name: str, tiny: bool) -> Path:
    """The model as a diffusers folder with random weights (fp16 on disk: half the bytes to write)."""
    folder = work / (name + ("-tiny" if tiny else ""))
    if (folder / "model_index.json").is_file():
        return folder
    import torch

    config_dir, family, _ = MODELS[name]
    torch.manual_seed(0)
    if tiny:
        from lorakit.models.tiny import tiny_pipeline

        pipe = tiny_pipeline(family)
    else:
        import diffusers
        import transformers

        from lorakit.models.single_file import CONFIGS_DIR
        from lorakit.models.tokenizer import clip_tokenizer

        from lorakit import families

        spec = families.get(family)
        pads = dict(zip(spec.tokenizers, spec.tokenizer_pads))
        root = CONFIGS_DIR / config_dir
        index = json.loads((root / "model_index.json").read_text())
        parts = {}
        for key, value in index.items():
            if key.startswith("_") or not isinstance(value, list) or value[0] is None:
                continue
            lib, cls = value
            if key in pads:
                parts[key] = clip_tokenizer(pads[key])
            elif lib == "transformers":
                klass = getattr(transformers, cls)
                parts[key] = klass(klass.config_class.from_pretrained(root / key)).half()
            elif key == "scheduler":
                klass = getattr(diffusers, cls)
                parts[key] = klass.from_config(klass.load_config(root, subfolder=key))
            else:
                klass = getattr(diffusers, cls)
                parts[key] = klass.from_config(klass.load_config(root, subfolder=key)).half()
        pipe = getattr(diffusers, index["_class_name"])(**parts, **({"safety_checker": None, "feature_extractor": None,
                                                                    "requires_safety_checker": False}
                                                                   if "safety_checker" in index else {}))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _image_dir(work: Path, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder = work / f"one-{size}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        arr = np.full((size, size, 3), 90, np.uint8)
        arr[size // 4: size // 2, size // 4: size // 2] = (200, 30, 30)
        Image.fromarray(arr).save(folder / "img.png")
        (folder / "img.txt").write_text("sks object, a red square")
    return folder


def _memory(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        return {"peak_vram_gb": torch.cuda.max_memory_allocated() / 1e9}
    return {"peak_vram_gb": None, "peak_rss_gb": peak_rss_gb()}


def worker_lorakit(folder: Path, work: Path, size: int, precision: str, gc: bool, steps: int, device: str) -> dict:
    from lorakit.train.config import TrainConfig
    from lorakit.train.loop import run

    cfg = TrainConfig(model=str(folder), data=_image_dir(work, size), out=work / "lk-gpu.safetensors",
                      resolution=size, steps=steps, rank=RANK, alpha=float(RANK), preset="attn", init="gaussian",
                      optimizer="adamw", lr=LR, weight_decay=1e-2, max_grad_norm=1.0, progress=False,
                      train_text_encoder=False,  # the reference trains the UNet only
                      tensorboard=False, cache_latents="memory", cache_text="memory", save_dtype="fp16",
                      mixed_precision=precision, gradient_checkpointing=gc, device=device)
    result = run(cfg)
    return {"times": result.step_times, **_memory(device)}


def worker_reference(folder: Path, work: Path, size: int, precision: str, gc: bool, steps: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.requires_grad_(False)
    unet.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    if precision == "fp16":
        cast_training_params(unet, dtype=torch.float32)
    if gc:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=1000)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    config = unet.config if hasattr(unet, "config") else accelerator.unwrap_model(unet).config
    dev = accelerator.device
    latents = torch.randn(1, config.in_channels, size // 8, size // 8, device=dev, dtype=weight_dtype)
    hidden = torch.randn(1, 77, config.cross_attention_dim, device=dev, dtype=weight_dtype)
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding and size/crop time ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        added = {"text_embeds": torch.randn(1, pooled, device=dev, dtype=weight_dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=dev, dtype=weight_dtype)}
    times = []
    unet.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        with accelerator.accumulate(unet):
            noise = torch.randn_like(latents)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=dev)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            pred = unet(noisy, t, hidden, added_cond_kwargs=added, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"times": times, **_memory(device)}


WORKERS = {"lorakit": worker_lorakit, "reference": worker_reference}


def plan(models: list[str]) -> list[tuple[str, str, str, bool]]:
    """(model, implementation, precision, gradient checkpointing) for every measurement."""
    return [(m, impl, prec, gc) for m in models for prec in ("fp16", "bf16") for gc in (False, True)
            for impl in ("reference", "lorakit")]


def _spawn(args, model, impl, prec, gc) -> dict:
    if args.quick:  # a smoke run: in this process (the subprocess round trip is what takes the time)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()  # each worker builds its own Accelerator, as in its own process
        GradientState._reset_state()
        size = TINY_SIZE if args.tiny else MODELS[model][2]
        return WORKERS[impl](build_model(args.work, model, args.tiny), args.work, size, prec, gc, args.steps,
                             args.device)
    return run_worker(__file__, ["--worker", f"{model}:{impl}:{prec}:{int(gc)}", "--work", str(args.work),
                                 "--steps", str(args.steps), "--device", args.device] + (["--tiny"] if args.tiny else []),
                      f"{model} {impl} {prec} gc={gc}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="steps per measurement (the first is dropped)")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="lorakit's tiny SD 1 / SDXL models at 64 px")
    ap.add_argument("--quick", action="store_true", help="= --tiny --device cpu --steps 2 --models sd15: a smoke run")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-bench-gpu")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    if args.quick:
        args.tiny, args.device, args.steps, args.models = True, "cpu", 2, "sd15"
        torch.set_num_threads(1)  # tiny models: one thread beats two contended ones

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU "
              "machine, or use --tiny --device cpu for a smoke run", file=sys.stderr)
        raise SystemExit(2)
    if args.device == "cpu" and not args.tiny:
        print("benchmarks/gpu.py: --device cpu is for --tiny smoke runs only", file=sys.stderr)
        raise SystemExit(2)
    if args.worker:
        model, impl, prec, gc = args.worker.split(":")
        folder = build_model(args.work, model, args.tiny)
        size = TINY_SIZE if args.tiny else MODELS[model][2]
        print(json.dumps(WORKERS[impl](folder, args.work, size, prec, gc == "1", args.steps, args.device)))
        return {}
    args.work.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    for m in models:
        build_model(args.work, m, args.tiny)
    results = {}
    for model, impl, prec, gc in plan(models):
        got = _spawn(args, model, impl, prec, gc)
        got["s_per_step"] = statistics.median(got["times"][1:] or got["times"])
        results[f"{model}:{impl}:{prec}:{int(gc)}"] = got
        print(f"{model} {impl} {prec} gc={gc}: {got['s_per_step']:.3f} s/step", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (smoke run)"
    rows = []
    for model, impl, prec, gc in plan(models):
        v = results[f"{model}:{impl}:{prec}:{int(gc)}"]
        ref = results[f"{model}:reference:{prec}:{int(gc)}"]
        mem = v["peak_vram_gb"] if v["peak_vram_gb"] is not None else v.get("peak_rss_gb")
        ref_mem = ref["peak_vram_gb"] if ref["peak_vram_gb"] is not None else ref.get("peak_rss_gb")
        size = TINY_SIZE if args.tiny else MODELS[model][2]
        rows.append([f"{model} {size} px", impl, prec, "yes" if gc else "no", f"{v['s_per_step']:.3f}",
                     f"{v['s_per_step'] / ref['s_per_step']:.2f}×", f"{mem:.2f}", f"{mem / ref_mem:.2f}×"])
    mem_label = "peak VRAM (GB)" if args.device.startswith("cuda") else "peak RSS (GB)"
    text = f"{device}, batch 1, rank 16\n\n" + table(rows, ["model", "", "precision", "checkpointing", "s/step",
                                                          "× reference time", mem_label, "× reference memory"])
    print(text)
    data = {"machine": {**machine(), "device": device}, "settings": {"steps": args.steps, "tiny": args.tiny},
            "results": results, "table": text}
    print(f"wrote {write_results('gpu_smoke' if args.tiny else 'gpu', data)}")
    return data


if __name__ == "__main__":
    main()
