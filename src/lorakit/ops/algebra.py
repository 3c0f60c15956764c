"""LoRA files in, LoRA files out: resize, merge LoRA + LoRA, extract from two models.

The math lives in `lora.algebra` (module dicts only); this layer loads and checks files,
picks a rank per module (kxk convs may have their own), writes metadata and hashes, and turns
bad input into one-line `LoraKitError`s naming the file. The CLI and the UI call these.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from ..errors import LoraKitError
from ..lora.algebra import RankInfo, concat, factors, project, resize_factors
from ..lora.ranks import Dynamic

PathLike = str | os.PathLike
Progress = Callable[[int, int, str], None]


@dataclass
class AlgebraResult:
    """What an operation produced: modules, their metadata, per-module rank info, where it went."""

    modules: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str]
    family: str | None
    infos: dict[str, RankInfo] = field(default_factory=dict)
    path: Path | None = None

    def ranks(self) -> dict[str, int]:
        return {n: int(m["lora_down.weight"].shape[0]) for n, m in self.modules.items()}


@contextmanager
def single_thread() -> Iterator[None]:
    """Resize and merge run thousands of tiny QR/SVD calls: on those, thread hand-offs cost more
    than they save (and under CPU contention they stall), so they run on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def as_dynamic(value: str | Dynamic | None) -> Dynamic | None:
    return Dynamic.parse(value) if isinstance(value, str) else value


def _load(source, allow_pickle: bool = False):
    from ..formats import LoRAFile, load_lora

    if isinstance(source, LoRAFile):
        return source
    p = Path(source)
    if not p.exists():
        raise LoraKitError("no such file", p)
    return load_lora(p, allow_pickle=allow_pickle)


def _is_conv3(module) -> bool:
    from ..formats.modules import is_conv_kxk

    return is_conv_kxk(module)


