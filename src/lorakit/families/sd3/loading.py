"""Load SD 3.x (3.0 medium, 3.5 medium, 3.5 large) as a StableDiffusion3Pipeline.

- A diffusers folder or hub id: `StableDiffusion3Pipeline.from_pretrained`.
- A single `.safetensors` as SAI ships it: `model.diffusion_model.*` (MMDiT), `first_stage_model.*`
  (VAE) and, in the `_incl_clips` / `_incl_clips_t5xxlfp8` files, `text_encoders.clip_l|clip_g|t5xxl.
  transformer.*`. The transformer is streamed a block at a time into the model built from the
  shipped config (fp8 files too, dit/loading.py); the VAE goes through diffusers' `from_single_file`
  (no network); a VAE or text encoders missing from the file (GGUF files hold the MMDiT only) come
  from `text_encoders` (a diffusers-style folder with vae, text_encoder, text_encoder_2,
  text_encoder_3, tokenizer_3) or the hub cache.

The CLIP tokenizers ship with lorakit; T5's (sentencepiece, Apache-2.0 but 800 kB of model data
tied to a hub repo) does not, so T5 always needs a folder or the hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...errors import LoraKitError
from ...models.checkpoint import Checkpoint
from ...models.placing import apply_scales
from ...models.single_file import CONFIGS_DIR, check_complete, load_diffusers_part, quiet_loading, tie_position_ids
from ..dit.loading import flow_scheduler, gather, parts_folder, stream_transformer, transformer_names, write_original

MMDIT = "model.diffusion_model."
# the MMDiT's top-level heads, for files that hold it without MMDIT (GGUF files, some repacks)
_HEADS = ("joint_blocks.", "x_embedder.", "pos_embed", "t_embedder.", "y_embedder.", "context_embedder.",
          "final_layer.")
TE_PREFIX = {"text_encoder": "text_encoders.clip_l.transformer.",
             "text_encoder_2": "text_encoders.clip_g.transformer.",
             "text_encoder_3": "text_encoders.t5xxl.transformer."}
VAE_PREFIX = "first_stage_model."
PARTS = {"vae": ("diffusers", "AutoencoderKL", "the VAE (vae)"),
         "text_encoder": ("transformers", "CLIPTextModelWithProjection", "CLIP-L (text_encoder)"),
         "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", "CLIP-G (text_encoder_2)"),
         "text_encoder_3": ("transformers", "T5EncoderModel", "T5-XXL (text_encoder_3)"),
         "tokenizer_3": ("transformers", "AutoTokenizer", "the T5 tokenizer (tokenizer_3)")}
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
    state = apply_scales({k[len(prefix):]: v for k, v in ckpt.read([prefix]).items()})
    if "text_projection.weight" not in state and sub == "text_encoder":
        # SAI files hold no CLIP-L projection: diffusers' own single-file loader uses the identity
        state["text_projection.weight"] = torch.eye(config.hidden_size, config.projection_dim)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected}
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise LoraKitError(f"{PARTS[sub][2]} tensor {k} has shape {tuple(v.shape)}, the config in "
                               f"{config_dir / sub} expects {tuple(expected[k].shape)}", ckpt.path)
    model.load_state_dict(state, strict=False, assign=True)
    tie_position_ids(model)
    check_complete(model, PARTS[sub][2], ckpt)
    return model.to(dtype).eval()


def _t5(ckpt: Checkpoint, config_dir: Path, dtype):
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    prefix = TE_PREFIX["text_encoder_3"]
    config = T5Config.from_pretrained(str(config_dir / "text_encoder_3"), local_files_only=True)
    with init_empty_weights():
        model = T5EncoderModel(config)
    state = apply_scales({k[len(prefix):]: v for k, v in ckpt.read([prefix]).items()})
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    expected = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    check_complete(model, PARTS["text_encoder_3"][2], ckpt)
    return model.to(dtype).eval()


def load_transformer(ckpt: Checkpoint, config_dir: Path, dtype, base_precision: str = "auto"):
    """Streamed, a block at a time, into `dtype` or the quantized `base_precision` (dit/loading.py)."""
    import diffusers

    from . import naming as sd3_naming

    names = transformer_names(ckpt, MMDIT, _HEADS)
    if not any(k.startswith("joint_blocks.") for k in names):
        raise LoraKitError(f"the file has no transformer ({MMDIT}* tensors)", ckpt.path)
    return stream_transformer(ckpt, diffusers.SD3Transformer2DModel, config_dir, names,
                              sd3_naming.sai_state_to_diffusers, dtype, base_precision)


def build_pipeline(ckpt: Checkpoint, *, dtype=torch.float32, config_dir: Path | None = None,
                   text_encoders: Path | None = None, components=("unet", "text_encoders", "vae"),
                   base_precision: str = "auto",
                   big_text_encoders: tuple[str, ...] = ()):
    """A StableDiffusion3Pipeline from an SAI single file (see the module docstring for the sources)."""
    import diffusers

    from ...models.tokenizer import clip_tokenizer

    name = variant(ckpt.shapes)
    config_dir = Path(config_dir) if config_dir is not None else shipped_config(name)
    te_dir = parts_folder(text_encoders, "text_encoder, text_encoder_2, text_encoder_3 and tokenizer_3 "
                                         "(a diffusers SD3 folder will do)")
    parts: dict = {"transformer": None}
    if "unet" in components:
        parts["transformer"] = load_transformer(ckpt, config_dir, dtype, base_precision)

    def in_file(sub: str):
        if sub == "vae":  # SAI's files hold it; GGUF and transformer-only files do not
            if not ckpt.has(VAE_PREFIX):
                return None
            with quiet_loading():
                return load_diffusers_part(diffusers.AutoencoderKL, ckpt, VAE_PREFIX, "vae", config_dir, dtype)
        if sub == "tokenizer_3" or not ckpt.has(TE_PREFIX[sub]):
            return None
        return _t5(ckpt, config_dir, dtype) if sub == "text_encoder_3" else _clip(ckpt, sub, config_dir, dtype)

    wanted = [s for s in PARTS if (s == "vae" and "vae" in components)
              or (s != "vae" and "text_encoders" in components)]
    found, missing = gather(PARTS, wanted, te_dir, HUB[name], dtype, in_file, base_precision=base_precision,
                            big=big_text_encoders)
    parts.update(found)
    if missing:
        what = ", ".join(PARTS[m][2] for m in missing)
        raise LoraKitError(f"the file holds no {what}: pass --text-encoders DIR, a folder with "
                           f"{', '.join(missing)} (e.g. the diffusers {HUB[name]} download), or put that "
                           "repository in the Hugging Face cache", ckpt.path)
    return diffusers.StableDiffusion3Pipeline(
        transformer=parts["transformer"], vae=parts["vae"], scheduler=flow_scheduler(config_dir),
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
    tes = [getattr(pipe, n, None) for n in TE_PREFIX] if include_text_encoders else []
    out = original_state(pipe.transformer.state_dict(), pipe.vae.state_dict() if pipe.vae is not None else None,
                         dict(pipe.vae.config) if pipe.vae is not None else None,
                         [te.state_dict() if te is not None else None for te in tes])
    return write_original(out, path, architecture="stable-diffusion-3-" + variant_of_config(pipe.transformer.config),
                          implementation="https://github.com/Stability-AI/sd3.5", dtype=dtype, metadata=metadata)
