"""`--plan` and `--memory-budget`: a run's settings → its memory plan, and the cheapest settings that fit.

The settings are tried in the order of what they cost: gradient checkpointing (time only), an fp8
base (a little precision), int8, nf4 (more), an 8-bit or factored optimizer (the optimizer's
behaviour), then block swap (a GPU's time on copies). Each step keeps the ones before it; the
first that fits is taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import LoraKitError
from .memory_plan import GiB, Plan, Settings, generate_plan, train_plan

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """'12GB' (10⁹ bytes), '12GiB' (2³⁰), '900MB', '12' (GB) → bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS:
        raise LoraKitError(f"--memory-budget {text!r}: give a size such as 12GB, 12GiB or 900MB")
    value = float(found.group(1))
    return int(value * (_UNITS[unit] if unit else 10**9))


def default_device(device: str | None) -> str:
    if device not in (None, "auto"):
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_settings(cfg) -> Settings:
    """What a TrainConfig asks, as the plan reads it: the image and caption counts from the data folder
    (when given), staging as train/loop.py decides it."""
    images, captions, varying = 1, 1, False
    if cfg.data is not None:
        images, captions, varying = _data_counts(cfg)
    staged = (cfg.cache_latents != "none" and cfg.cache_text != "none" and cfg.train_text_encoder is not True
              and not cfg.sample_every and not cfg.evaluate_every and not varying and not cfg.class_prompt)
    return Settings(device=default_device(cfg.device), base_precision=cfg.base_precision,
                    mixed_precision=cfg.mixed_precision, resolution=cfg.resolution, batch_size=cfg.batch_size,
                    gradient_checkpointing=cfg.gradient_checkpointing or cfg.blocks_to_swap > 0,
                    optimizer=cfg.optimizer, rank=cfg.rank, preset=cfg.preset, conv_rank=cfg.conv_rank,
                    train_text_encoder=cfg.train_text_encoder, blocks_to_swap=cfg.blocks_to_swap,
                    images=images * (2 if cfg.flip else 1), captions=captions, staged=staged,
                    cache_latents=cfg.cache_latents == "memory", cache_text=cfg.cache_text == "memory")


def _data_counts(cfg) -> tuple[int, int, bool]:
    from pathlib import Path

    from .data import Subset, scan, subsets_in
    from .data.captions import with_trigger

    data = Path(cfg.data)
    if data.suffix.lower() == ".toml" or not data.is_dir():
        return 1, 1, bool(cfg.shuffle_caption or cfg.caption_dropout)
    defaults = Subset(data, repeats=cfg.repeats, caption_ext=cfg.caption_ext, keep_tokens=cfg.keep_tokens,
                      shuffle_caption=cfg.shuffle_caption, caption_dropout=cfg.caption_dropout, flip=cfg.flip)
    images, captions, varying = 0, set(), False
    for s in subsets_in(data, defaults):
        found = scan(s)
        images += len(found)
        captions.update(with_trigger(it.caption, cfg.trigger) for it in found)
        varying = varying or bool(s.shuffle_caption or s.caption_dropout)
    return max(images, 1), max(len(captions), 1), varying


@dataclass
class Choice:
    settings: Settings
    plan: Plan
    steps: list[str]  # what was changed, in words, in the order taken


def ladder(settings: Settings) -> list[tuple[str, Settings]]:
    """The settings to try, cheapest first, each keeping the changes before it (only those that change
    something the user left at its default)."""
    out, s = [("as asked", settings)], settings
    if not s.gradient_checkpointing:
        s = s.but(gradient_checkpointing=True)
        out.append(("gradient checkpointing", s))
    if s.base_precision == "auto":
        for fmt in ("fp8", "int8", "nf4"):
            out.append((f"base {fmt}", s.but(base_precision=fmt)))
        s = s.but(base_precision="nf4")
    if s.optimizer == "adamw":
        cuda = torch.device(s.device).type == "cuda"
        s = s.but(optimizer="adamw8bit" if cuda else "adafactor")  # bitsandbytes' 8-bit AdamW needs CUDA
        out.append((f"optimizer {s.optimizer}", s))
    return out


