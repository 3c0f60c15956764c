"""LoRA quality: lorakit's trainer against the diffusers DreamBooth-LoRA way, on the toy world.

Both teach the toy base its unseen concept (a ring, trigger `zqx`) from the same data: the 8
shipped concept images and 96 drawn base-world images as regularisation (prior preservation),
rank 8, batch 4 (+ 4 regularisation images), the same steps and seed. After N steps the scorer
measures
- concept fidelity: `zqx` prompts drawn as a ring (toy.evaluate.concept_fidelity, `shape`);
- base accuracy: base-world prompts (no trigger) drawn right (base_accuracy, shape and colour);
and the first checkpoint (every `--every` steps) at which fidelity reaches 95 %.

Trainers:
- lorakit: `lorakit demo`'s recipe through `lorakit.train` (preset full with conv rank 8,
  lr 3e-3 cosine with warmup, min-SNR 5, flipped concept images, 20 % caption dropout on the
  regularisation images); snapshots saved with `Trainer.save_lora` at each checkpoint.
- reference: the loop of diffusers' examples/dreambooth/train_dreambooth_lora.py at its defaults:
  `unet.add_adapter(LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", target_modules=
  [to_k, to_q, to_v, to_out.0, add_k_proj, add_v_proj]))`, AdamW lr 5e-4 (weight decay 1e-2),
  constant schedule, timesteps uniform in [0, 1000), MSE on the scheduler's target, prior loss
  (weight 1) on the class half of a concatenated batch, clip_grad_norm 1.0, VAE latents sampled
  every step, its dataset pairing (length max(instances, class images), instance i mod 8 with
  class image i mod 96, reshuffled each epoch). Each image keeps its own caption (the toy
  prompts name colour and background; the script's SDXL sibling reads captions the same way).
- reference, lorakit's targets and lr: the same loop with PEFT on exactly the layers lorakit
  adapts (attention, feed-forward, projections, ResNet convs, samplers) and lr 3e-3: what is
  left between it and lorakit is the recipe (schedule, min-SNR, flip, caption dropout, init).

    nice -n 10 python benchmarks/quality.py [--seeds 0,1,2] [--schedule 100,200,400,600] [--every 50]
                                           [--n-concept 24] [--n-base 48] [--threads 1]

Prints a markdown table (mean ± sample standard deviation over the seeds) and writes
benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "src"))

RANK = 8
BATCH = 4
GOAL = 0.95
EVAL_SEED = 0
REFERENCE_LR = 5e-4  # train_dreambooth_lora.py's default --learning_rate
SCRIPT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]


# --- scoring -------------------------------------------------------------------------------------
def score(pipe, n_concept: int, n_base: int | None) -> dict:
    from lorakit.toy.evaluate import base_accuracy, concept_fidelity

    out = {"fidelity": concept_fidelity(pipe, n=n_concept, seed=EVAL_SEED).shape}
    if n_base:
        out["base"] = base_accuracy(pipe, n=n_base, seed=EVAL_SEED).shape_and_color
    return out


def eval_pipe():
    from lorakit.models import load_model

    model = load_model("toy")
    model.pipe.set_progress_bar_config(disable=True)
    return model


# --- lorakit ---------------------------------------------------------------------------------------
def run_lorakit(work: Path, seed: int, steps: int, checkpoints: list[int], base_at: set[int], args) -> dict:
    from lorakit.formats import load_network
    from lorakit.train.demo import demo_config
    from lorakit.train.loop import Trainer

    out = work / f"lorakit-{seed}"
    cfg = demo_config(out, steps=steps, seed=seed, progress=False, tensorboard=False, save_dtype="fp32")
    snaps: dict[int, Path] = {}

    def on_step(step: int, loss: float) -> None:
        if step in checkpoints:
            snaps[step] = out / f"snap-{step:05d}.safetensors"
            trainer.save_lora(snaps[step], step, final=False)

    trainer = Trainer(cfg, on_step)
    t0 = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - t0
    model = eval_pipe()
    curve = {}
    for step in checkpoints:
        net = load_network(model.parts(), snaps[step])
        net.merge()
        curve[step] = score(model.pipe, args.n_concept, args.n_base if step in base_at else None)
        net.unmerge()
        net.remove()
    return {"train_seconds": train_s, "curve": curve, "data": str(cfg.data)}


# --- the reference loop ----------------------------------------------------------------------------
def _pairs(folder: Path) -> list[tuple[Path, str]]:
    return [(p, p.with_suffix(".txt").read_text().strip()) for p in sorted(folder.glob("*.png"))]


def lorakit_unet_targets(model) -> list[str]:
    """Module paths lorakit's demo adapts in the UNet (preset full with a conv rank: every layer of it)."""
    from lorakit.lora.targets import select

    return [t.path for t in select(model.parts(), "full", text_encoder=False)]


