"""Load SD 3.x (3.0 medium, 3.5 medium, 3.5 large) as a StableDiffusion3Pipeline.

- A diffusers folder or hub id: `StableDiffusion3Pipeline.from_pretrained`.
- A single `.safetensors` as SAI ships it: `model.diffusion_model.*` (MMDiT), `first_stage_model.*`
  (VAE) and, in the `_incl_clips` / `_incl_clips_t5xxlfp8` files, `text_encoders.clip_l|clip_g|t5xxl.
  transformer.*`. The transformer and VAE go through diffusers' `from_single_file` with the shipped
  configs (no network); text encoders missing from the file come from `text_encoders` (a diffusers-
  style folder with text_encoder, text_encoder_2, text_encoder_3, tokenizer_3) or the hub cache.

The CLIP tokenizers ship with lorakit; T5's (sentencepiece, Apache-2.0 but 800 kB of model data
tied to a hub repo) does not, so T5 always needs a folder or the hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ...models.single_file import CONFIGS_DIR, check_complete, load_diffusers_part, quiet_loading, tie_position_ids

MMDIT = "model.diffusion_model."
TE_PREFIX = {"text_encoder": "text_encoders.clip_l.transformer.",
             "text_encoder_2": "text_encoders.clip_g.transformer.",
             "text_encoder_3": "text_encoders.t5xxl.transformer."}
TE_NAMES = {"text_encoder": "CLIP-L (text_encoder)", "text_encoder_2": "CLIP-G (text_encoder_2)",
            "text_encoder_3": "T5-XXL (text_encoder_3)"}
SHIPPED = {"5-large": "sd35-large", "5-medium": "sd35-medium", "medium": "sd3-medium"}
HUB = {"5-large": "stabilityai/stable-diffusion-3.5-large", "5-medium": "stabilityai/stable-diffusion-3.5-medium",
       "medium": "stabilityai/stable-diffusion-3-medium-diffusers"}


def is_sd3_checkpoint(keys) -> bool:
    return any(k.startswith((MMDIT + "joint_blocks.", "joint_blocks.")) for k in keys)


def variant(keys) -> str:
    """sd-scripts' rule: qk-norm and a second attention → 3.5 medium; qk-norm alone → 3.5 large;
    neither → 3 medium. Also the `ss_base_model_version` sd-scripts writes."""
    keys = list(keys)
    if not any(".attn.ln_q." in k for k in keys):
        return "medium"
    return "5-medium" if any(".x_block.attn2." in k for k in keys) else "5-large"


def variant_of_config(config) -> str:
    if not config.get("qk_norm"):
        return "medium"
    return "5-medium" if config.get("dual_attention_layers") else "5-large"


def shipped_config(variant_name: str) -> Path:
    return CONFIGS_DIR / SHIPPED[variant_name]


def _clip(ckpt: Checkpoint, sub: str, config_dir: Path, dtype):
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prefix = TE_PREFIX[sub]
    config = CLIPTextConfig.from_pretrained(str(config_dir / sub), local_files_only=True)
    with init_empty_weights():
        model = CLIPTextModelWithProjection(config)
    state = {k[len(prefix):]: v for k, v in ckpt.read([prefix]).items()}
    if "text_projection.weight" not in state and sub == "text_encoder":
        # SAI files hold no CLIP-L projection: diffusers' own single-file loader uses the identity
        state["text_projection.weight"] = torch.eye(config.hidden_size, config.projection_dim)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise LoraKitError(f"{TE_NAMES[sub]} tensor {k} has shape {tuple(v.shape)}, the config in "
                               f"{config_dir / sub} expects {tuple(expected[k].shape)}", ckpt.path)
    model.load_state_dict(state, strict=False, assign=True)
    tie_position_ids(model)
    check_complete(model, TE_NAMES[sub], ckpt)
    return model.to(dtype).eval()


def _t5(ckpt: Checkpoint, config_dir: Path, dtype):
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    prefix = TE_PREFIX["text_encoder_3"]
    config = T5Config.from_pretrained(str(config_dir / "text_encoder_3"), local_files_only=True)
    with init_empty_weights():
        model = T5EncoderModel(config)
    state = {k[len(prefix):]: v for k, v in ckpt.read([prefix]).items()}
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    check_complete(model, TE_NAMES["text_encoder_3"], ckpt)
    return model.to(dtype).eval()


def _from_folder(folder: Path, sub: str, dtype):
    """A text encoder or tokenizer from a diffusers-style folder, or None when it has none."""
    import transformers

    path = folder / sub
    if not path.is_dir():
        return None
    cls = {"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
           "text_encoder_3": "T5EncoderModel", "tokenizer_3": "AutoTokenizer"}[sub]
    kwargs = {} if sub.startswith("tokenizer") else {"torch_dtype": dtype}
    try:
        with quiet_loading():
            return getattr(transformers, cls).from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - missing or corrupt files come in many error types
        raise LoraKitError(f"cannot load {sub}: {e}", path) from e


def _from_hub_cache(repo: str, sub: str, dtype):
    import transformers

    cls = {"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
           "text_encoder_3": "T5EncoderModel", "tokenizer_3": "AutoTokenizer"}[sub]
    kwargs = {} if sub.startswith("tokenizer") else {"torch_dtype": dtype}
    try:
        with quiet_loading():
            return getattr(transformers, cls).from_pretrained(repo, subfolder=sub, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - not in the cache
        return None


def build_pipeline(ckpt: Checkpoint, *, dtype=torch.float32, config_dir: Path | None = None,
                   text_encoders: Path | None = None, components=("unet", "text_encoders", "vae")):
    """A StableDiffusion3Pipeline from an SAI single file (see the module docstring for the sources)."""
    import diffusers

    from ...models.tokenizer import clip_tokenizer

    name = variant(ckpt.shapes)
    config_dir = Path(config_dir) if config_dir is not None else shipped_config(name)
    te_dir = Path(text_encoders) if text_encoders is not None else None
    if te_dir is not None and not te_dir.is_dir():
        raise LoraKitError("--text-encoders must be a folder holding text_encoder, text_encoder_2, "
                           "text_encoder_3 and tokenizer_3 (a diffusers SD3 folder will do)", te_dir)
    parts: dict = {"transformer": None, "vae": None}
    with quiet_loading():
        if "unet" in components:
            parts["transformer"] = load_diffusers_part(diffusers.SD3Transformer2DModel, ckpt, MMDIT, "transformer",
                                                        config_dir, dtype)
        if "vae" in components:
            parts["vae"] = load_diffusers_part(diffusers.AutoencoderKL, ckpt, "first_stage_model.", "vae",
                                                config_dir, dtype)
    wanted = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer_3")
    missing = []
    for sub in wanted:
        if "text_encoders" not in components:
            parts[sub] = None
            continue
        model = None
        if sub != "tokenizer_3" and ckpt.has(TE_PREFIX[sub]):
            model = _t5(ckpt, config_dir, dtype) if sub == "text_encoder_3" else _clip(ckpt, sub, config_dir, dtype)
        if model is None and te_dir is not None:
            model = _from_folder(te_dir, sub, dtype)
        if model is None:
            model = _from_hub_cache(HUB[name], sub, dtype)
        if model is None:
            missing.append(sub)
        parts[sub] = model
    if missing:
        what = ", ".join(TE_NAMES.get(m, "the T5 tokenizer (tokenizer_3)") for m in missing)
        raise LoraKitError(f"the file holds no {what}: pass --text-encoders DIR, a folder with "
                           f"{', '.join(missing)} (e.g. the diffusers {HUB[name]} download), or put that "
                           "repository in the Hugging Face cache", ckpt.path)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(str(config_dir), subfolder="scheduler")
    return diffusers.StableDiffusion3Pipeline(
        transformer=parts["transformer"], vae=parts["vae"], scheduler=scheduler,
        text_encoder=parts["text_encoder"], tokenizer=clip_tokenizer(),
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=parts["text_encoder_3"], tokenizer_3=parts["tokenizer_3"])


def original_state(transformer: dict | None, vae: dict | None, vae_config: dict | None,
                   text_encoders: list | None) -> dict[str, torch.Tensor]:
    """diffusers/transformers state dicts → one SAI-layout state dict (what ComfyUI and sd-scripts load);
    text encoders that are None are left out, as in SAI's files without them."""
    from . import naming as sd3_naming
    from ...models.ldm_components import vae_to_original

    out: dict[str, torch.Tensor] = {}
    if transformer is not None:
        out.update({MMDIT + k: v for k, v in sd3_naming.diffusers_state_to_sai(transformer).items()})
    if vae is not None:
        out.update(vae_to_original(vae, vae_config))
    for (sub, prefix), state in zip(TE_PREFIX.items(), text_encoders or []):
        if state is None:
            continue
        if sub == "text_encoder_3":  # tied to shared.weight; SAI files hold only that
            state = {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}
        out.update({prefix + k: v for k, v in state.items()})
    return out


def save_single_file(pipe, path, *, include_text_encoders: bool = True, dtype=None,
                     metadata: dict | None = None) -> Path:
    """An SAI-layout single file of the pipeline, written atomically (tests and `save_model` use it)."""
    from ...formats.st_io import serialize, write_bytes_atomic

    tes = [getattr(pipe, n, None) for n in TE_PREFIX] if include_text_encoders else []
    out = original_state(pipe.transformer.state_dict(), pipe.vae.state_dict() if pipe.vae is not None else None,
                         dict(pipe.vae.config) if pipe.vae is not None else None,
                         [te.state_dict() if te is not None else None for te in tes])
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
    path = Path(path)
    header = {"modelspec.sai_model_spec": "1.0.0",
              "modelspec.architecture": "stable-diffusion-3-" + variant_of_config(pipe.transformer.config),
              "modelspec.implementation": "https://github.com/Stability-AI/sd3.5", "modelspec.title": path.stem,
              **{str(k): str(v) for k, v in (metadata or {}).items()}}
    write_bytes_atomic(path, serialize(out, header))
    return path
