"""A diffusers folder's denoiser read tensor by tensor into a half-precision dtype, or with its
Linear weights quantized (fp8/int8/nf4) as they are read.

diffusers' `from_pretrained(torch_dtype=bf16)` reads a component's whole fp32 state dict before
casting it: for SD 1.5's UNet 3.4 GB of fp32 on top of the 1.7 GB bf16 result, which sets the
peak memory of a bf16 training run. Here each group of tensors is read, cast and placed in a model
built on the meta device, and the file is opened anew per group so that the pages read so far are
unmapped (mapped file pages count in a process's resident memory): the peak is the result plus
one group (placing.py puts each tensor in, cast or quantized). Written by hand because neither
diffusers nor safetensors casts or quantizes while reading.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

GROUP_BYTES = 256 << 20  # fp32 bytes read per opening of the file

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _weight_files(folder: Path, weights: str = WEIGHTS) -> list[Path] | None:
    single = folder / weights
    if single.is_file():
        return [single]
    index = folder / (weights + ".index.json")
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        files = [folder / n for n in names]
        return files if all(f.is_file() for f in files) else None
    return None


def load_denoiser(folder: Path, class_name: str, dtype: torch.dtype, base_precision: str = "auto"):
    """The denoiser in `folder` (a component folder of a diffusers model) in `dtype` (or the quantized
    `base_precision`, computing in `dtype`), or None where it is not a plain safetensors component
    that this reader fully covers (the caller then uses diffusers)."""
    import diffusers
    from accelerate import init_empty_weights

    files = _weight_files(folder)
    cls = getattr(diffusers, class_name, None)
    if files is None or cls is None or not (folder / "config.json").is_file():
        return None
    config = cls.load_config(folder)
    with init_empty_weights():
        model = cls.from_config(config)
    if not _stream_into(model, files, dtype, base_precision):
        return None
    model.register_to_config(_name_or_path=str(folder.parent))
    return model.eval()


def load_encoder(folder: Path, class_name: str, dtype: torch.dtype, base_precision: str):
    """A transformers text encoder in `folder` (T5-XXL: 4.8 B parameters, 9.5 GB in bf16) with its
    Linear weights quantized as they are read, so that the bf16 model never exists; None where the
    folder is not plain safetensors this reader covers (the caller then uses transformers and
    quantizes afterwards)."""
    import transformers
    from accelerate import init_empty_weights

    from .single_file import quiet_loading

    files = _weight_files(folder, "model.safetensors")
    cls = getattr(transformers, class_name, None)
    if files is None or cls is None or not (folder / "config.json").is_file():
        return None
    with quiet_loading():
        config = cls.config_class.from_pretrained(str(folder), local_files_only=True)
        with init_empty_weights():
            model = cls(config)
    if not _stream_into(model, files, dtype, base_precision):
        return None
    return model.eval().requires_grad_(False)


def _stream_into(model, files: list[Path], dtype: torch.dtype, base_precision: str) -> bool:
    """Every tensor of `files` put into `model` (built on meta), a group at a time, in the target
    format; False when the files do not cover the model (tied weights count once) or hold more."""
    from safetensors import safe_open

    from .. import progress
    from .placing import place, still_meta, target

    headers = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            headers[path] = [(k, f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()]
    fp8_file = any(d.startswith("F8") for sizes in headers.values() for _, _, d in sizes)
    to = target(base_precision, dtype, fp8_file=fp8_file)
    known = set(model.state_dict())
    for path, sizes in headers.items():
        groups, group, size = [], [], 0
        for key, shape, _ in sizes:
            n = 4 * max(1, int(torch.tensor(shape).prod()) if shape else 1)
            if group and size + n > GROUP_BYTES:
                groups.append(group)
                group, size = [], 0
            group.append(key)
            size += n
        if group:
            groups.append(group)
        for keys in groups:
            with safe_open(str(path), "pt") as f:  # reopened per group: closing unmaps the pages read
                part = {key: f.get_tensor(key) for key in keys}
            progress.read(sum(progress.nbytes(t) for t in part.values()))
            if set(part) - known:
                return False
            try:
                place(model, part, to)  # empties `part` as it goes
            except ValueError:  # a tensor of another shape: the library's own load says so
                return False
    if hasattr(model, "tie_weights"):  # transformers: T5's embed_tokens is its `shared` embedding
        model.tie_weights()
    return not still_meta(model)
