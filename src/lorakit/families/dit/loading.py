"""What the DiT families' single-file loaders share: a transformer file plus the shipped configs,
and the parts a file lacks (text encoders, tokenizers, VAE) taken from a diffusers-style folder
(`--text-encoders DIR`) or the Hugging Face cache, never the network; and writing the original
layout back as one file with SAI's model-spec header.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Mapping

import torch

from ... import progress
from ...errors import LoraKitError
from ...quantized import PLAIN_DTYPES
from ...models.single_file import quiet_loading

# sub-folder → (library, class, what the error calls it)
Part = tuple[str, str, str]


def _load(part: Part, where: str, sub: str, dtype, **kwargs):
    lib, cls, _ = part
    if not sub.startswith("tokenizer"):
        kwargs["torch_dtype"] = dtype
    with quiet_loading():
        return getattr(importlib.import_module(lib), cls).from_pretrained(where, local_files_only=True, **kwargs)


def from_folder(folder: Path, sub: str, part: Part, dtype, base_precision: str = "auto"):
    """A component from a diffusers-style folder, or None when it has none; a transformers encoder asked
    in fp8/int8/nf4 is read tensor by tensor straight into that format where its files allow."""
    from ...quantized import QUANTIZED

    path = folder / sub
    if not path.is_dir():
        return None
    try:
        if base_precision in QUANTIZED and part[0] == "transformers":
            from ...models.streamed import load_encoder

            model = load_encoder(path, part[1], dtype, base_precision)
            if model is not None:
                return model
        return _load(part, str(path), sub, dtype)
    except Exception as e:  # noqa: BLE001 - missing or corrupt files come in many error types
        raise LoraKitError(f"cannot load {sub}: {e}", path) from e


def from_hub_cache(repo: str, sub: str, part: Part, dtype):
    """A component from the Hugging Face cache, or None when it is not there."""
    try:
        return _load(part, repo, sub, dtype, subfolder=sub)
    except Exception:  # noqa: BLE001 - not in the cache
        return None


def parts_folder(text_encoders: Path | None, holding: str) -> Path | None:
    """The `--text-encoders` folder, checked: a LoraKitError saying what it must hold otherwise."""
    if text_encoders is None:
        return None
    folder = Path(text_encoders)
    if not folder.is_dir():
        raise LoraKitError(f"--text-encoders must be a folder holding {holding}", folder)
    return folder


def gather(parts: Mapping[str, Part], wanted, folder: Path | None, repo: str, dtype,
           in_file: Callable[[str], object] = lambda sub: None, *, base_precision: str = "auto",
           big: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """{sub: component or None} for every part, and the wanted subs found nowhere: each comes from
    the file itself (`in_file`), else the folder, else the hub cache. The `big` ones (the family's big
    text encoders) are read from the folder in `base_precision` (from_folder), a plain one straight
    in its dtype (T5-XXL is 19 GB in fp32)."""
    found, missing = {}, []
    for sub, part in parts.items():
        if sub not in wanted:
            found[sub] = None
            continue
        progress.begin(sub)
        model = in_file(sub)
        if model is None and folder is not None:
            fmt = base_precision if sub in big else "auto"
            model = from_folder(folder, sub, part, PLAIN_DTYPES.get(fmt, dtype), fmt)
        if model is None:
            model = from_hub_cache(repo, sub, part, dtype)
        if model is None:
            missing.append(sub)
        found[sub] = model
    return found, missing


FP8_MARKER = "scaled_fp8"  # ComfyUI's marker tensor of a scaled-fp8 file (its dtype: the fp8 format)
SCALE_WEIGHT, SCALE_INPUT = ".scale_weight", ".scale_input"  # ComfyUI's per-layer fp8 scales
_ROW_SCALE = ".weight_scale"  # an fp8 weight's per-row scale, named so the converters split it with the rows


def transformer_names(ckpt, prefix: str, heads: tuple[str, ...]) -> dict[str, str]:
    """{name without `prefix`: name in the file} of a single file's transformer tensors: those under
    `prefix` when the file nests them there (ComfyUI's repacks: `model.diffusion_model.`), else those
    under the top-level `heads` its authors ship (a file that also bundles a VAE or text encoders
    keeps them out)."""
    if any(k.startswith(prefix) for k in ckpt.shapes):
        return {k[len(prefix):]: k for k in ckpt.shapes if k.startswith(prefix)}
    return {k: k for k in ckpt.shapes if k.startswith(heads)}


def _group(name: str) -> str:
    """Tensors read together: one module's (weight, bias, fp8 scale), which is what the converters
    need together (a fused layer's bias is split by its weight's rows), and the least to hold."""
    return name.rpartition(".")[0]


def stream_transformer(ckpt, cls, config_dir: Path, names: Mapping[str, str],
                       to_diffusers: Callable[[dict], dict], dtype, base_precision: str = "auto"):
    """The transformer built on `meta` from its config, its tensors read a module at a time (`names`:
    {original name: name in the file}), converted with the family's `to_diffusers` and put in
    already in the target format (`placing`): the model plus one layer at the peak, never the state
    dict, a converted copy and the model at once. fp8 file tensors keep their data and scale, GGUF
    ones their blocks, where the target allows."""
    from accelerate import init_empty_weights

    from ...models import placing
    from ...quantized import cast_plain

    scales = {k[:-len(SCALE_WEIGHT)] + ".weight": v for k, v in names.items() if k.endswith(SCALE_WEIGHT)}
    tensors = {k: v for k, v in names.items()
               if not k.endswith((SCALE_WEIGHT, SCALE_INPUT)) and k != FP8_MARKER}
    stored = {ckpt.dtypes.get(v, "") for v in tensors.values()}
    to = placing.target(base_precision, dtype, fp8_file=any(d.startswith("F8") for d in stored),
                        gguf_file=any(d.startswith("GGUF_") and d not in ("GGUF_F32", "GGUF_F16") for d in stored))
    config = cls.load_config(str(config_dir), subfolder="transformer", local_files_only=True)
    with init_empty_weights(), quiet_loading():
        model = cls.from_config(config)
    groups: dict[str, list[str]] = {}
    for k in tensors:
        groups.setdefault(_group(k), []).append(k)
    progress.begin("transformer")
    try:
        for keys in groups.values():
            state = {}
            for k in keys:
                state[k] = t = ckpt.tensor(tensors[k])
                if k in scales and placing.is_fp8(t):
                    s = ckpt.tensor(scales[k]).to(torch.float32).reshape(-1)
                    state[k[:-len(".weight")] + _ROW_SCALE] = s.expand(t.shape[0]).clone() if s.numel() == 1 else s
            converted = to_diffusers(state)
            del state
            row_scales = {k[:-len(_ROW_SCALE)] + ".weight": converted.pop(k)
                          for k in [k for k in converted if k.endswith(_ROW_SCALE)]}
            unknown = placing.place(model, converted, to, row_scales)
            if unknown:
                raise KeyError(f"the model has no {unknown[0]}")
            del converted, row_scales
    except (KeyError, ValueError, RuntimeError) as e:
        raise LoraKitError(f"the transformer tensors do not fit the config in {config_dir / 'transformer'}: {e}",
                           ckpt.path) from e
    finally:
        ckpt.close()
    missing = placing.still_meta(model)
    if missing:
        raise LoraKitError(f"the transformer tensors do not fit the config in {config_dir / 'transformer'}: the file "
                           f"lacks {len(missing)} the model needs, e.g. {', '.join(missing[:3])}", ckpt.path)
    cast_plain(model, to.dtype)  # buffers built with the model (rotary tables...) as a cast model has them
    return model.eval()


def flow_scheduler(config_dir: Path):
    import diffusers

    return diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler")


def write_original(state: Mapping[str, torch.Tensor], path, *, architecture: str, implementation: str,
                   dtype=None, metadata: dict | None = None) -> Path:
    """An original-layout state dict as one safetensors file with SAI's model-spec header, atomically."""
    from ...formats.st_io import serialize, write_bytes_atomic

    out = dict(state)
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
    path = Path(path)
    header = {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
              "modelspec.implementation": implementation, "modelspec.title": path.stem,
              **{str(k): str(v) for k, v in (metadata or {}).items()}}
    write_bytes_atomic(path, serialize(out, header))
    return path
