"""What SD 1.x, 2.x and XL share: a UNet2DConditionModel denoiser trained on epsilon or v,
CLIP/OpenCLIP text encoders, the CompVis/SAI single-file layout and kohya's UNet names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from . import naming
from ..base import CONFIGS_DIR, Family

UNET = "model.diffusion_model."
_TRANSFORMER = frozenset({"Transformer2DModel", "SpatialTransformer"})
_RESNET = frozenset({"ResnetBlock2D"})
_SAMPLERS = frozenset({"Downsample2D", "Upsample2D"})


def context_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """Cross-attention context width of a checkpoint, from e.g. input_blocks.1.1.transformer_blocks.0.attn2.to_k."""
    for k, shape in shapes.items():
        if k.startswith(UNET) and re.search(r"\.attn2\.to_k\.weight$", k):
            return shape[1]
    return None


def denoiser_config(pipe, config: Mapping | None) -> dict:
    unet = getattr(pipe, "unet", None)
    return dict(unet.config) if unet is not None else dict(config or {})


class UNetFamily(Family):
    denoiser = "unet"
    denoiser_class = "UNet2DConditionModel"
    prediction_types = ("epsilon", "v_prediction")
    denoiser_containers = _TRANSFORMER | _RESNET | _SAMPLERS
    clip_skip = "honoured"

    text_encoder_classes: tuple[str, ...] = ("CLIPTextModel",)  # transformers class per text encoder
    # (layout, key prefix) of each text encoder in the original single file; layout clip (transformers
    # names under the prefix) or open_clip (OpenCLIP: fused in_proj, resblocks, ln_final)
    checkpoint_text_encoders: tuple[tuple[str, str], ...] = ()
    shipped_configs: Mapping[str, str] = {}  # prediction type → folder in models/configs
    index_defaults: Mapping[str, object] = {}  # model_index.json values the pipeline constructor takes
    sai_names: bool = False  # kohya names the UNet in the original SAI spelling (SDXL), else diffusers'
    context_widths: tuple[int, ...] = ()  # cross-attention widths of the real models
    te_widths: tuple[int, ...] = ()  # hidden width of the (single) text encoder of the real models
    base_version_prefix: str = ""
    architecture_prefix: str = ""
    tiny_unet: Mapping = {}  # what models.tiny changes in its tiny UNet config for this family
    tiny_text_encoders: tuple[Mapping, ...] = ()  # models.tiny.text_config options per text encoder

    # --- detection -----------------------------------------------------------------------------
    def lora_metadata_evidence(self, metadata: Mapping[str, str]) -> int:
        if metadata.get("ss_base_model_version", "").startswith(self.base_version_prefix):
            return 3
        if metadata.get("modelspec.architecture", "").startswith(self.architecture_prefix):
            return 2
        return 0

    def is_denoiser_lora_name(self, name: str) -> bool:
        return naming.is_unet_kohya_name(name, self.reference_layout())

    @property
    def lora_width_probes(self):
        """Cross-attention keys/values read the text context (768, 1024, 2048); text-encoder q/k
        read the encoder's width."""
        probes = [(naming.UNET_PREFIX, ("attn2_to_k", "attn2_to_v"), frozenset(self.context_widths))]
        probes += [(prefix, ("self_attn_q_proj", "self_attn_k_proj"), frozenset({width}))
                   for prefix, width in zip(self.te_prefixes, self.te_widths)]
        return tuple(probes)

    def check_checkpoint(self, ckpt) -> None:
        from ...errors import LoraKitError

        conv_in = ckpt.shapes.get(UNET + "input_blocks.0.0.weight")
        if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
            raise LoraKitError(f"a UNet with {conv_in[1]} input channels (inpainting or depth model): only "
                               "text-to-image checkpoints (4 channels) are supported", ckpt.path)
        if ckpt.has("conditioner.embedders.0.model."):
            raise LoraKitError("an SDXL refiner checkpoint: only SDXL base-type checkpoints are supported",
                               ckpt.path)

    @staticmethod
    def is_unet_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> bool:
        return any(k.startswith(UNET + "input_blocks.") for k in shapes)

    # --- models and files ------------------------------------------------------------------------
    def config_dir(self, prediction_type: str, ckpt=None) -> Path:
        return CONFIGS_DIR / self.shipped_configs.get(prediction_type, self.shipped_configs["epsilon"])

    def pipeline_from_checkpoint(self, ckpt, config_dir: Path, *, dtype, prediction_type: str, components,
                                 base_precision: str = "auto", **options):
        from .loading import build_pipeline

        return build_pipeline(ckpt, self.name, config_dir, dtype=dtype, prediction_type=prediction_type,
                              components=components, base_precision=base_precision)

    def to_original(self, denoiser=None, denoiser_config=None, vae=None, vae_config=None,
                    text_encoders: list | None = None) -> dict:
        from . import original_layout

        return original_layout.to_original(self.name, unet=denoiser, unet_config=denoiser_config, vae=vae,
                                           vae_config=vae_config, text_encoders=text_encoders)

    streams_weights = True

    def original_weight_keys(self, part: str, path: str, layout) -> tuple[tuple[str, ...], int | None]:
        if part == "unet":
            return (UNET + naming.diffusers_to_sai_unet_path(path, layout) + ".weight",), None
        from ...models.ldm_components import te_weight_key

        kind, prefix = self.checkpoint_text_encoders[self.te_parts.index(part)]
        return te_weight_key(kind, prefix, path)

    def denoiser_downsampling(self, config: Mapping) -> int:
        return 2 ** (len(config["down_block_types"]) - 1)

    def training_values(self, config: Mapping, latent_height: int, latent_width: int, checkpointed: bool) -> int:
        """Scales with the latent pixels and the width of the first (largest) level."""
        from ...fit_check import unet_values

        return unet_values(config, latent_height, latent_width, checkpointed)

    def activation_units(self, config: Mapping, latent_height: int, latent_width: int) -> tuple[int, float, str]:
        return latent_height * latent_width * config["block_out_channels"][0], 1, "unet"

    # --- kohya names ---------------------------------------------------------------------------
    def denoiser_layout(self, config: Mapping | None):
        return naming.UNetLayout.from_config(config) if config else None

    def denoiser_path(self, path: str, layout) -> str:
        """SAI spellings (kohya's SDXL names) back to diffusers paths."""
        if naming.is_sai_unet_path(path):
            return naming.sai_to_diffusers_unet_path(path, layout or self.reference_layout())
        return path

    def kohya_denoiser_names(self, path: str, layout) -> tuple[str, ...]:
        names = naming.unet_kohya_names(path, layout)  # diffusers spelling, then SAI spelling
        if self.sai_names and layout is not None:
            preferred = naming.kohya_name(naming.UNET_PREFIX, naming.diffusers_to_sai_unet_path(path, layout))
            names = [preferred] + [n for n in names if n != preferred]
        return tuple(names)

    lbw_blocks = True

    def lbw_block(self, target, layout) -> str | None:
        """Text encoders: BASE; a UNet layer: the LDM block its SAI path lies in (input_blocks.4 → IN04)."""
        if target.part != "unet":
            return "BASE"
        path = naming.diffusers_to_sai_unet_path(target.path, layout or self.reference_layout())
        m = re.match(r"(input_blocks|output_blocks)\.(\d+)\.", path)
        if m:
            return f"{'IN' if m[1] == 'input_blocks' else 'OUT'}{int(m[2]):02d}"
        return "M00" if path.startswith("middle_block.") else None

    # --- presets -------------------------------------------------------------------------------
    def denoiser_selected(self, path: str, container: str, preset: str) -> bool:
        if container in _TRANSFORMER:
            if preset == "cross-attn":
                return ".attn2." in path and ".to_" in path
            if preset == "attn":
                return (".attn1." in path or ".attn2." in path) and ".to_" in path
            return True
        return preset == "full" and (container in _RESNET or container in _SAMPLERS)

    # --- conditioning --------------------------------------------------------------------------
    def encode_text(self, encoders: Sequence, tokenizers: Sequence, ids: Sequence, cached=None,
                    clip_skip: int | None = None) -> dict:
        """SD 1.x/2.x: the text encoder's last hidden state; with `clip_skip` N the N-th last one through
        the final layer norm, as sd-scripts' SdTextEncodingStrategy and A1111 take it."""
        te = encoders[0]
        mask = None
        if getattr(te.config, "use_attention_mask", False):
            mask = (ids[0] != tokenizers[0].pad_token_id).long().to(te.device)
        if clip_skip is None:
            return {"hidden": te(ids[0].to(te.device), attention_mask=mask)[0]}
        out = te(ids[0].to(te.device), attention_mask=mask, output_hidden_states=True)
        # transformers 5's CLIPTextModel holds the norm itself, older ones and ...WithProjection in text_model
        return {"hidden": getattr(te, "text_model", te).final_layer_norm(out.hidden_states[-clip_skip])}

    def predict(self, denoiser, noisy, t, cond: Mapping, extra: Mapping, dtype):
        return denoiser(noisy.to(dtype), t, cond["hidden"].to(dtype), return_dict=False)[0]