def run_reference(work: Path, seed: int, steps: int, checkpoints: list[int], base_at: set[int], args,
                  targets: list[str], lr: float) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from PIL import Image

    from lorakit.toy import concept

    torch.manual_seed(seed)  # accelerate's set_seed(args.seed)
    model = eval_pipe()
    pipe = model.pipe
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    config = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=targets)
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    instance = _pairs(concept.dataset_path())  # the captions name the trigger already
    reg_dir = work / f"lorakit-{seed}" / "reg_images"  # the very files lorakit's run trained on
    if not reg_dir.is_dir():
        from lorakit.train.demo import write_dataset

        write_dataset(work / f"lorakit-{seed}", seed=seed)
    klass = _pairs(reg_dir)

    def pixels(path: Path) -> torch.Tensor:  # Resize, RandomCrop (identity at the native 32 px), ToTensor, Normalize
        arr = np.asarray(Image.open(path).convert("RGB"), np.float32) / 127.5 - 1
        return torch.from_numpy(arr).permute(2, 0, 1)

    def ids(captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, truncation=True, padding="max_length", max_length=tokenizer.model_max_length,
                         return_tensors="pt").input_ids

    length = max(len(instance), len(klass))
    gen = torch.Generator().manual_seed(seed)  # the DataLoader's shuffle
    order: list[int] = []
    snaps = {}
    unet.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if len(order) < BATCH:
            order += torch.randperm(length, generator=gen).tolist()
        idx, order = order[:BATCH], order[BATCH:]
        batch = [instance[i % len(instance)] for i in idx] + [klass[i % len(klass)] for i in idx]
        px = torch.stack([pixels(p) for p, _ in batch])
        with torch.no_grad():
            latents = vae.encode(px).latent_dist.sample() * vae.config.scaling_factor
            hidden = text_encoder(ids([c for _, c in batch]))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, hidden, return_dict=False)[0]
        target = noise if noise_scheduler.config.prediction_type == "epsilon" else \
            noise_scheduler.get_velocity(latents, noise, t)
        pred, prior_pred = pred.chunk(2)
        target, prior_target = target.chunk(2)
        loss = F.mse_loss(pred.float(), target.float()) + 1.0 * F.mse_loss(prior_pred.float(), prior_target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step in checkpoints:
            snaps[step] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    train_s = time.perf_counter() - t0
    unet.eval()
    curve = {}
    for step in checkpoints:
        set_peft_model_state_dict(unet, snaps[step])
        curve[step] = score(pipe, args.n_concept, args.n_base if step in base_at else None)
    return {"train_seconds": train_s, "curve": curve}


# --- summary -----------------------------------------------------------------------------------------
def first_reaching(curve: dict, goal: float = GOAL) -> int | None:
    for step in sorted(curve):
        if curve[step]["fidelity"] >= goal:
            return step
    return None


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: list[float]) -> str:
    m, s = mean_sd(xs)
    return f"{100 * m:.0f} ± {100 * s:.0f} %"


def table(results: dict, schedule: list[int], steps: int) -> str:
    names = list(results)
    seeds = {n: len(results[n]) for n in names}
    lines = ["| steps | " + " | ".join(f"{n} ({seeds[n]} seed{'s' * (seeds[n] > 1)}): fidelity | {n}: base"
                                       for n in names) + " |",
             "|---:|" + "---:|---:|" * len(names)]
    for n_steps in schedule:
        cells = []
        for name in names:
            runs = results[name]
            cells.append(fmt([r["curve"][n_steps]["fidelity"] for r in runs]))
            cells.append(fmt([r["curve"][n_steps]["base"] for r in runs]))
        lines.append(f"| {n_steps} | " + " | ".join(cells) + " |")
    reach = []
    for name in names:
        got = [first_reaching(r["curve"]) for r in results[name]]
        shown = ", ".join(str(g) if g is not None else f">{steps}" for g in got)
        reached = [g for g in got if g is not None]
        mean = f"mean {statistics.fmean(reached):.0f}" if len(reached) == len(got) else \
            f"{len(reached)} of {len(got)} seeds reach it"
        reach.append(f"{shown} ({mean})")
    lines.append("| steps to 95 % | " + " | ".join(f"{r} | " for r in reach) + "|")
    return "\n".join(lines)


