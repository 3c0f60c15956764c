"""Writes sd_scripts_names_chroma.json: the module names kohya-ss/sd-scripts' own LoRA network
(networks/lora_flux.py, which also trains Chroma: flux_train_network.py --model_type=chroma) gives the
real-size Chroma model, so the tests compare lorakit against sd-scripts, not against itself.

Same venv and the same way as record_sd_scripts_names.py (sd-scripts' requirements.txt pins:
transformers==4.54.1 diffusers==0.32.1 accelerate==1.6.0 safetensors==0.4.5 einops==0.7.0, any torch).
No weights are needed: Chroma is built by `flux_utils.load_flow_model(..., model_type="chroma")`,
which builds `chroma_models.Chroma(chroma_models.chroma_params)` under `torch.device("meta")`, with
the weight file reading stubbed to an empty state dict; T5-XXL by `flux_utils.load_t5xxl` likewise,
and CLIP-L by `flux_utils.dummy_clip_l()` as flux_train_network.py does for Chroma (it has no Linear,
so it gets no LoRA). The network uses the script's default targets, with `train_t5xxl` on so that
T5's names are recorded too.

    cd sd-scripts && python LORAKIT/tests/data/record_sd_scripts_names_chroma.py $(git rev-parse HEAD) \
        > LORAKIT/tests/data/sd_scripts_names_chroma.json
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
from transformers import CLIPTextModel, T5EncoderModel  # noqa: F401

sys.path.insert(0, ".")
# sd-scripts' logging writes to stdout where rich is not installed; the JSON alone goes there
_STDOUT, sys.stdout = sys.stdout, sys.stderr
# library/utils.py imports cv2 and torchvision for image resizing, which building a network never uses
_STUBS = {"cv2": types.ModuleType("cv2"), "torchvision": types.SimpleNamespace(transforms=None)}
sys.modules.update(_STUBS)
from library import flux_utils  # noqa: E402
from networks import lora_flux  # noqa: E402

for _name in _STUBS:
    del sys.modules[_name]


def _empty_state(*args, **kwargs):
    return {}


flux_utils.load_safetensors = _empty_state  # the loaders read a file; leave their meta weights empty


def names(network) -> dict[str, dict[str, list[int]]]:
    """{lora_name: [out_features, in_features] of the layer it adapts}, in the network's order."""
    def shapes(loras):
        return {m.lora_name: [m.lora_up.out_features, m.lora_down.in_features] for m in loras}

    return {"unet_loras": shapes(network.unet_loras), "text_encoder_loras": shapes(network.text_encoder_loras)}


def main(commit: str) -> None:
    out = {"source": {"repository": "kohya-ss/sd-scripts", "commit": commit,
                      "modules": ["library/chroma_models.py", "networks/lora_flux.py"],
                      "command": "cd sd-scripts && python LORAKIT/tests/data/record_sd_scripts_names_chroma.py COMMIT "
                                 "> LORAKIT/tests/data/sd_scripts_names_chroma.json",
                      "network_args": "network_dim=4, network_alpha=1, train_t5xxl=True, all else default",
                      "versions": {m.__name__: m.__version__ for m in (torch, transformers, diffusers)}}}
    _, chroma = flux_utils.load_flow_model("chroma.safetensors", None, "meta", model_type="chroma")
    assert chroma.get_model_type() == "chroma"
    clip = flux_utils.dummy_clip_l()
    t5 = flux_utils.load_t5xxl("t5xxl.safetensors", None, "meta")
    out["chroma"] = names(lora_flux.create_network(1.0, 4, 1.0, None, [clip, t5], chroma, train_t5xxl="True"))
    text = json.dumps(out, indent=1)
    _STDOUT.write(re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text) + "\n")  # a layer per line


if __name__ == "__main__":
    main(sys.argv[1])
