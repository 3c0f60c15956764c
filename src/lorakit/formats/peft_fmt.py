"""PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors` with keys
`base_model.model.<path>.lora_A.weight`. lorakit writes one adapter per model part
(`unet/`, `text_encoder/`, `text_encoder_2/`), each loadable with `PeftModel.from_pretrained`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..atomic import atomic_dir
from ..errors import LoraKitError
from .part_families import families_of_parts
from .kohya import _listing, validate_module
from .paths import DIFFUSERS_PREFIX, kohya_part, path_to_kohya
from .peft_common import Entry, check_config, kohya_alpha, lora_config
from .st_io import one_line, read_pickle, read_safetensors, refuse_pickle, serialize

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_FOLDER_PART = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2"}
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_magnitude_vector.weight", "magnitude"),
             (".lora_magnitude_vector", "magnitude"))


def is_adapter_folder(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / CONFIG).is_file() or any((p / sub / CONFIG).is_file() for sub in _FOLDER_PART))


def _adapters(folder: Path) -> list[tuple[Path, str | None]]:
    if (folder / CONFIG).is_file():
        return [(folder, _FOLDER_PART.get(folder.name))]
    found = [(folder / sub, part) for sub, part in _FOLDER_PART.items() if (folder / sub / CONFIG).is_file()]
    if not found:
        raise LoraKitError(f"not a PEFT adapter folder (no {CONFIG})", folder)
    return found


def _guess_part(paths: list[str]) -> str:
    if all(p.startswith(("down_blocks.", "up_blocks.", "mid_block.", "conv_", "time_embedding.")) for p in paths):
        return "unet"
    if all(p.startswith(("text_model.", "encoder.")) for p in paths):
        return "te"
    raise LoraKitError("cannot tell which model part a PEFT adapter is for (put it in a folder named unet, "
                       "text_encoder or text_encoder_2)")


def _read_one(folder: Path, part: str | None, allow_pickle: bool) -> tuple[str, dict, dict, dict]:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LoraKitError(f"unreadable {CONFIG} ({one_line(exc)})", folder) from None
    check_config(config, str(folder))
    weights = folder / WEIGHTS
    if weights.is_file():
        state, metadata = read_safetensors(weights)
    elif (folder / "adapter_model.bin").is_file():
        refuse_pickle(folder / "adapter_model.bin", allow_pickle)
        state, metadata = read_pickle(folder / "adapter_model.bin"), {}
    else:
        raise LoraKitError(f"PEFT adapter folder without {WEIGHTS}", folder)
    grouped: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        role = None
        if key.startswith(_PREFIX):
            for suffix, r in _SUFFIXES:
                if key.endswith(suffix):
                    role, path = r, key[len(_PREFIX): -len(suffix)]
                    break
        if role is None:
            unknown.append(key)
            continue
        grouped.setdefault(path, {})[role] = value
    if unknown:
        raise LoraKitError(f"{len(unknown)} unknown key(s): {_listing(unknown)}", weights)
    part = part or _guess_part(list(grouped))
    return part, config, grouped, metadata


def read(folder: str | os.PathLike, family: str | None = None,
         allow_pickle: bool = False) -> tuple[dict[str, dict[str, Tensor]], dict[str, str], str | None,
                                              tuple[str, ...]]:
    """A PEFT adapter folder (one adapter, or one per part) → (kohya modules, metadata, family,
    the families it fits alike when the family is None)."""
    folder = Path(folder)
    provisional: dict[tuple[str, str], dict[str, Tensor]] = {}
    metadata: dict[str, str] = {}
    for sub, part in _adapters(folder):
        part, config, grouped, md = _read_one(sub, part, allow_pickle)
        metadata.update({k: v for k, v in md.items() if k != "format"})
        for path, roles in grouped.items():
            if "down" not in roles or "up" not in roles:
                missing = "lora_B" if "down" in roles else "lora_A"
                raise LoraKitError(f"module {path} has no {missing} partner", sub)
            down = roles["down"]
            alpha = kohya_alpha(config, part, path, int(down.shape[0]))
            t = {"lora_down.weight": down, "lora_up.weight": roles["up"], "alpha": torch.tensor(alpha)}
            if "magnitude" in roles:
                mag = roles["magnitude"]
                t["dora_scale"] = mag.reshape(roles["up"].shape[0], *([1] * (down.dim() - 1)))  # PEFT conv: [1, out, 1, 1]
            provisional[(part, path)] = t
    candidates = (family,) if family else families_of_parts(provisional, metadata)
    if family is None and len(candidates) == 1:
        family = candidates[0]
    modules = {}
    for (part, path), t in provisional.items():
        name = path_to_kohya(kohya_part(part, family), path, family)
        validate_module(name, t, str(folder))
        modules[name] = t
    return modules, metadata, family, candidates


def clip_text_model_is_flat() -> bool:
    """transformers 5 dropped CLIPTextModel's `text_model` level; PEFT needs the live paths."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def live_path(e: Entry, from_model: bool) -> str:
    if from_model or e.part == "unet":
        return e.path
    if e.part in ("te", "te1") and clip_text_model_is_flat() and e.path.startswith("text_model."):
        return e.path[len("text_model."):]
    return e.path


def write(folder: str | os.PathLike, entries: list[Entry], metadata: Mapping[str, str],
          dtype: torch.dtype | None, from_model: bool) -> None:
    """One adapter per part under `folder`, written to a temporary folder and moved into place."""
    from peft import LoraConfig

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LoraKitError("output path exists and is not a folder (PEFT output is a folder)", folder)
    by_part: dict[str, list[Entry]] = {}
    for e in entries:
        by_part.setdefault(DIFFUSERS_PREFIX[e.part], []).append(e)
    with atomic_dir(folder) as tmp:
        for sub, es in by_part.items():
            out = tmp / sub
            out.mkdir()
            cfg = lora_config(es)
            cfg["target_modules"] = sorted(live_path(e, from_model) for e in es)
            LoraConfig(**cfg).save_pretrained(str(out))
            tensors = {}
            for e in es:
                for role, w in (("lora_A", e.down), ("lora_B", e.up)):
                    w = w.detach().cpu()
                    if dtype is not None and w.is_floating_point():
                        w = w.to(dtype)
                    tensors[f"{_PREFIX}{live_path(e, from_model)}.{role}.weight"] = w.contiguous()
            (out / WEIGHTS).write_bytes(serialize(tensors, {"format": "pt", **metadata}))
