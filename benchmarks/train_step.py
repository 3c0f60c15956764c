"""Training speed and memory: lorakit against the diffusers + PEFT way, in one run.

(a) Per step, SD 1.5's architecture (random weights, fp32) at 256 px (32×32 latents), batch 1,
    LoRA rank 16 on to_q/to_k/to_v/to_out.0, latents and text embeddings computed beforehand:
    - reference: the loop of diffusers' examples/text_to_image/train_text_to_image_lora.py
      (unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", ...)),
      AdamW, accelerate, clip_grad_norm_);
    - lorakit: `lorakit.train.run` with the same settings (preset attn, gaussian init);
    - floor: the frozen UNet's forward and backward to its input, no LoRA.
(b) End to end, 10 images on disk to a saved LoRA (40 steps, 256 px): lorakit (latent and
    text-embedding caches) against the reference way (VAE and text encoder on every step).

Every measurement runs in its own process, so its peak RSS is its own. The per-step workers
alternate (reference, lorakit, floor, and again) so that load from other programs hits all of
them alike; per-step figures are medians over both rounds, first two steps of each dropped.

    python benchmarks/train_step.py [--steps 8] [--e2e-steps 40] [--rounds 2] [--work DIR]

Prints a markdown table and writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESOLUTION, RANK, LR = 256, 16, 1e-4
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


# --- set-up (once) ---------------------------------------------------------------------------------
def setup(work: Path) -> None:
    """SD 1.5-architecture pipeline (default init, seed 0) as an fp32 diffusers folder; 10 captioned images."""
    import numpy as np
    from PIL import Image

    model = work / "sd15"
    if not (model / "model_index.json").is_file():
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from lorakit.models.single_file import CONFIGS_DIR
        from lorakit.models.tokenizer import clip_tokenizer

        root = CONFIGS_DIR / "sd15"
        torch.manual_seed(0)
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(root, subfolder="vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
            tokenizer=clip_tokenizer(),
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet")),
            scheduler=DDIMScheduler.from_config(DDIMScheduler.load_config(root, subfolder="scheduler")),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(model, safe_serialization=True)
    rng = np.random.default_rng(0)
    for name, n in (("images", 10), ("one", 1)):
        folder = work / name
        if folder.is_dir():
            continue
        folder.mkdir(parents=True)
        for i in range(n):
            arr = np.empty((RESOLUTION, RESOLUTION, 3), np.uint8)
            arr[...] = rng.integers(0, 255, 3)
            y, x = rng.integers(32, 160, 2)
            arr[y:y + 96, x:x + 96] = rng.integers(0, 255, 3)
            Image.fromarray(arr).save(folder / f"img{i:02d}.png")
            (folder / f"img{i:02d}.txt").write_text(f"sks object, a square, colour {i}")


# --- workers (each in its own process) -------------------------------------------------------------
def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reference_setup(work: Path):
    """As train_text_to_image_lora.py: frozen UNet, PEFT adapter, fp32 LoRA weights, AdamW, accelerate."""
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    accelerator = Accelerator(mixed_precision="no")
    unet = UNet2DConditionModel.from_pretrained(work / "sd15", subfolder="unet")
    unet.requires_grad_(False)
    unet.to(accelerator.device, dtype=torch.float32)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=1000)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    noise_scheduler = DDPMScheduler.from_pretrained(work / "sd15", subfolder="scheduler")
    return accelerator, unet, params, optimizer, lr_scheduler, noise_scheduler


def _reference_step(accelerator, unet, params, optimizer, lr_scheduler, noise_scheduler, latents, hidden):
    import torch
    import torch.nn.functional as F

    unet.train()
    with accelerator.accumulate(unet):
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    return float(loss)


def worker_reference_step(work: Path, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    parts = _reference_setup(work)
    latents = torch.randn(1, 4, RESOLUTION // 8, RESOLUTION // 8)  # precomputed, as for lorakit
    hidden = torch.randn(1, 77, 768)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _reference_step(*parts, latents, hidden)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss()}


def worker_floor(work: Path, steps: int) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(work / "sd15", subfolder="unet").requires_grad_(False)
    hidden, times = torch.randn(1, 77, 768), []
    for _ in range(steps):
        x = torch.randn(1, 4, RESOLUTION // 8, RESOLUTION // 8, requires_grad=True)
        t0 = time.perf_counter()
        out = unet(x, torch.randint(0, 1000, (1,)), hidden, return_dict=False)[0]
        F.mse_loss(out, torch.randn_like(out)).backward()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss()}


def _lorakit_config(work: Path, data: str, steps: int, out: str, **extra):
    from lorakit.train.config import TrainConfig

    return TrainConfig(model=str(work / "sd15"), data=work / data, out=work / out, resolution=RESOLUTION,
                       steps=steps, rank=RANK, alpha=float(RANK), preset="attn", init="gaussian", optimizer="adamw",
                       lr=LR, weight_decay=1e-2, max_grad_norm=1.0, progress=False, tensorboard=False,
                       cache_latents="memory", cache_text="memory", save_dtype="fp32", **extra)


def worker_lorakit_step(work: Path, steps: int, checkpointing: bool = False) -> dict:
    from lorakit.train.loop import run

    result = run(_lorakit_config(work, "one", steps, f"lk-step-{int(checkpointing)}.safetensors",
                                 gradient_checkpointing=checkpointing))
    return {"times": result.step_times, "peak_rss": _peak_rss()}


def worker_lorakit_step_gc(work: Path, steps: int) -> dict:
    return worker_lorakit_step(work, steps, checkpointing=True)


def worker_reference_e2e(work: Path, steps: int) -> dict:
    """Images on disk → saved LoRA, the script's way: each step decodes, transforms, VAE-encodes and
    text-encodes its batch (torchvision's Resize/CenterCrop/RandomHorizontalFlip done with PIL)."""
    import random

    import numpy as np
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    parts = _reference_setup(work)
    accelerator, unet = parts[0], parts[1]
    tokenizer = CLIPTokenizer.from_pretrained(work / "sd15", subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(work / "sd15", subfolder="text_encoder").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(work / "sd15", subfolder="vae").requires_grad_(False)
    files = sorted((work / "images").glob("*.png"))
    rng = random.Random(0)

    def example(path):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = RESOLUTION / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
        left, top = (im.width - RESOLUTION) // 2, (im.height - RESOLUTION) // 2
        im = im.crop((left, top, left + RESOLUTION, top + RESOLUTION))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        px = torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1)
        ids = tokenizer(path.with_suffix(".txt").read_text(), max_length=tokenizer.model_max_length,
                        padding="max_length", truncation=True, return_tensors="pt").input_ids
        return px[None], ids

    order = []
    for _ in range(steps):
        if not order:
            order = files[:]
            rng.shuffle(order)
        pixel_values, input_ids = example(order.pop())
        latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        hidden = text_encoder(input_ids, return_dict=False)[0]
        _reference_step(*parts, latents, hidden)
    unwrapped = accelerator.unwrap_model(unet)
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrapped))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(work / "ref-e2e"), unet_lora_layers=lora,
                                              safe_serialization=True)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


