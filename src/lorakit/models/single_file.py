"""What every family's single-file loader shares: quiet loading, one diffusers part from a file
through diffusers' own `from_single_file(state_dict, config=folder, local_files_only=True)` (no
network: the configs come from a folder, shipped or the caller's), and the check that no tensor
the model needs was left empty (on the meta device).

The families build their pipelines from these (`families/<name>/loading.py`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import LoraKitError
from ..families.base import CONFIGS_DIR
from .checkpoint import Checkpoint


def read_index(config_dir: Path) -> dict:
    index_file = config_dir / "model_index.json"
    if not index_file.is_file():
        raise LoraKitError("not a diffusers config folder: model_index.json is missing", config_dir)
    try:
        return json.loads(index_file.read_text())
    except ValueError as e:
        raise LoraKitError(f"model_index.json is not valid JSON: {e}", index_file) from e


def check_complete(module: torch.nn.Module, part: str, ckpt: Checkpoint) -> None:
    from .placing import still_meta

    missing = still_meta(module)
    if missing:
        raise LoraKitError(f"the file lacks {len(missing)} {part} tensor(s) the model needs, e.g. "
                           f"{', '.join(missing[:3])} (truncated, or not this architecture)", ckpt.path)


@contextmanager
def quiet_loading():
    """No progress bars or advice from diffusers/transformers while loading: callers own the terminal."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars[0]:
            dlog.enable_progress_bar()
        if bars[1]:
            tlog.enable_progress_bar()


def load_diffusers_part(cls, ckpt: Checkpoint, prefix: str, part: str, config_dir: Path, dtype):
    state = ckpt.read([prefix])
    if not state:
        raise LoraKitError(f"the file has no {part} ({prefix}* tensors)", ckpt.path)
    try:
        with quiet_loading():
            model = cls.from_single_file(state, config=str(config_dir), subfolder=part, local_files_only=True,
                                         torch_dtype=dtype)
    except LoraKitError:
        raise
    except Exception as e:  # noqa: BLE001 - shape mismatches surface as ValueError/RuntimeError
        raise LoraKitError(_diagnose(cls, state, config_dir, part) or
                           f"the {part} tensors do not fit the config in {config_dir / part}: {e}", ckpt.path) from e
    check_complete(model, part, ckpt)
    return model


def _diagnose(cls, state: dict, config_dir: Path, part: str) -> str | None:
    """Why diffusers could not load `state`: tensors of other shapes, or tensors missing."""
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    try:
        config = cls.load_config(str(config_dir), subfolder=part, local_files_only=True)
        with init_empty_weights():
            wanted = {k: tuple(v.shape) for k, v in cls.from_config(config).state_dict().items()}
        convert = convert_ldm_unet_checkpoint if part == "unet" else convert_ldm_vae_checkpoint
        have = {k: tuple(v.shape) for k, v in convert(state, config).items()}
    except Exception:  # noqa: BLE001 - diagnosis only; the caller reports the original error
        return None
    other = [f"{k} {have[k]} vs {shape}" for k, shape in wanted.items() if k in have and have[k] != shape]
    missing = sorted(set(wanted) - set(have))
    if other:
        return (f"the {part} tensors do not fit the config in {config_dir / part} ({len(other)} of other shapes, "
                f"e.g. {other[0]}): a different architecture; pass the matching config_dir")
    if missing:
        return (f"the file lacks {len(missing)} {part} tensor(s) the model needs, e.g. "
                f"{', '.join(missing[:3])} (truncated, or not this architecture)")
    return None


def tie_position_ids(model: torch.nn.Module) -> None:
    """position_ids is a non-persistent buffer: not in files, so rebuild it if left on meta."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand(ids.shape).clone(),
                                   persistent=False)
