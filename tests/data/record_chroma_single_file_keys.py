"""Writes chroma_single_file_keys.json: every tensor name and shape of Chroma's single file as its
authors ship it (lodestones/Chroma*.safetensors, top-level names such as
`double_blocks.0.img_attn.qkv.weight`), taken from the model kohya-ss/sd-scripts builds for it
(`library/chroma_models.py`, a copy of lodestone-rock/flow's src/models/chroma/model.py), on the meta
device: no weights are needed. diffusers' `convert_chroma_transformer_checkpoint_to_diffusers` consumes
exactly these names. Same venv as record_sd_scripts_names.py.

    cd sd-scripts && python LORAKIT/tests/data/record_chroma_single_file_keys.py $(git rev-parse HEAD) \
        > LORAKIT/tests/data/chroma_single_file_keys.json
"""

from __future__ import annotations

import json
import re
import sys
import types

import torch
# imported before the stubs below, which their probes for installed packages must not see
from diffusers import AutoencoderKL  # noqa: F401
from transformers import CLIPTextModel, T5EncoderModel  # noqa: F401

sys.path.insert(0, ".")
_STDOUT, sys.stdout = sys.stdout, sys.stderr  # sd-scripts' logging writes to stdout without rich
# library/utils.py imports cv2 and torchvision for image resizing, which building a model never uses
_STUBS = {"cv2": types.ModuleType("cv2"), "torchvision": types.SimpleNamespace(transforms=None)}
sys.modules.update(_STUBS)
from library import chroma_models  # noqa: E402

for _name in _STUBS:
    del sys.modules[_name]


def main(commit: str) -> None:
    with torch.device("meta"):
        model = chroma_models.Chroma(chroma_models.chroma_params)
    params = {k: v for k, v in vars(chroma_models.chroma_params).items() if not k.startswith("_")}
    out = {"source": {"repository": "kohya-ss/sd-scripts", "commit": commit, "module": "library/chroma_models.py",
                      "command": "cd sd-scripts && python LORAKIT/tests/data/record_chroma_single_file_keys.py COMMIT "
                                 "> LORAKIT/tests/data/chroma_single_file_keys.json",
                      "params": params, "torch": torch.__version__},
           "tensors": {k: list(v.shape) for k, v in model.state_dict().items()}}
    text = json.dumps(out, indent=1)
    _STDOUT.write(re.sub(r"\[\s+(\d+)(?:,\s+(\d+))?\s+\]", lambda m: "[" + ", ".join(g for g in m.groups() if g) + "]",
                         text) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
