"""Training speed and memory: lorakit against the diffusers + PEFT way and the floors, in one run.

(a) Per step, SD 1.5's architecture (random weights) at 256 and 512 px, batch 1, LoRA rank 16 on
    to_q/to_k/to_v/to_out.0, latents and text embeddings computed beforehand:
    - lorakit: `lorakit.train.run` with its default precision (`--mixed-precision auto`: bf16 on a CPU
      with AVX512-BF16 or AMX, since SD 1.5 is far above the size where bf16 pays), preset attn,
      gaussian init;
    - reference: the loop of diffusers' examples/text_to_image/train_text_to_image_lora.py
      (unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", ...)), AdamW,
      accelerate, clip_grad_norm_), in fp32 (no flag) and with `--mixed_precision bf16` done as the
      script does it: weight_dtype bf16 for the frozen UNet, the adapter added after the cast,
      `cast_training_params` to fp32 only for fp16 (so PEFT's bf16 LoRA layers train in bf16), the
      forward under accelerate's autocast;
    - floors: the frozen UNet's forward and backward to its input, no LoRA, in bf16 (weights bf16, no
      autocast) and in fp32.
(b) End to end, 10 images on disk to a saved LoRA (40 steps, 256 px): lorakit's default (latent and
    text-embedding caches) against the reference way in fp32 (VAE and text encoder on every step).

Every measurement runs in its own process, so its peak RSS is its own. The per-step workers
alternate (and reverse their order every other round) so that load from other programs hits all of
them alike; per-step figures are medians over the rounds, the first step of each worker dropped.

    python benchmarks/train_step.py [--steps 4] [--rounds 2] [--resolutions 256,512] [--e2e-steps 40]
    python benchmarks/train_step.py --quick      # tiny model, seconds: a smoke run

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
RANK, LR = 16, 1e-4
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


# --- set-up (once) ---------------------------------------------------------------------------------
def setup(work: Path, quick: bool = False, resolutions=(256,)) -> None:
    """SD 1.5-architecture pipeline (default init, seed 0; --quick: lorakit's tiny SD 1 pipeline) as an
    fp32 diffusers folder; 10 captioned images at 256 px and one image per per-step resolution."""
    import numpy as np
    from PIL import Image

    model = work / "sd15"
    if not (model / "model_index.json").is_file():
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from lorakit.models.single_file import CONFIGS_DIR
        from lorakit.models.tokenizer import clip_tokenizer

        if quick:
            from lorakit.models.tiny import tiny_pipeline

            pipe = tiny_pipeline("sd1")
        else:
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
    e2e = 64 if quick else 256
    for name, n, side in [("images", 10, e2e)] + [(f"one-{r}", 1, r) for r in resolutions]:
        folder = work / name
        if folder.is_dir():
            continue
        folder.mkdir(parents=True)
        for i in range(n):
            arr = np.empty((side, side, 3), np.uint8)
            arr[...] = rng.integers(0, 255, 3)
            y, x = rng.integers(side // 8, side * 5 // 8, 2)
            arr[y:y + side * 3 // 8, x:x + side * 3 // 8] = rng.integers(0, 255, 3)
            Image.fromarray(arr).save(folder / f"img{i:02d}.png")
            (folder / f"img{i:02d}.txt").write_text(f"sks object, a square, colour {i}")


# --- workers (each in its own process) -------------------------------------------------------------
def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _shapes(work: Path, resolution: int):
    """Latent and text-embedding shapes of the saved model at `resolution`."""
    unet = json.loads((work / "sd15" / "unet" / "config.json").read_text())
    vae = json.loads((work / "sd15" / "vae" / "config.json").read_text())
    side = resolution // 2 ** (len(vae["block_out_channels"]) - 1)
    return (1, unet["in_channels"], side, side), (1, 77, unet["cross_attention_dim"])


def _reference_setup(work: Path, precision: str = "fp32"):
    """As train_text_to_image_lora.py: frozen UNet cast to weight_dtype, PEFT adapter, AdamW, accelerate."""
    import torch
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    mixed = {"fp32": "no", "bf16": "bf16"}[precision]
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    weight_dtype = torch.float32
    if accelerator.mixed_precision == "fp16":
        weight_dtype = torch.float16
    elif accelerator.mixed_precision == "bf16":
        weight_dtype = torch.bfloat16
    unet = UNet2DConditionModel.from_pretrained(work / "sd15", subfolder="unet")
    unet.requires_grad_(False)
    unet.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    if accelerator.mixed_precision == "fp16":  # the script upcasts the LoRA only for fp16
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=1000)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    noise_scheduler = DDPMScheduler.from_pretrained(work / "sd15", subfolder="scheduler")
    return accelerator, unet, params, optimizer, lr_scheduler, noise_scheduler, weight_dtype


def _reference_step(accelerator, unet, params, optimizer, lr_scheduler, noise_scheduler, weight_dtype, latents,
                    hidden):
    import torch
    import torch.nn.functional as F

    unet.train()
    with accelerator.accumulate(unet):
        latents = latents.to(weight_dtype)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = unet(noisy, timesteps, hidden.to(weight_dtype), return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    return float(loss)


def worker_reference_step(work: Path, steps: int, resolution: int, precision: str) -> dict:
    import torch

    torch.manual_seed(0)
    parts = _reference_setup(work, precision)
    latent_shape, hidden_shape = _shapes(work, resolution)
    latents, hidden = torch.randn(latent_shape), torch.randn(hidden_shape)  # precomputed, as for lorakit
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _reference_step(*parts, latents, hidden)
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss()}


def worker_floor(work: Path, steps: int, resolution: int, precision: str) -> dict:
    """The frozen UNet's forward and backward to its input: what any LoRA step costs at least."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    unet = UNet2DConditionModel.from_pretrained(work / "sd15", subfolder="unet", dtype=dtype)
    unet.requires_grad_(False)
    latent_shape, hidden_shape = _shapes(work, resolution)
    hidden, times = torch.randn(hidden_shape, dtype=dtype), []
    for _ in range(steps):
        x = torch.randn(latent_shape, dtype=dtype, requires_grad=True)
        t0 = time.perf_counter()
        out = unet(x, torch.randint(0, 1000, (1,)), hidden, return_dict=False)[0]
        F.mse_loss(out.float(), torch.randn(out.shape)).backward()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_rss": _peak_rss()}


def _lorakit_config(work: Path, data: str, steps: int, out: str, resolution: int, **extra):
    from lorakit.train.config import TrainConfig

    return TrainConfig(model=str(work / "sd15"), data=work / data, out=work / out, resolution=resolution,
                       steps=steps, rank=RANK, alpha=float(RANK), preset="attn", init="gaussian", optimizer="adamw",
                       train_text_encoder=False,  # the reference trains the UNet only
                       lr=LR, weight_decay=1e-2, max_grad_norm=1.0, progress=False, tensorboard=False,
                       cache_latents="memory", cache_text="memory", save_dtype="fp32", **extra)


def worker_lorakit_step(work: Path, steps: int, resolution: int, precision: str) -> dict:
    """lorakit's default precision ("auto"); another value is passed as --mixed-precision."""
    from lorakit.train.loop import Trainer

    trainer = Trainer(_lorakit_config(work, f"one-{resolution}", steps, f"lk-step-{resolution}.safetensors",
                                      resolution, mixed_precision=precision))
    result = trainer.run()
    return {"times": result.step_times, "peak_rss": _peak_rss(), "precision": trainer.precision.line()}


def worker_reference_e2e(work: Path, steps: int, resolution: int, precision: str) -> dict:
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
    parts = _reference_setup(work, precision)
    accelerator, unet, weight_dtype = parts[0], parts[1], parts[-1]
    tokenizer = CLIPTokenizer.from_pretrained(work / "sd15", subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(work / "sd15", subfolder="text_encoder").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(work / "sd15", subfolder="vae").requires_grad_(False)
    text_encoder.to(dtype=weight_dtype)
    vae.to(dtype=weight_dtype)
    files = sorted((work / "images").glob("*.png"))
    rng = random.Random(0)

    def example(path):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        im = im.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR)
        left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
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
        latents = vae.encode(pixel_values.to(weight_dtype)).latent_dist.sample() * vae.config.scaling_factor
        hidden = text_encoder(input_ids, return_dict=False)[0]
        _reference_step(*parts, latents, hidden)
    unwrapped = accelerator.unwrap_model(unet)
    lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unwrapped))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(work / "ref-e2e"), unet_lora_layers=lora,
                                              safe_serialization=True)
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