def fit(settings: Settings, budget: int, plan_of: Callable[[Settings], Plan], blocks: int = 0) -> Choice:
    """The first settings of the ladder whose plan fits `budget` bytes; then block swap (CUDA, `blocks`
    transformer blocks at most), the fewest blocks that fit. LoraKitError when nothing fits."""
    labels = {}
    best, least = settings, None
    for label, s in ladder(settings):
        plan = plan_of(s)
        labels[s] = label
        if plan.total <= budget:
            return Choice(s, plan, _changes(settings, s))
        if least is None or plan.total < least.total:
            best, least = s, plan
    if torch.device(settings.device).type == "cuda" and blocks > 0 and best.blocks_to_swap == 0:
        swap = lambda n: best.but(blocks_to_swap=n, gradient_checkpointing=True)  # noqa: E731
        most = plan_of(swap(blocks))
        if most.total <= budget:  # the fewest blocks that fit: the plan falls as blocks swap
            low, high = 1, blocks
            while low < high:
                mid = (low + high) // 2
                low, high = (low, mid) if plan_of(swap(mid)).total <= budget else (mid + 1, high)
            return Choice(swap(low), plan_of(swap(low)), _changes(settings, swap(low)))
        best, least = swap(blocks), most
    raise LoraKitError(f"memory budget {budget / GiB:.1f} GiB: nothing fits; the smallest settings "
                       f"({_summary(best)}) need {least.total / GiB:.1f} GiB")


_COSTS = {"fp8": "per-row scaled e4m3 weights, ~3 % weight error", "int8": "per-row int8 weights, ~1 % weight "
          "error, slower matmuls", "nf4": "4-bit NormalFloat weights, ~9 % weight error"}


def _changes(asked: Settings, chosen: Settings) -> list[str]:
    out = []
    if chosen.gradient_checkpointing and not asked.gradient_checkpointing:
        out.append("gradient checkpointing (recomputes activations: slower steps)")
    if chosen.base_precision != asked.base_precision:
        out.append(f"base {chosen.base_precision} ({_COSTS.get(chosen.base_precision, '')})")
    if chosen.optimizer != asked.optimizer:
        why = "8-bit moments" if chosen.optimizer == "adamw8bit" else "factored second moment, no first moment"
        out.append(f"optimizer {chosen.optimizer} ({why})")
    if chosen.blocks_to_swap != asked.blocks_to_swap:
        out.append(f"block swap of {chosen.blocks_to_swap} blocks (copied to the GPU each step)")
    return out


def _summary(s: Settings) -> str:
    bits = [f"base {s.base_precision}", s.optimizer]
    if s.gradient_checkpointing:
        bits.append("gradient checkpointing")
    if s.blocks_to_swap:
        bits.append(f"{s.blocks_to_swap} blocks swapped")
    return ", ".join(bits)


def report(choice: Choice, asked: Plan, budget: int) -> list[str]:
    """A few lines: the budget, what the run as asked needs, what was picked and why."""
    head = f"memory budget {budget / GiB:.1f} GiB: the run as asked needs {asked.total / GiB:.1f} GiB (peak in " \
           f"{asked.peak.name})"
    if not choice.steps:
        return [head + ": it fits, nothing changed"]
    lines = [head + "; picked, cheapest first:"]
    lines += [f"  {step}" for step in choice.steps]
    lines.append(f"  → {choice.plan.total / GiB:.1f} GiB (peak in {choice.plan.peak.name})")
    return lines


def plan_train(cfg, sketch=None) -> tuple[Plan, Settings, object]:
    from .models.sketch import sketch as make_sketch

    sk = sketch or make_sketch(cfg.model, config_dir=cfg.config_dir, text_encoders=cfg.text_encoders,
                               allow_pickle=cfg.allow_pickle, prediction_type=cfg.prediction_type)
    settings = train_settings(cfg)
    return train_plan(sk, settings), settings, sk


def budget_train(cfg, echo=print):
    """`cfg` changed to fit its --memory-budget (the choice printed), or LoraKitError."""
    budget = parse_size(cfg.memory_budget)
    asked, settings, sk = plan_train(cfg)
    choice = fit(settings, budget, lambda s: train_plan(sk, s), blocks=sk.family.block_count(sk.denoiser_config))
    for line in report(choice, asked, budget):
        echo(line)
    s = choice.settings
    return cfg.override({"gradient_checkpointing": s.gradient_checkpointing, "base_precision": s.base_precision,
                         "optimizer": s.optimizer, "blocks_to_swap": s.blocks_to_swap})


def budget_generate(sk, settings: Settings, budget: int, echo=print) -> Settings:
    asked = generate_plan(sk, settings)
    generation = settings.but(gradient_checkpointing=True, optimizer="none")  # nothing to train: formats only
    choice = fit(generation, budget, lambda s: generate_plan(sk, s), blocks=sk.family.block_count(sk.denoiser_config))
    for line in report(choice, asked, budget):
        echo(line)
    return choice.settings
