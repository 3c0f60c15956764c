"""Which number format a run uses, chosen per machine and model, and why.

On CUDA lorakit picks what a kohya or diffusers user would (bf16 where the GPU has it, else
fp16). On a CPU, bf16 pays only where the CPU has bf16 arithmetic (AVX512-BF16 or AMX) and the
denoiser is large enough that its matrix products, not per-call overhead, dominate: small models
(the toy) run slower in bf16 and stay in fp32, so their results are unchanged.

Drawing images is another matter: there a LoRA is judged by its effect (the image with it minus
the image without), and a modest LoRA's effect is smaller than bf16's own rounding of the
activations. On SD 1.5's UNet (benchmarks/lora_effect.py) bf16 gets that effect 4-5× wrong at
strength 0.3, fp16 (what GPU users draw in) about 2/3 wrong, fp32 exactly; keeping only the adapted
layers in fp32 does not help, since every bf16 activation downstream rounds the effect again. CPUs
run fp16 emulated (minutes per call), so a CPU draws in fp32.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

# Denoiser size from which bf16 pays on a CPU with AVX512-BF16, from benchmarks/precision_crossover.py
# on this project's quiet 2-core Xeon (avx512_bf16): forward + backward of the frozen UNet, fp32 time
# over bf16-weights time: the toy UNet (2.2 M parameters, batch 8, 8×8 latents) 0.85× (bf16 loses: per-
# call overhead dominates), SD 1.5's UNet scaled to width 64 (38 M, 256 px, batch 1) 1.28×, width
# 128 (142 M) 1.87×, SD 1.5 itself (860 M) 1.97×. The crossover lies between 2.2 M and 38 M; 20 M
# sits between them. Every real denoiser lorakit loads is ≥ 860 M (SD 1.x/2.x 0.86 B, SDXL 2.6 B,
# SD 3.x ≥ 2 B, Flux 12 B); the tiny test models are ≤ a few M and stay in fp32.
BF16_MIN_PARAMETERS_CPU = 20_000_000


@dataclass(frozen=True)
class Precision:
    """The chosen format: `name` (fp32, bf16, fp16), its torch dtype and the reason, in words."""

    name: str
    reason: str
    final: bool = True  # False: a CPU guess that waits for the model's size

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def mixed_precision(self) -> str:
        """accelerate's and kohya's spelling (ss_mixed_precision): no, fp16, bf16."""
        return "no" if self.name == "fp32" else self.name

    def line(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def cpu_bf16_kind() -> str | None:
    """'AMX' or 'AVX512-BF16' when this CPU computes in bf16 natively (checked at run time), else None."""
    cpu = getattr(torch, "cpu", None)
    for kind, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        check = getattr(cpu, probe, None)
        try:
            if check is not None and check():
                return kind
        except RuntimeError:  # a torch build without the probe's backend
            continue
    return None


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e7 else f"{n / 1e6:.1f} M"


def choose(device: str | torch.device, parameters: int | None, requested: str = "auto",
           label: str = "UNet") -> Precision:
    """The format for a run on `device` with a denoiser of `parameters` (None: not known yet).

    `requested` is what the user asked: auto, or no/fp32, fp16, bf16 (taken as given)."""
    requested = {"no": "fp32", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(requested, requested)
    if requested != "auto":
        return Precision(requested, "as asked")
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "CUDA device with bf16")
        return Precision("fp16", "CUDA device without bf16")
    if kind != "cpu":  # MPS, XPU: fp32 as before; their half-precision training is the user's call
        return Precision("fp32", f"{kind} device")
    fast = cpu_bf16_kind()
    if fast is None:
        return Precision("fp32", "CPU without AVX512-BF16 or AMX: bf16 would be emulated")
    if parameters is None:
        return Precision("bf16", f"CPU with {fast}, model size not known yet", final=False)
    threshold = _millions(BF16_MIN_PARAMETERS_CPU)
    if parameters >= BF16_MIN_PARAMETERS_CPU:
        return Precision("bf16", f"CPU with {fast}, {label} {_millions(parameters)} parameters ≥ {threshold}")
    return Precision("fp32", f"{label} {_millions(parameters)} parameters: bf16 is slower below {threshold} "
                             f"on this CPU")


def choose_for_images(device: str | torch.device, weights: int | None = None,
                      available: int | None = None) -> Precision:
    """The format that draws images (generate, evaluate, the web UI), for a model of `weights` numbers
    (all parts; None: not known) with `available` bytes of memory free (None: not known).

    A GPU draws in fp16, as A1111 and ComfyUI users do. A CPU draws in fp32: its only fast half
    format, bf16, blurs a LoRA's effect (see above); bf16 only where the fp32 weights would not fit."""
    if torch.device(device).type != "cpu":
        return Precision("fp16", f"{device} device")
    if weights is not None and available is not None and 4 * weights > available:
        from .fit_check import gib

        return Precision("bf16", f"fp32 weights ({gib(4 * weights)}) would not fit in the {gib(available)} free; "
                                 f"bf16 shows a LoRA's effect coarsely")
    return Precision("fp32", "CPU: bf16 would blur a LoRA's effect, fp16 runs emulated")


def announce(precision: Precision, main: bool = True) -> None:
    """Print the choice once, on stderr, from the main process only."""
    if main:
        print(precision.line(), file=sys.stderr, flush=True)
