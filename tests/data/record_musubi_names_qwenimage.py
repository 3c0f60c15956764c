"""Writes musubi_names_qwenimage.json: the module names kohya-ss/musubi-tuner's own LoRA network for
Qwen-Image (networks/lora_qwen_image.py, what qwen_image_train_network.py trains) gives the real-size
model, so the tests compare lorakit against musubi-tuner, not against itself.

No weights are needed: `qwen_image_model.create_model` builds its QwenImageTransformer2DModel (60
blocks, width 3072) under accelerate's `init_empty_weights`; the network is made with the script's
defaults (its own exclude pattern for modulation layers included). Its imports need only torch,
accelerate and transformers (lorakit's venv has them):

    git clone https://github.com/kohya-ss/musubi-tuner && cd musubi-tuner
    PYTHONPATH=src python LORAKIT/tests/data/record_musubi_names_qwenimage.py $(git rev-parse HEAD) \
        > LORAKIT/tests/data/musubi_names_qwenimage.json
"""

from __future__ import annotations

import contextlib
import json
import sys

import accelerate
import torch
import transformers

with contextlib.redirect_stdout(sys.stderr):  # its optional-attention probes print on import
    from musubi_tuner.networks import lora_qwen_image
    from musubi_tuner.qwen_image import qwen_image_model


def main(commit: str) -> None:
    model = qwen_image_model.create_model(attn_mode="torch", split_attn=False, zero_cond_t=False,
                                          use_additional_t_cond=False, use_layer3d_rope=False, dtype=None,
                                          num_layers=60)
    net = lora_qwen_image.create_arch_network(1.0, 4, 1.0, None, [], model)
    names = {m.lora_name: [m.lora_up.weight.shape[0], m.lora_down.weight.shape[1]] for m in net.unet_loras}
    out = {"source": {"repository": "kohya-ss/musubi-tuner", "commit": commit,
                      "modules": ["src/musubi_tuner/qwen_image/qwen_image_model.py",
                                  "src/musubi_tuner/networks/lora_qwen_image.py",
                                  "src/musubi_tuner/networks/lora.py"],
                      "command": "cd musubi-tuner && PYTHONPATH=src python LORAKIT/tests/data/"
                                 "record_musubi_names_qwenimage.py COMMIT > LORAKIT/tests/data/"
                                 "musubi_names_qwenimage.json",
                      "network_args": "network_dim=4, network_alpha=1, all else default",
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "accelerate": accelerate.__version__}},
           "qwenimage": {"unet_loras": dict(sorted(names.items())), "text_encoder_loras": {}}}
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
