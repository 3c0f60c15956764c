"""Extract a LoRA from a fine-tune: the low-rank update that best takes the base to the tuned model.

Layer by layer over the targeted modules (kohya's default `transformer` preset, plus the ResNet
and resampler convs when a conv rank is given), ΔW = W_tuned − W_base goes through
`lora.algebra.extract_module` (randomized SVD unless the matrix is small). As in kohya's
extract_lora_from_models.py, the text encoder is extracted only when it differs from the base
by more than `min_diff` somewhere; on top of that, any single module whose ΔW is zero (up to
float rounding) is left out rather than written as a zero LoRA. The result reports, per part,
the relative Frobenius error ‖ΔW − LoRA‖ / ‖ΔW‖ over all its targeted modules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import LoraKitError
from ..lora.algebra import ExtractInfo, extract_module, sq_norm
from ..lora.ranks import Dynamic
from ..lora.targets import PRESETS, ModelParts, Target, select

ZERO_DIFF = 1e-7  # max |ΔW| at or below this is "unchanged" (fp32 round-off of an untouched layer)


@dataclass
class PartReport:
    """One model part (unet, te, te1, te2): what was extracted and how well."""

    part: str
    modules: int = 0
    skipped: int = 0
    delta_sq: float = 0.0
    error_sq: float = 0.0
    max_diff: float = 0.0
    extracted: bool = True

    @property
    def relative_error(self) -> float:
        return (self.error_sq / self.delta_sq) ** 0.5 if self.delta_sq > 0 else 0.0

    def describe(self, min_diff: float) -> str:
        if not self.extracted:
            return (f"{self.part}: same as the base (max |ΔW| {self.max_diff:.2e} ≤ {min_diff:g}), not extracted")
        skipped = f", {self.skipped} unchanged skipped" if self.skipped else ""
        return f"{self.part}: {self.modules} modules{skipped}, relative error {self.relative_error:.4%}"


@dataclass
class Extraction:
    modules: dict[str, dict[str, torch.Tensor]]
    parts: dict[str, PartReport]
    infos: dict[str, ExtractInfo] = field(default_factory=dict)
    family: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    min_diff: float = 0.01

    def report(self) -> list[str]:
        """One line per part: modules, skipped, relative error (or why it was left out)."""
        return [rep.describe(self.min_diff) for rep in self.parts.values()]


def _pairs(base: ModelParts, tuned: ModelParts, preset: str) -> list[tuple[Target, Target]]:
    """Targets of the base matched by name with the tuned model's; any mismatch is another architecture."""
    if base.family != tuned.family:
        raise LoraKitError(f"the tuned model is {tuned.family} but the base is {base.family}: "
                           "extraction needs two models of one architecture")
    ours = select(base, preset)
    theirs = {t.name: t for t in select(tuned, preset)}
    if len(ours) != len(theirs):
        raise LoraKitError(f"the tuned model has {len(theirs)} targeted layers, the base {len(ours)}: "
                           "they are different architectures")
    pairs = []
    for t in ours:
        other = theirs.get(t.name)
        if other is None:
            raise LoraKitError(f"the tuned model has no layer {t.name}: it is another architecture than the base")
        if tuple(other.weight().shape) != tuple(t.weight().shape):
            raise LoraKitError(f"layer {t.name} is {tuple(other.weight().shape)} in the tuned model but "
                               f"{tuple(t.weight().shape)} in the base: different architectures")
        pairs.append((t, other))
    return pairs


def _diff(b: Target, t: Target) -> torch.Tensor:
    return t.weight().detach().float() - b.weight().detach().float()


def _max_abs(x: torch.Tensor) -> float:
    lo, hi = torch.aminmax(x)
    return max(-float(lo), float(hi))


def _check_options(rank, dynamic, conv_rank, clamp_quantile, preset) -> str:
    """Bad options fail before any model is loaded; returns the preset to use."""
    for name, r in (("rank", rank), ("conv rank", conv_rank)):
        if r is not None and r < 1:
            raise LoraKitError(f"{name} must be at least 1, got {r}")
    if rank is None and dynamic is None:
        raise LoraKitError("give a rank, a dynamic method, or both (the rank then caps it)")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise LoraKitError(f"the clamp quantile must lie in (0, 1], got {clamp_quantile:g}")
    preset = preset or ("full" if conv_rank else "transformer")
    if preset not in PRESETS:
        raise LoraKitError(f"unknown target preset {preset!r}: choose from {', '.join(PRESETS)}")
    return preset


