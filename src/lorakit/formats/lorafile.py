"""LoRAFile, the in-memory form of any LoRA file, and the two entry points `load_lora` / `save_lora`.

Whatever the file's format, modules are kohya-named ({name: {subkey: tensor}}): every other
part of lorakit speaks only that.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .. import families
from ..errors import LoraKitError
from .. import kohya_names as names
from . import diffusers_fmt, kohya, peft_fmt
from .detect import AmbiguousFamily, Detection, detect, detect_family, format_of_modules
from .hashes import precalculate_hashes
from .metadata import build_metadata
from .modules import Modules, alpha_of, rank_of
from .peft_common import entries_from_modules
from .st_io import PICKLE_SUFFIXES, read_pickle, read_safetensors, refuse_pickle, serialize, write_bytes_atomic

FORMATS = ("kohya", "diffusers", "peft", "comfyui", "onetrainer")


@dataclass
class LoRAFile:
    """A LoRA in kohya names, with where it came from."""

    modules: dict[str, dict[str, Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "kohya"
    family: str | None = None
    path: str | None = None
    # the families it fits equally well when `family` is None because the file cannot tell (a
    # CLIP-L-only LoRA: SDXL, SD3 and Flux.1); empty when it fits none
    candidates: tuple[str, ...] = ()

    def ranks(self) -> dict[str, int | None]:
        return {n: rank_of(t) for n, t in self.modules.items()}

    def alphas(self) -> dict[str, float | None]:
        return {n: alpha_of(t) for n, t in self.modules.items()}

    def parts(self) -> dict[str, int]:
        """Module count per model part (unet, te, te1, te2)."""
        return dict(Counter(names.part_of(n) for n in self.modules))

    @property
    def dtype(self) -> torch.dtype | None:
        counts = Counter(t.dtype for ts in self.modules.values() for k, t in ts.items() if k != "alpha")
        return counts.most_common(1)[0][0] if counts else None

    def __len__(self) -> int:
        return len(self.modules)


def _not_lora(state: Mapping[str, Tensor], fmt: str | None, path) -> LoraKitError:
    sample = ", ".join(sorted(state)[:3])
    if not state:
        return LoraKitError("holds no tensors", path)
    if fmt == "checkpoint":
        return LoraKitError(f"not a LoRA: looks like a model checkpoint or other weights (keys like {sample})", path)
    return LoraKitError(f"not a LoRA file: no LoRA keys found (keys like {sample})", path)


def load_lora(path: str | os.PathLike, family: str | None = None, *, allow_pickle: bool = False) -> LoRAFile:
    """Read a kohya, LyCORIS, diffusers or PEFT LoRA (file or adapter folder) into kohya names.

    `family` forces the naming (SAI names for an SDXL diffusers file) instead of detecting it.
    Pickled files (.ckpt/.pt/.bin) can run code when loaded: refused unless `allow_pickle`.
    """
    if family is not None:
        families.get(family)  # an unknown name stops here, listing the known ones
    p = Path(path)
    if p.is_dir():
        if not peft_fmt.is_adapter_folder(p):
            raise LoraKitError("is a folder but not a PEFT adapter (no adapter_config.json)", p)
        modules, metadata, fam, candidates = peft_fmt.read(p, family, allow_pickle)
        return LoRAFile(modules, metadata, "peft", fam, str(p), candidates)
    if p.suffix.lower() in PICKLE_SUFFIXES and p.exists():
        refuse_pickle(p, allow_pickle)
        state, metadata = read_pickle(p), {}
    else:
        state, metadata = read_safetensors(p)
    det = detect({k: tuple(v.shape) for k, v in state.items()}, metadata)
    if det.layouts:  # a family's own layout (SD3's, Flux's): that family reads it
        reader, modules = _read_own(state, metadata, det, family, p)
        if not modules:
            raise _not_lora(state, det.format, p)
        return LoRAFile(modules, metadata, det.layouts[reader], reader, str(p), (reader,))
    fmt = det.format
    if fmt in ("kohya", "lycoris"):
        modules = kohya.group(state, str(p))
        fam = family or det.family
        if fam is not None:  # a misspelt layer is an error, never a silent skip
            families.get(fam).check_lora_names(modules, str(p))
        if fam is None and not det.families:
            _refuse_strays(modules, p)
    elif fmt == "diffusers":
        modules, fam = diffusers_fmt.read(state, metadata, family or det.family, str(p))
    elif fmt == "peft":
        raise LoraKitError("a bare PEFT adapter_model file: load its folder (with adapter_config.json)", p)
    else:
        raise _not_lora(state, fmt, p)
    if not modules:
        raise _not_lora(state, fmt, p)
    return LoRAFile(modules, metadata, fmt, fam, str(p), (fam,) if fam else det.families)


def _read_own(state, metadata, det: Detection, family: str | None, path) -> tuple[str, Modules]:
    """(family, modules) of a file in a family's own layout, read by the family asked for if its
    layout holds the names, else by the one the file fits best. When it fits several alike, those
    that can read it: one is the answer, several an AmbiguousFamily error (never a pick), none the
    first one's account of what is wrong with the file."""
    if family is not None and family in det.layouts:
        readers = (family,)
    else:
        readers = det.families or (next(iter(det.layouts)),)  # none fits: its reader names the keys
    read, errors = {}, []
    for name in readers:
        try:
            read[name] = families.get(name).read_lora(state, metadata, det.layouts[name], str(path))
        except LoraKitError as exc:
            errors.append(exc)
    if len(read) > 1:
        raise AmbiguousFamily(tuple(read), path)
    if not read:
        raise errors[0]
    return next(iter(read.items()))