def worker_lorakit_e2e(work: Path, steps: int, resolution: int, precision: str) -> dict:
    from lorakit.train.loop import run

    t0 = time.perf_counter()
    run(_lorakit_config(work, "images", steps, "lk-e2e.safetensors", resolution, flip=True,
                        mixed_precision=precision))
    return {"seconds": time.perf_counter() - t0, "peak_rss": _peak_rss()}


QUICK = False
WORKERS = {name[len("worker_"):]: fn for name, fn in globals().items() if name.startswith("worker_")}
# (label, worker, precision): the per-step rows, in the order they run
STEP_ROWS = [("lorakit (default: auto)", "lorakit_step", "auto"),
             ("reference, --mixed_precision bf16", "reference_step", "bf16"),
             ("reference, fp32", "reference_step", "fp32"),
             ("bf16 floor (frozen UNet fwd + bwd)", "floor", "bf16"),
             ("fp32 floor", "floor", "fp32")]


# --- driver ------------------------------------------------------------------------------------------
def _spawn(name: str, work: Path, steps: int, threads: int, resolution: int, precision: str) -> dict:
    if QUICK:  # a smoke run: in this process (the subprocess round trip is what takes the time)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state()  # each worker builds its own Accelerator, as in its own process
        GradientState._reset_state()
        return json.loads(json.dumps(WORKERS[name](work, steps, resolution, precision)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--work", str(work), "--steps", str(steps),
                           "--threads", str(threads), "--resolution", str(resolution), "--precision", precision],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {name} ({precision}, {resolution} px) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_steps(runs: list[dict], skip: int = 1) -> float:
    return statistics.median(t for r in runs for t in (r["times"][skip:] or r["times"]))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per per-step worker (the first is dropped)")
    ap.add_argument("--e2e-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the per-step workers")
    ap.add_argument("--resolutions", default="256,512", help="per-step resolutions, px")
    ap.add_argument("--rounds-512", type=int, default=1, help="rounds at resolutions above 256 px (slower)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-bench-train")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every worker (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="lorakit's tiny SD 1 model, 64 px, 3 steps: a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--resolution", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](args.work, args.steps, args.resolution, args.precision)))
        return {}

    import torch

    global QUICK
    QUICK = args.quick
    if args.quick:
        args.steps, args.rounds, args.rounds_512, args.e2e_steps, args.resolutions = 2, 1, 1, 2, "64"
        torch.set_num_threads(args.threads or 1)  # tiny models: one thread beats two contended ones
        args.work = args.work.with_name(args.work.name + "-quick")
    resolutions = [int(r) for r in args.resolutions.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    setup(args.work, args.quick, resolutions)
    per_step: dict[int, dict] = {}
    for res in resolutions:
        runs: dict[tuple, list[dict]] = {}
        rounds = args.rounds if res <= 256 else args.rounds_512
        for r in range(rounds):
            for label, name, prec in (STEP_ROWS if r % 2 == 0 else STEP_ROWS[::-1]):
                got = _spawn(name, args.work, args.steps, args.threads, res, prec)
                runs.setdefault((name, prec), []).append(got)
                print(f"{res} px, round {r + 1}: {label} {_median_steps([got]):.2f} s/step", flush=True)
        per_step[res] = {f"{n}:{p}": {"s_per_step": _median_steps(v), "peak_rss_gb": max(x["peak_rss"] for x in v) / 1e9,
                                      "all_step_times": [x["times"] for x in v],
                                      **({"precision": v[0]["precision"]} if "precision" in v[0] else {})}
                         for (n, p), v in runs.items()}
    e2e = {}
    if not args.skip_e2e:
        res = 64 if args.quick else 256
        for name, prec in (("reference_e2e", "fp32"), ("lorakit_e2e", "auto")):
            e2e[name] = _spawn(name, args.work, args.e2e_steps, args.threads, res, prec)
            print(f"{name}: {e2e[name]['seconds']:.1f} s", flush=True)

    lines = []
    for res, rows in per_step.items():
        lk, fl16 = rows["lorakit_step:auto"], rows["floor:bf16"]
        r16, r32 = rows["reference_step:bf16"], rows["reference_step:fp32"]
        lines += [f"(a) per step: SD 1.5 architecture, {res} px, batch 1, rank 16, cached latents/embeddings "
                  f"(lorakit chose {lk.get('precision', '?')})", "",
                  "| | s/step | × bf16 floor | peak RSS (GB) | × fp32 reference RSS |", "|---|---:|---:|---:|---:|"]
        for label, name, prec in STEP_ROWS:
            v = rows[f"{name}:{prec}"]
            lines.append(f"| {label} | {v['s_per_step']:.2f} | {v['s_per_step'] / fl16['s_per_step']:.3f} | "
                         f"{v['peak_rss_gb']:.2f} | {v['peak_rss_gb'] / r32['peak_rss_gb']:.3f} |")
        lines += ["", f"goals at {res} px: lorakit / bf16 floor {_ratio(lk['s_per_step'], fl16['s_per_step'])} (≤ 1.1×), "
                  f"lorakit / bf16 reference {_ratio(lk['s_per_step'], r16['s_per_step'])} (≤ 1.0×), "
                  f"fp32 reference / lorakit {_ratio(r32['s_per_step'], lk['s_per_step'])} (≥ 1.7×), "
                  f"lorakit RSS / fp32 reference RSS {_ratio(lk['peak_rss_gb'], r32['peak_rss_gb'])} (≤ 0.6×)", ""]
    if e2e:
        r, k = e2e["reference_e2e"], e2e["lorakit_e2e"]
        lines += [f"(b) end to end: 10 images on disk → saved LoRA, {args.e2e_steps} steps, "
                  f"{64 if args.quick else 256} px", "",
                  "| | seconds | speed-up | peak RSS (GB) |", "|---|---:|---:|---:|",
                  f"| reference, fp32 (VAE + text encoder every step) | {r['seconds']:.1f} | 1.00× | "
                  f"{r['peak_rss'] / 1e9:.2f} |",
                  f"| lorakit default (latent + text caches) | {k['seconds']:.1f} | {r['seconds'] / k['seconds']:.2f}× | "
                  f"{k['peak_rss'] / 1e9:.2f} |", "", "goal: ≥ 1.8×"]
    table = "\n".join(lines)
    print(table)
    data = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                        "platform": platform.platform(), "torch": torch.__version__,
                        "load_average_at_end": os.getloadavg()},
            "settings": {"resolutions": resolutions, "rank": RANK, "batch": 1, "targets": TARGETS,
                         "steps": args.steps, "rounds": args.rounds, "rounds_512": args.rounds_512,
                         "e2e_steps": args.e2e_steps, "quick": args.quick},
            "per_step": {str(k): v for k, v in per_step.items()}, "end_to_end": e2e, "table": table}
    out = HERE / "results" / ("train_step_quick.json" if args.quick else "train_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return data


if __name__ == "__main__":
    main()
