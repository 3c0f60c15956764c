"""Writes sd_scripts_names.json: the module names kohya-ss/sd-scripts' own LoRA networks give the
real-size SD 3.x and Flux.1-dev models, so the tests compare lorakit against sd-scripts, not
against itself.

Run from an sd-scripts checkout, in a venv with its imports at the versions its requirements.txt
pins (transformers==4.54.1 diffusers==0.32.1 accelerate==1.6.0 safetensors==0.4.5 einops==0.7.0,
any torch): under transformers 5 `CLIPTextModel` has no `text_model` level, and the Flux CLIP-L
names would lose `text_model_`. No weights are needed: every model is built on the meta device.

    cd sd-scripts && python LORAKIT/tests/data/record_sd_scripts_names.py $(git rev-parse HEAD) \
        > LORAKIT/tests/data/sd_scripts_names.json

The models are built as sd-scripts builds them: its own CLIP/T5 loaders (their configs,
`init_empty_weights`) with the weight file reading stubbed to an empty state dict, the MMDiT with
`sd3_models.create_sd3_mmdit` from the `SD3Params` that `sd3_utils.analyze_state_dict_state` derives
from each released checkpoint, and Flux with `flux_models.Flux(configs["dev"].params)` under
`torch.device("meta")` as `flux_utils.load_flow_model` does. Networks use each script's default
targets, with `train_t5xxl` on so that T5's names are recorded too. Each name is recorded with the
[out, in] features of the layer it adapts, so a name put on the wrong layer shows as well.
"""

from __future__ import annotations

import json
import re
import sys
import types

import diffusers
import torch
import transformers
# imported before the stubs below, which their probes for installed packages must not see
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler  # noqa: F401
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel  # noqa: F401

sys.path.insert(0, ".")
# library/utils.py imports cv2 and torchvision for image resizing, which building a network never uses
_STUBS = {"cv2": types.ModuleType("cv2"), "torchvision": types.SimpleNamespace(transforms=None)}
sys.modules.update(_STUBS)
from library import flux_models, flux_utils, sd3_models, sd3_utils  # noqa: E402
from networks import lora_flux, lora_sd3  # noqa: E402

for _name in _STUBS:
    del sys.modules[_name]


def _empty_state(*args, **kwargs):
    return {}


flux_utils.load_safetensors = _empty_state  # the loaders read a file; leave their meta weights empty
sd3_utils.load_safetensors = _empty_state

# SD3Params as analyze_state_dict_state derives them from each released single file
_DEPTH = {"sd35-large": 38, "sd35-medium": 24, "sd3-medium": 24}
_SD3 = {
    "sd35-large": dict(pos_embed_max_size=192, qk_norm="rms", x_block_self_attn_layers=[], model_type="5-large"),
    "sd35-medium": dict(pos_embed_max_size=384, qk_norm="rms", x_block_self_attn_layers=list(range(13)),
                        model_type="5-medium"),
    "sd3-medium": dict(pos_embed_max_size=192, qk_norm=None, x_block_self_attn_layers=[], model_type="medium"),
}


def sd3_mmdit(name: str):
    depth = _DEPTH[name]
    extra = _SD3[name]
    params = sd3_models.SD3Params(patch_size=2, depth=depth, num_patches=extra["pos_embed_max_size"] ** 2,
                                  adm_in_channels=2048, context_embedder_in_features=4096,
                                  context_embedder_out_features=64 * depth, **extra)
    with torch.device("meta"):
        return sd3_models.create_sd3_mmdit(params)


def names(network) -> dict[str, dict[str, list[int]]]:
    """{lora_name: [out_features, in_features] of the layer it adapts}, in the network's order."""
    def shapes(loras):
        return {m.lora_name: [m.lora_up.out_features, m.lora_down.in_features] for m in loras}

    return {"unet_loras": shapes(network.unet_loras), "text_encoder_loras": shapes(network.text_encoder_loras)}


def main(commit: str) -> None:
    out = {"source": {"repository": "kohya-ss/sd-scripts", "commit": commit,
                      "modules": ["networks/lora_sd3.py", "networks/lora_flux.py"],
                      "command": "cd sd-scripts && python LORAKIT/tests/data/record_sd_scripts_names.py COMMIT "
                                 "> LORAKIT/tests/data/sd_scripts_names.json",
                      "network_args": "network_dim=4, network_alpha=1, train_t5xxl=True, all else default",
                      "versions": {m.__name__: m.__version__ for m in (torch, transformers, diffusers)}}}
    clip_l = sd3_utils.load_clip_l("clip_l.safetensors", None, "meta")
    clip_g = sd3_utils.load_clip_g("clip_g.safetensors", None, "meta")
    t5 = sd3_utils.load_t5xxl("t5xxl.safetensors", None, "meta")
    for name in _SD3:
        net = lora_sd3.create_network(1.0, 4, 1.0, None, [clip_l, clip_g, t5], sd3_mmdit(name), train_t5xxl="True")
        out[name] = names(net)
    with torch.device("meta"):
        flux = flux_models.Flux(flux_models.configs[flux_utils.MODEL_NAME_DEV].params)
    clip = flux_utils.load_clip_l("clip_l.safetensors", None, "meta")
    t5 = flux_utils.load_t5xxl("t5xxl.safetensors", None, "meta")
    out["flux1-dev"] = names(lora_flux.create_network(1.0, 4, 1.0, None, [clip, t5], flux, train_t5xxl="True"))
    text = json.dumps(out, indent=1)
    sys.stdout.write(re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text) + "\n")  # a layer per line


if __name__ == "__main__":
    main(sys.argv[1])