def _check_rank(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise LoraKitError(f"{name} must be at least 1, got {value}")


def _writable(out: PathLike | None, fmt: str = "kohya") -> None:
    if out is not None:
        from ..writable import require_writable

        require_writable(out, folder=fmt == "peft")


def _save(result: AlgebraResult, out: PathLike | None, dtype: torch.dtype | None, fmt: str | None) -> AlgebraResult:
    if out is not None:
        from ..formats import save_lora
        from ..formats.st_io import read_metadata

        result.path = save_lora(out, result.modules, result.metadata, format=fmt, dtype=dtype, family=result.family)
        if result.path.is_file():
            result.metadata = read_metadata(result.path)
    return result


# resize --------------------------------------------------------------------------------------

def resize(lora: PathLike, rank: int | None = None, dynamic: str | Dynamic | None = None, *,
           conv_rank: int | None = None, out: PathLike | None = None, dtype: torch.dtype | None = torch.float16,
           format: str | None = None, progress: Progress | None = None,
           allow_pickle: bool = False) -> AlgebraResult:
    """Each module at its best lower rank, same strength (alpha/rank kept), metadata and hashes new.

    `rank` fixes the rank of Linear and 1x1 modules (`conv_rank`, default `rank`, that of kxk
    convs); with `dynamic` (kohya's sv_ratio / sv_fro / sv_cumulative) the rank is picked per
    module and `rank` only caps it. A fixed rank above the file's highest is an error: resizing
    never adds information. Modules already at or below the rank are kept (refactored, lossless).
    """
    dyn = as_dynamic(dynamic)
    _check_rank("rank", rank)
    _check_rank("conv rank", conv_rank)
    if rank is None and dyn is None:
        raise LoraKitError("give --rank, --dynamic, or both (the rank then caps the dynamic pick)")
    _writable(out, format)
    lf = _load(lora, allow_pickle)
    path = lf.path
    _check_kernels(lf)
    fs = {}
    for name, m in lf.modules.items():  # refuses DoRA/OFT before any work
        try:
            fs[name] = factors(m, name)
        except LoraKitError as exc:
            raise LoraKitError(exc.message, path) from None
    ranks = {n: f.rank for n, f in fs.items()}
    lin = [r for n, r in ranks.items() if not _is_conv3(lf.modules[n])]
    conv = [r for n, r in ranks.items() if _is_conv3(lf.modules[n])]
    if dyn is None:  # a fixed rank must lower something; with --dynamic it is only a cap
        top = max(lin or conv or [0])
        if rank > top:
            raise LoraKitError(f"--rank {rank} is above the file's rank {top}: resize only lowers ranks", path)
        if conv and conv_rank is not None and conv_rank > max(conv):
            raise LoraKitError(f"--conv-rank {conv_rank} is above the file's conv rank {max(conv)}: "
                               "resize only lowers ranks", path)
    modules, infos = {}, {}
    names = list(lf.modules)
    with single_thread():
        for i, name in enumerate(names):
            if progress is not None:
                progress(i, len(names), name)
            cap = (conv_rank or rank) if _is_conv3(lf.modules[name]) else rank
            # fp32, never bf16: QR/SVD in bf16 would lose the small singular values a resize keeps
            modules[name], infos[name] = resize_factors(fs[name], cap, dyn, torch.float32)
    old = max(ranks.values()) if ranks else 0
    what = f"dynamic {dyn}" + (f" (at most {rank})" if rank else "") if dyn else f"rank {rank}"
    if conv_rank and not dyn:
        what += f" (conv {conv_rank})"
    comment = f"resized from rank {old} to {what} by lorakit"
    previous = lf.metadata.get("ss_training_comment")
    if previous and previous != "None":
        comment += f"; {previous}"
    metadata = dict(lf.metadata, ss_training_comment=comment)
    result = AlgebraResult(modules, metadata, lf.family, infos)
    return _save(result, out, dtype, format)


def _check_kernels(lf) -> None:
    """A LoHa/LoKr trained on 3×3 convolutions without Tucker holds their factors flattened: the file
    cannot tell which modules are such convolutions, so a plain LoRA of them cannot be laid out."""
    import json

    try:
        args = json.loads(lf.metadata.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        return
    if not isinstance(args, dict) or args.get("algo") not in ("loha", "lokr") or not args.get("conv_dim"):
        return
    if str(args.get("use_tucker", "")).lower() != "true":
        raise LoraKitError(f"this {args['algo']} adapts 3×3 convolutions with flattened factors (conv_dim without "
                           "use_tucker): their kernel is not in the file, so it cannot be resized to a plain LoRA; "
                           "merge it into a checkpoint instead", lf.path)


def resize_table(infos: dict[str, RankInfo]) -> list[tuple[str, int, int, float, float, float]]:
    """Rows for `--verbose`: name, old rank, kept rank, kept Frobenius share, kept Σσ share, σ₁/σ_k."""
    return [(n, i.old_rank, i.new_rank, i.fro_retained, i.sum_retained, i.max_ratio) for n, i in infos.items()]


# merge ---------------------------------------------------------------------------------------

def parse_lora_specs(values: Sequence[str]) -> list[tuple[Path, float]]:
    """`FILE[:WEIGHT]` strings (weight 1 when absent) → (path, weight)."""
    from ..generate import parse_lora_arg

    specs = [parse_lora_arg(v) for v in values]
    return [(s.path, s.weight) for s in specs]


def _common_family(files) -> str | None:
    """The family every LoRA fits (a file that cannot tell fits several: `LoRAFile.candidates`);
    None when that is still open; an error when no family fits them all."""
    from ..formats.detect import describe

    def fits(lf) -> tuple[str, ...]:
        return (lf.family,) if lf.family else lf.candidates

    common = None
    for lf, _ in files:
        if fits(lf):
            common = [f for f in (fits(lf) if common is None else common) if f in fits(lf)]
    if common == []:
        desc = ", ".join(f"{Path(lf.path).name} is {describe(fits(lf)) if fits(lf) else 'unknown'}" for lf, _ in files)
        raise LoraKitError(f"the LoRAs are for different model families ({desc}): they cannot be merged")
    return common[0] if common and len(common) == 1 else None


def merge_loras(loras: Sequence[tuple[PathLike, float]], rank: int | None = None,
                dynamic: str | Dynamic | None = None, *, conv_rank: int | None = None,
                out: PathLike | None = None, dtype: torch.dtype | None = torch.float16, format: str | None = None,
                progress: Progress | None = None, allow_pickle: bool = False) -> AlgebraResult:
    """Σ wᵢ·LoRAᵢ as one LoRA. Exact by default: factors concatenate, ranks add, alpha = rank
    (scale 1), nothing is lost. With `rank` (or `dynamic`) every module is projected onto its
    best rank-`rank` approximation instead (kxk convs: `conv_rank`, default `rank`). A module
    present in only some files is carried over from those, weighted.
    """
    dyn = as_dynamic(dynamic)
    _check_rank("rank", rank)
    _check_rank("conv rank", conv_rank)
    if not loras:
        raise LoraKitError("nothing to merge: give at least one --lora FILE[:WEIGHT]")
    _writable(out, format)
    files = [(_load(p, allow_pickle), float(w)) for p, w in loras]
    family = _common_family(files)
    names: dict[str, None] = {}
    for lf, _ in files:
        names.update(dict.fromkeys(lf.modules))
    modules, infos = {}, {}
    projected = rank is not None or dyn is not None
    with single_thread():
        for i, name in enumerate(names):
            if progress is not None:
                progress(i, len(names), name)
            present = [(lf, w) for lf, w in files if name in lf.modules]
            mods, weights = [lf.modules[name] for lf, _ in present], [w for _, w in present]
            try:
                if projected:
                    cap = (conv_rank or rank) if _is_conv3(mods[0]) else rank
                    modules[name], infos[name] = project(mods, weights, cap, dyn, name=name)
                else:
                    modules[name] = concat(mods, weights, name=name)
            except LoraKitError as exc:
                raise LoraKitError(exc.message, exc.path or present[-1][0].path) from None
    listing = " + ".join(f"{Path(lf.path).name}×{w:g}" for lf, w in files)
    how = f"projected to {'dynamic ' + str(dyn) if dyn else 'rank ' + str(rank)}" if projected else "exact"
    metadata = {"ss_training_comment": f"merged by lorakit ({how}): {listing}",
                "modelspec.merged_from": ", ".join(Path(lf.path).stem for lf, _ in files)}
    result = AlgebraResult(modules, metadata, family, infos)
    return _save(result, out, dtype, format)
