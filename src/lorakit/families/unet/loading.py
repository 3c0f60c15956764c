"""Build an SD 1.x/2.x/XL pipeline from an original-layout single file and a local config folder.

No network: the configs come from a folder (the ones shipped in the package, or the caller's),
the tokenizers are the shipped CLIP BPE files passed in explicitly. The UNet is streamed a tensor
at a time into the model built from its config, in its base precision (`load_unet`); the VAE goes
through diffusers' own `from_single_file` (models/single_file.py); the text encoders through diffusers'
own key converters, but chosen by the family (its `checkpoint_text_encoders`) rather than by
diffusers' shape sniffing, which picks the wrong encoder when SDXL's two encoders have equal
widths (as in small test models). A tensor the model needs and the file lacks is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import families, progress
from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ...models.single_file import check_complete, load_diffusers_part, read_index, tie_position_ids

UNET = "model.diffusion_model."


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
    tie_position_ids(model)
    check_complete(model, f"text encoder {index + 1}", ckpt)
    return model.to(dtype).eval()


def _with_text_model(raw: dict, prefix: str) -> dict:
    """Some SD1 files spell CLIP keys without `text_model.` (as A1111 also accepts): add it."""
    bare = tuple(prefix + p for p in ("embeddings.", "encoder.", "final_layer_norm."))
    return {prefix + "text_model." + k[len(prefix):] if k.startswith(bare) else k: v for k, v in raw.items()}


def _scheduler(config_dir: Path, prediction_type: str):
    import diffusers

    sub = config_dir / "scheduler"
    config_file = sub / "scheduler_config.json"
    if not config_file.is_file():
        raise LoraKitError("the config folder has no scheduler/scheduler_config.json", config_dir)
    config = json.loads(config_file.read_text())
    cls = getattr(diffusers, config.get("_class_name", "DDIMScheduler"), diffusers.DDIMScheduler)
    return cls.from_config(config, prediction_type=prediction_type)


def load_unet(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """The UNet streamed a tensor at a time into the model built on `meta` from its config, in `dtype`
    or the quantized `base_precision` (models/placing.py): each diffusers name's original one is
    `naming.diffusers_to_sai_unet_path` (the exact inverse of diffusers' reader, which the tests check
    to the bit), and no tensor changes on the way. diffusers' own whole-state load where a name has
    no original spelling (a layout this table does not know)."""
    import diffusers
    from accelerate import init_empty_weights

    from . import naming
    from ...models import placing
    from ...models.single_file import quiet_loading
    from ..dit.loading import SCALE_WEIGHT

    cls = diffusers.UNet2DConditionModel
    config = cls.load_config(str(config_dir), subfolder="unet", local_files_only=True)
    with init_empty_weights(), quiet_loading():
        model = cls.from_config(config)
    layout = naming.UNetLayout.from_config(config)
    names = {k: UNET + naming.diffusers_to_sai_unet_path(k, layout) for k in model.state_dict()}
    if any(v == UNET + k for k, v in names.items()) or not all(v in ckpt.shapes for v in names.values()):
        return load_diffusers_part(cls, ckpt, UNET, "unet", config_dir, dtype)
    stored = {ckpt.dtypes.get(v, "") for v in names.values()}
    to = placing.target(base_precision, dtype, fp8_file=any(d.startswith("F8") for d in stored))
    try:
        for key, name in names.items():
            scale = name[:-len(".weight")] + SCALE_WEIGHT
            scales = {key: ckpt.tensor(scale)} if name.endswith(".weight") and scale in ckpt.shapes else None
            placing.place(model, {key: ckpt.tensor(name)}, to, scales)
    except ValueError as e:
        raise LoraKitError(f"the unet tensors do not fit the config in {config_dir / 'unet'}: {e}", ckpt.path) from e
    finally:
        ckpt.close()
    return model


def build_pipeline(ckpt: Checkpoint, family: str, config_dir: Path, *, dtype=torch.float32,
                   prediction_type: str = "epsilon", components=("unet", "text_encoders", "vae"),
                   base_precision: str = "auto"):
    """The family's pipeline holding the file's tensors; parts not in `components` are None."""
    import diffusers

    from ...models.tokenizer import clip_tokenizer

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
        progress.begin("unet")
        parts["unet"] = load_unet(ckpt, config_dir, dtype, base_precision)
    if "vae" in components:
        progress.begin("vae")
        parts["vae"] = load_diffusers_part(diffusers.AutoencoderKL, ckpt, "first_stage_model.", "vae",
                                            config_dir, dtype)
    if "text_encoders" in components:
        for i, name in enumerate(spec.text_encoders):
            progress.begin(name)
            parts[name] = _text_encoder(ckpt, family, i, config_dir, dtype)
    parts["scheduler"] = _scheduler(config_dir, prediction_type)
    tokenizers = {name: clip_tokenizer(pad) for name, pad in zip(spec.tokenizers, spec.tokenizer_pads)}
    options = {k: index.get(k, default) for k, default in spec.index_defaults.items()}
    return getattr(diffusers, class_name)(**tokenizers, **spec.pipeline_kwargs, **options, **parts)