def _refuse_strays(modules: Modules, path) -> None:
    """Modules that are partly one family's and partly no family's: the rest are misspelt layers,
    an error naming them rather than a file that later loads short. Where several families hold
    the most of them alike (families sharing layers), each checks the names as far as it can
    tell (`check_lora_names`): when every one refuses them, so does the file."""
    have = {f: [n for n in modules if f.has_lora_module(n)] for f in families.all()}
    best = max(len(v) for v in have.values())
    closest = [f for f, v in have.items() if len(v) == best]
    if best and len(closest) == 1:
        stray = sorted(set(modules) - set(have[closest[0]]))
        raise LoraKitError(f"{len(stray)} module(s) are not layers of {closest[0].label} models: "
                           f"{kohya._listing(stray)}", path)
    refusals = []
    for f in closest if best else ():
        try:
            f.check_lora_names(modules, str(path))
        except LoraKitError as exc:
            refusals.append(exc)
    if refusals and len(refusals) == len(closest):
        raise refusals[0]


# suffixes that name a file: a PEFT adapter (a folder) is never written under one
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".txt")


def save_lora(path: str | os.PathLike, modules: Modules | LoRAFile, metadata: Mapping[str, str] | None = None, *,
              format: str | None = None, dtype: torch.dtype | None = torch.float16, family: str | None = None,
              parts=None, layout=None) -> Path:
    """Write kohya modules as a kohya/LyCORIS file, a diffusers file or a PEFT adapter folder.

    Written atomically (temporary file + os.replace). kohya files get full ss_*/modelspec
    metadata (`metadata` is kept, tensor-describing fields recomputed) and the sshs hashes.
    `parts` (a ModelParts) gives module paths for diffusers/PEFT from the model itself; without
    it they come from kohya names by rule (`layout` = the UNet layout SAI names refer to).
    `dtype=None` keeps the tensors' dtypes; alpha is always a 0-dim fp32. `format=None`: the
    family's default layout (kohya; SD3's diffusers keys, which diffusers and ComfyUI both load),
    kohya for LyCORIS kinds.
    """
    if isinstance(modules, LoRAFile):
        lf = modules
        modules = lf.modules
        metadata = lf.metadata if metadata is None else metadata
        family = family or lf.family
    if format is not None and format not in FORMATS:
        raise LoraKitError(f"unknown format {format!r}: choose from {', '.join(FORMATS)}")
    if not modules:
        raise LoraKitError("nothing to save: the LoRA has no modules", path)
    if family is None and parts is not None:
        family = parts.family
    family = family or detect_family(modules, metadata)
    if format is None:
        spec = families.find(family)
        lyco = format_of_modules(modules) == "lycoris"
        format = spec.lora_formats[0] if spec is not None and not lyco else "kohya"
    path = Path(path)
    if format == "peft" and path.suffix.lower() in FILE_SUFFIXES:
        raise LoraKitError(f"a PEFT adapter is a folder (adapter_config.json + {peft_fmt.WEIGHTS} per model "
                           f"part), but this path names a {path.suffix} file: give a folder such as "
                           f"{path.with_suffix('').name}_peft/, or --to kohya/diffusers for one file", path)
    name = None if "ss_output_name" in (metadata or {}) else (path.name if format == "peft" else path.stem)
    md = build_metadata(modules, family=family, base=metadata, output_name=name)
    # a source file's diffusers config would contradict the new file (diffusers refuses kohya
    # alphas together with it); the diffusers writer makes a fresh one
    md.pop(diffusers_fmt.METADATA_KEY, None)
    if md.get("format") == "pt":
        del md["format"]
    spec = families.find(family)
    allowed = spec.lora_formats if spec is not None else ("kohya", "diffusers", "peft")
    if format not in allowed:
        raise LoraKitError(f"{families.label(family)} LoRAs are written as {', '.join(allowed)}, not {format}", path)
    own = spec.write_lora(modules, format, dtype, str(path)) if spec is not None else None
    if own is not None:  # a layout of the family's own (SD3's diffusers/ComfyUI/OneTrainer keys)
        tensors, extra = own
        md.update(extra)
        md.update(precalculate_hashes(tensors, md))
        write_bytes_atomic(path, serialize(tensors, md))
        return path
    if layout is None and parts is not None and parts.unet_config:
        layout = parts.spec.denoiser_layout(parts.unet_config)
    if format == "kohya":
        for name, t in modules.items():
            if not kohya.is_kohya_key(f"{name}.alpha") or "." in name:
                raise LoraKitError(f"module name {name!r} is not a kohya name (lora_unet_…, lora_te_…, "
                                   "lora_te1_…, lora_te2_…)", path)
            kohya.validate_module(name, t, str(path))
        tensors = kohya.flatten(modules, dtype)
        md.update(precalculate_hashes(tensors, md))
        write_bytes_atomic(path, serialize(tensors, md))
        return path
    entries = entries_from_modules(modules, parts=parts, family=family, layout=layout, source=str(path), fmt=format,
                                   dtype=dtype)
    if format == "diffusers":
        tensors, configs = diffusers_fmt.write_state(entries, dtype)
        md[diffusers_fmt.METADATA_KEY] = diffusers_fmt.adapter_metadata(configs)
        md["format"] = "pt"
        md.update(precalculate_hashes(tensors, md))
        write_bytes_atomic(path, serialize(tensors, md))
    else:
        peft_fmt.write(path, entries, md, dtype, from_model=parts is not None)
    return path


__all__ = ["FORMATS", "LoRAFile", "load_lora", "save_lora"]
