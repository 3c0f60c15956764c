"""Build a diffusers pipeline from an original-layout single file and a local config folder.

No network: the configs come from a folder (the ones shipped in the package, or the caller's),
the tokenizers are the shipped CLIP BPE files passed in explicitly. The UNet and VAE go through
diffusers' own `from_single_file(state_dict, config=folder, local_files_only=True)`; the text
encoders through diffusers' own key converters, but chosen by the family (its
`checkpoint_text_encoders`) rather than by diffusers' shape sniffing, which picks the wrong encoder when SDXL's two encoders have equal widths (as in
small test models). A tensor the model needs and the file lacks is an error, never left empty.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import families
from ..errors import LoraKitError
from ..families.base import CONFIGS_DIR
from .checkpoint import Checkpoint


def shipped_config(family: str, prediction_type: str) -> Path:
    """The shipped config folder for a family (SD 2.1 768-v when an SD2 file is v-prediction)."""
    return families.get(family).config_dir(prediction_type)


def read_index(config_dir: Path) -> dict:
    index_file = config_dir / "model_index.json"
    if not index_file.is_file():
        raise LoraKitError("not a diffusers config folder: model_index.json is missing", config_dir)
    try:
        return json.loads(index_file.read_text())
    except ValueError as e:
        raise LoraKitError(f"model_index.json is not valid JSON: {e}", index_file) from e


def _meta_names(module: torch.nn.Module) -> list[str]:
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return [n for n, t in tensors if t.is_meta]


def _check_complete(module: torch.nn.Module, part: str, ckpt: Checkpoint) -> None:
    missing = _meta_names(module)
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


def _load_diffusers_part(cls, ckpt: Checkpoint, prefix: str, part: str, config_dir: Path, dtype):
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
    _check_complete(model, part, ckpt)
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


def _text_encoder(ckpt: Checkpoint, family: str, index: int, config_dir: Path, dtype):
    import transformers
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig

    spec = families.get(family)
    sub = spec.text_encoders[index]
    cls = getattr(transformers, spec.text_encoder_classes[index])
    if not (config_dir / sub / "config.json").is_file():
        raise LoraKitError(f"the config folder has no {sub}/config.json", config_dir)
    config = CLIPTextConfig.from_pretrained(str(config_dir / sub), local_files_only=True)
    with init_empty_weights():
        model = cls(config)
    kind, prefix = spec.checkpoint_text_encoders[index]
    open_clip = kind == "open_clip"
    raw = ckpt.read([prefix])
    if not raw:
        raise LoraKitError(f"the file has no text encoder {index + 1} ({prefix}* tensors)", ckpt.path)
    if open_clip:
        state = convert_open_clip_checkpoint(model, raw, prefix=prefix)
    else:
        state = convert_ldm_clip_checkpoint(_with_text_model(raw, prefix), remove_prefix=prefix)
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}  # position_ids, logit_scale: not parameters here
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise LoraKitError(f"text encoder {index + 1} tensor {k} has shape {tuple(v.shape)}, the config in "
                               f"{config_dir / sub} expects {tuple(expected[k].shape)}", ckpt.path)
    model.load_state_dict(state, strict=False, assign=True)
    _tie_position_ids(model)
    _check_complete(model, f"text encoder {index + 1}", ckpt)
    return model.to(dtype).eval()


def _with_text_model(raw: dict, prefix: str) -> dict:
    """Some SD1 files spell CLIP keys without `text_model.` (as A1111 also accepts): add it."""
    bare = tuple(prefix + p for p in ("embeddings.", "encoder.", "final_layer_norm."))
    return {prefix + "text_model." + k[len(prefix):] if k.startswith(bare) else k: v for k, v in raw.items()}


def _tie_position_ids(model: torch.nn.Module) -> None:
    """position_ids is a non-persistent buffer: not in files, so rebuild it if left on meta."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor) and ids.is_meta:
            module.register_buffer("position_ids", torch.arange(ids.shape[-1]).expand(ids.shape).clone(),
                                   persistent=False)


def _scheduler(config_dir: Path, prediction_type: str):
    import diffusers

    sub = config_dir / "scheduler"
    config_file = sub / "scheduler_config.json"
    if not config_file.is_file():
        raise LoraKitError("the config folder has no scheduler/scheduler_config.json", config_dir)
    config = json.loads(config_file.read_text())
    cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return cls.from_config(config, prediction_type=prediction_type)


def build_pipeline(ckpt: Checkpoint, family: str, config_dir: Path, *, dtype=torch.float32,
                   prediction_type: str = "epsilon", components=("unet", "text_encoders", "vae")):
    """The family's pipeline holding the file's tensors; parts not in `components` are None."""
    import diffusers

    from .tokenizer import clip_tokenizer

    spec = families.get(family)
    index = read_index(config_dir)
    class_name = index.get("_class_name", "")
    if class_name not in families.pipeline_classes():
        raise LoraKitError(f"unsupported pipeline class {class_name!r} in model_index.json", config_dir)
    if class_name != spec.pipeline_class:
        raise LoraKitError(f"the file is an {family} checkpoint but the config folder describes a "
                           f"{class_name}", config_dir)
    parts: dict = {"unet": None, "vae": None, **{name: None for name in spec.text_encoders}}
    if "unet" in components:
        parts["unet"] = _load_diffusers_part(diffusers.UNet2DConditionModel, ckpt, "model.diffusion_model.",
                                             "unet", config_dir, dtype)
    if "vae" in components:
        parts["vae"] = _load_diffusers_part(diffusers.AutoencoderKL, ckpt, "first_stage_model.", "vae",
                                            config_dir, dtype)
    if "text_encoders" in components:
        for i, name in enumerate(spec.text_encoders):
            parts[name] = _text_encoder(ckpt, family, i, config_dir, dtype)
    parts["scheduler"] = _scheduler(config_dir, prediction_type)
    tokenizers = {name: clip_tokenizer(pad) for name, pad in zip(spec.tokenizers, spec.tokenizer_pads)}
    options = {k: index.get(k, default) for k, default in spec.index_defaults.items()}
    return getattr(diffusers, class_name)(**tokenizers, **spec.pipeline_kwargs, **options, **parts)