def write(args, results: dict, schedule: list[int], steps: int, seeds: list[int], matched: list[str],
          seconds: float) -> tuple[Path, str]:
    """The JSON (rewritten after every run, so an interrupted benchmark keeps what it measured)."""
    import torch

    done = {k: v for k, v in results.items() if v}
    text = table(done, schedule, steps)
    out = args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "settings": {"seeds": seeds, "schedule": schedule, "every": args.every, "n_concept": args.n_concept,
                     "n_base": args.n_base, "rank": RANK, "batch": BATCH, "eval_seed": EVAL_SEED,
                     "reference_lr": REFERENCE_LR, "script_targets": SCRIPT_TARGETS,
                     "matched_targets": len(matched)},
        "results": {k: [{**r, "curve": {str(s): v for s, v in r["curve"].items()}} for r in v]
                    for k, v in done.items()},
        "seconds": seconds, "table": text}, indent=1) + "\n")
    return out, text


def combine(args) -> None:
    docs = [json.loads(p.read_text()) for p in args.combine]
    results: dict[str, list] = {}
    for doc in docs:
        for name, runs in doc["results"].items():
            results.setdefault(name, []).extend(
                {**r, "curve": {int(s): v for s, v in r["curve"].items()}} for r in runs)
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    settings = docs[0]["settings"]
    settings["seeds"] = sorted({r["seed"] for runs in results.values() for r in runs})
    text = table(results, settings["schedule"], settings["schedule"][-1])
    out = {**docs[0], "settings": settings, "table": text, "seconds": sum(d["seconds"] for d in docs),
           "results": {k: [{**r, "curve": {str(s): v for s, v in r["curve"].items()}} for r in v]
                       for k, v in results.items()}, "combined_from": [str(p) for p in args.combine]}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(out, indent=1) + "\n")
    print(text)
    print(f"wrote {args.results}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--schedule", default="100,200,400,600", help="steps at which both metrics are reported")
    ap.add_argument("--every", type=int, default=50, help="fidelity checkpoints for the steps-to-95 %% figure")
    ap.add_argument("--n-concept", type=int, default=24, help="concept images per checkpoint (the demo uses 48)")
    ap.add_argument("--n-base", type=int, default=48, help="base images per checkpoint (the demo uses 96)")
    ap.add_argument("--trainers", default="lorakit,reference,reference-matched")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "quality.json")
    ap.add_argument("--combine", type=Path, nargs="+", help="merge the runs of several result files (seeds run "
                    "apart) into --results, and print their table")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-bench-quality")
    args = ap.parse_args()
    if args.combine:
        return combine(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    schedule = sorted(int(s) for s in args.schedule.split(","))
    steps = schedule[-1]
    checkpoints = sorted(set(range(args.every, steps + 1, args.every)) | set(schedule))
    base_at = set(schedule)
    args.work.mkdir(parents=True, exist_ok=True)
    matched = lorakit_unet_targets(eval_pipe())
    trainers = {
        "lorakit": lambda s: run_lorakit(args.work, s, steps, checkpoints, base_at, args),
        "reference": lambda s: run_reference(args.work, s, steps, checkpoints, base_at, args, SCRIPT_TARGETS,
                                             REFERENCE_LR),
        "reference-matched": lambda s: run_reference(args.work, s, steps, checkpoints, base_at, args, matched, 3e-3),
    }
    chosen = args.trainers.split(",")
    results: dict[str, list] = {name: [] for name in chosen}
    t_all = time.perf_counter()
    for seed in seeds:  # lorakit first: it writes the seed's regularisation images the others read
        for name in chosen:
            t0 = time.perf_counter()
            r = trainers[name](seed)
            results[name].append({"seed": seed, **r})
            last = r["curve"][steps]
            print(f"seed {seed} {name}: fidelity {last['fidelity']:.0%}, base {last['base']:.0%} at {steps} steps; "
                  f"95 % at {first_reaching(r['curve'])}; {time.perf_counter() - t0:.0f} s", flush=True)
            write(args, results, schedule, steps, seeds, matched, time.perf_counter() - t_all)
    out, text = write(args, results, schedule, steps, seeds, matched, time.perf_counter() - t_all)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