def worker_lorakit_e2e(work: Path, steps: int) -> dict:
    from lorakit.train.loop import run

    t0 = time.perf_counter()
    run(_lorakit_config(work, "images", steps, "lk-e2e.safetensors", flip=True))
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


WORKERS = {name[len("worker_"):]: fn for name, fn in globals().items() if name.startswith("worker_")}


# --- driver ------------------------------------------------------------------------------------------
def _spawn(name: str, work: Path, steps: int, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--work", str(work), "--steps", str(steps),
                           "--threads", str(threads)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_steps(runs: list[dict], skip: int = 2) -> float:
    return statistics.median(t for r in runs for t in r["times"][skip:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="steps per per-step worker (2 are warm-up)")
    ap.add_argument("--e2e-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the per-step workers")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-bench-train")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every worker (0: torch's default)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](args.work, args.steps)))
        return

    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    setup(args.work)
    step_names = ("reference_step", "lorakit_step", "floor", "lorakit_step_gc")
    runs: dict[str, list[dict]] = {n: [] for n in step_names}
    for r in range(args.rounds):
        for name in step_names:
            runs[name].append(_spawn(name, args.work, args.steps, args.threads))
            print(f"round {r + 1}: {name} {statistics.median(runs[name][-1]['times'][2:]):.2f} s/step", flush=True)
    per_step = {n: {"s_per_step": _median_steps(v), "peak_rss_gb": max(x["peak_rss"] for x in v) / 1e9,
                    "all_step_times": [x["times"] for x in v]} for n, v in runs.items()}
    e2e = {}
    if not args.skip_e2e:
        for name in ("reference_e2e", "lorakit_e2e"):
            e2e[name] = _spawn(name, args.work, args.e2e_steps, args.threads)
            print(f"{name}: {e2e[name]['seconds']:.1f} s", flush=True)

    ref = per_step["reference_step"]
    rows = [("reference (diffusers + PEFT)", "reference_step"), ("lorakit", "lorakit_step"),
            ("lorakit, --gradient-checkpointing", "lorakit_step_gc"), ("floor (frozen UNet fwd + bwd)", "floor")]
    lines = ["(a) per step: SD 1.5 architecture, 256 px, batch 1, rank 16, fp32, cached latents/embeddings", "",
             "| | s/step | × reference time | peak RSS (GB) | × reference memory |", "|---|---:|---:|---:|---:|"]
    for label, key in rows:
        v = per_step[key]
        lines.append(f"| {label} | {v['s_per_step']:.2f} | {v['s_per_step'] / ref['s_per_step']:.3f} | "
                     f"{v['peak_rss_gb']:.2f} | {v['peak_rss_gb'] / ref['peak_rss_gb']:.3f} |")
    if e2e:
        r, k = e2e["reference_e2e"], e2e["lorakit_e2e"]
        lines += ["", f"(b) end to end: 10 images on disk → saved LoRA, {args.e2e_steps} steps, 256 px", "",
                  "| | seconds | speed-up | peak RSS (GB) |", "|---|---:|---:|---:|",
                  f"| reference (VAE + text encoder every step) | {r['seconds']:.1f} | 1.00× | {r['peak_rss'] / 1e9:.2f} |",
                  f"| lorakit (latent + text caches) | {k['seconds']:.1f} | {r['seconds'] / k['seconds']:.2f}× | "
                  f"{k['peak_rss'] / 1e9:.2f} |"]
    table = "\n".join(lines)
    print(table)
    out = HERE / "results" / "train_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "load_average_at_end": os.getloadavg()},
        "settings": {"resolution": RESOLUTION, "rank": RANK, "batch": 1, "dtype": "fp32", "targets": TARGETS,
                     "steps": args.steps, "rounds": args.rounds, "e2e_steps": args.e2e_steps},
        "per_step": per_step, "end_to_end": e2e, "table": table}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