def extract_parts(base: ModelParts, tuned: ModelParts, rank: int | None = None, dynamic: Dynamic | None = None, *,
                  conv_rank: int | None = None, preset: str | None = None, clamp_quantile: float | None = None,
                  min_diff: float = 0.01, oversample: int = 8, n_iter: int = 2, exact: bool | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> Extraction:
    """The LoRA of tuned − base on the targeted layers of two loaded models of one family.

    `preset` defaults to `transformer`, or `full` (ResNet and resampler convs too) when a
    `conv_rank` is given; kxk convs get `conv_rank` (else `rank`), everything else `rank`.
    """
    preset = _check_options(rank, dynamic, conv_rank, clamp_quantile, preset)
    return _extract_pairs(_pairs(base, tuned, preset), _diff, rank, dynamic, conv_rank=conv_rank,
                          clamp_quantile=clamp_quantile, min_diff=min_diff, oversample=oversample, n_iter=n_iter,
                          exact=exact, progress=progress, family=base.family)


def _extract_pairs(pairs: list[tuple[Target, Target]], diff: Callable[[Target, Target], torch.Tensor],
                   rank: int | None, dynamic: Dynamic | None, *, conv_rank: int | None, clamp_quantile: float | None,
                   min_diff: float, oversample: int, n_iter: int, exact: bool | None,
                   progress: Callable[[int, int, str], None] | None, family: str) -> Extraction:
    """One layer at a time: `diff` gives its ΔW (fp32), which is extracted and dropped, so only
    one layer's update is ever held (the models themselves may be files read layer by layer)."""
    reports: dict[str, PartReport] = {}
    with torch.no_grad():
        for b, t in pairs:  # kohya's rule: a text encoder is extracted only if it changed by more than min_diff
            rep = reports.setdefault(b.part, PartReport(b.part))
            if b.part != "unet":
                rep.max_diff = max(rep.max_diff, _max_abs(diff(b, t)))
    for rep in reports.values():
        rep.extracted = rep.part == "unet" or rep.max_diff > min_diff
    modules, infos = {}, {}
    with torch.no_grad():
        for i, (b, t) in enumerate(pairs):
            if progress is not None:
                progress(i, len(pairs), b.name)
            rep = reports[b.part]
            delta = diff(b, t)
            biggest = _max_abs(delta)
            rep.max_diff = max(rep.max_diff, biggest)
            if not rep.extracted or biggest <= ZERO_DIFF:  # left out: its whole ΔW is error
                rep.skipped += int(rep.extracted)
                size = sq_norm(delta)
                rep.delta_sq += size
                rep.error_sq += size
                continue
            r = conv_rank if (b.is_conv3 and conv_rank) else rank
            module, info = extract_module(delta, r, dynamic, clamp_quantile=clamp_quantile, oversample=oversample,
                                          n_iter=n_iter, exact=exact)
            modules[b.name], infos[b.name] = module, info
            rep.modules += 1
            rep.delta_sq += info.delta_sq
            rep.error_sq += info.error_sq
    if progress is not None:
        progress(len(pairs), len(pairs), "")
    if not modules:
        raise LoraKitError("the tuned model does not differ from the base on any targeted layer")
    return Extraction(modules, reports, infos, family, min_diff=min_diff)


def _label(model) -> str:
    return Path(str(model.source)).name or str(model.source)


class _Loaded:
    """A model loaded whole (hub ids, pickles, a BaseModel given), read as a streamed one is."""

    def __init__(self, model):
        self.family, self.prediction_type, self.source = model.family, model.prediction_type, model.source
        self.model, self.parts = model, model.parts()

    def read(self, target: Target, dtype: torch.dtype) -> torch.Tensor:
        return target.weight().detach()

    def locate(self, target: Target) -> None:
        return None

    def require_finite(self, skip=()) -> None:
        self.model.require_finite()

    def close(self) -> None:
        pass


def _open(spec, dtype: torch.dtype, allow_pickle: bool, config_dir):
    """The model read layer by layer from its files when it can be (models.streaming), else loaded whole."""
    from ..models import BaseModel, load_model
    from ..models.streaming import open_streamed

    if isinstance(spec, BaseModel):
        return _Loaded(spec)
    streamed = open_streamed(str(spec), config_dir=config_dir)
    if streamed is not None:
        return streamed
    return _Loaded(load_model(str(spec), dtype=dtype, components=("unet", "text_encoders"), allow_pickle=allow_pickle,
                              config_dir=config_dir))


def extract(base, tuned, rank: int | None = None, dynamic: str | Dynamic | None = None, *,
            conv_rank: int | None = None, preset: str | None = None, clamp_quantile: float | None = None,
            min_diff: float = 0.01, out: str | os.PathLike | None = None, dtype: torch.dtype | None = torch.float16,
            load_dtype: torch.dtype = torch.float32, progress: Callable[[int, int, str], None] | None = None,
            allow_pickle: bool = False, config_dir: str | os.PathLike | None = None, **options) -> Extraction:
    """The LoRA of `tuned` − `base` (model paths, hub ids or loaded BaseModels), optionally saved.

    Weights are taken in `load_dtype` (fp32 by default, so that small fine-tuning updates are not
    lost to rounding). Single .safetensors files and diffusers folders with safetensors weights are
    read one targeted layer at a time (peak memory: a few layers, not two models); anything else
    is loaded whole (two SDXL models need about 26 GB so in fp32). `config_dir` is the diffusers
    config folder for single files that are not the shipped architectures. See `extract_parts`.
    """
    dyn = Dynamic.parse(dynamic) if isinstance(dynamic, str) else dynamic
    preset = _check_options(rank, dyn, conv_rank, clamp_quantile, preset)
    if out is not None:
        from ..writable import require_writable

        require_writable(out)
    base_model = tuned_model = None
    try:
        base_model = _open(base, load_dtype, allow_pickle, config_dir)
        tuned_model = _open(tuned, load_dtype, allow_pickle, config_dir)
        res = _extract_models(base_model, tuned_model, tuned, rank, dyn, conv_rank=conv_rank, preset=preset,
                              clamp_quantile=clamp_quantile, min_diff=min_diff, load_dtype=load_dtype,
                              progress=progress, **options)
    finally:
        for model in (base_model, tuned_model):
            if model is not None:
                model.close()
    what = f"dynamic {dyn}" + (f" (at most {rank})" if rank else "") if dyn else f"rank {rank}"
    if conv_rank:
        what += f", conv rank {conv_rank}"
    errors = ", ".join(f"{p.part} {p.relative_error:.3%}" for p in res.parts.values() if p.extracted)
    res.metadata = {"ss_training_comment": f"extracted by lorakit from {_label(tuned_model)} − "
                                           f"{_label(base_model)} at {what}; relative error {errors}"}
    if base_model.prediction_type == "v_prediction":
        res.metadata["modelspec.prediction_type"] = "v"
    if out is not None:
        from ..formats import save_lora
        from ..formats.st_io import read_metadata

        res.path = save_lora(out, res.modules, res.metadata, dtype=dtype, family=res.family)
        res.metadata = read_metadata(res.path)
    return res


def _extract_models(base, tuned, tuned_spec, rank, dyn, *, conv_rank, preset, clamp_quantile, min_diff, load_dtype,
                    progress, **options) -> Extraction:
    """Both models' NaN/Inf check (the targeted layers as they are read, the rest up front), then
    the layers in pairs."""
    if tuned.family != base.family:
        raise LoraKitError(f"the tuned model is {tuned.family} but the base is {base.family}: "
                           "extraction needs two models of one architecture", tuned_spec)
    try:
        pairs = _pairs(base.parts, tuned.parts, preset)
    except LoraKitError as exc:
        raise LoraKitError(exc.message, exc.path or tuned_spec) from None
    for model, side in ((base, 0), (tuned, 1)):
        located = (model.locate(pair[side]) for pair in pairs)
        model.require_finite({(pair[side].part, loc[0]) for pair, loc in zip(pairs, located) if loc is not None})

    def diff(b: Target, t: Target) -> torch.Tensor:
        return tuned.read(t, load_dtype).float() - base.read(b, load_dtype).float()

    try:
        return _extract_pairs(pairs, diff, rank, dyn, conv_rank=conv_rank, clamp_quantile=clamp_quantile,
                              min_diff=min_diff, progress=progress, family=base.family,
                              **{"oversample": 8, "n_iter": 2, "exact": None, **options})
    except LoraKitError as exc:
        raise LoraKitError(exc.message, exc.path or tuned_spec) from None
