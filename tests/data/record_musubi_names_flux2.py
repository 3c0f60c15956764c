"""Record the LoRA module names musubi-tuner's own code gives the real-size Flux.2 transformers.

Run once with musubi-tuner's `src` on the path (its `flux_2/flux2_models.py` and
`networks/lora_flux_2.py`, unchanged) and this project's venv:

    git -C <musubi-tuner> archive HEAD src | tar -x -C /tmp/musubi
    PYTHONPATH=/tmp/musubi/src python tests/data/record_musubi_names_flux2.py

Each model is built on the `meta` device from musubi-tuner's own parameter classes; the network is
`lora_flux_2.create_arch_network` with its defaults (dim 4, alpha 1), as `flux_2_train_network.py
--network_module networks.lora_flux_2` makes it. Writes musubi_names_flux2.json beside this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from musubi_tuner.flux_2 import flux2_models
from musubi_tuner.networks import lora_flux_2

REPO, COMMIT = "kohya-ss/musubi-tuner", "30c658c4f4b0bf05038b3346eff9670259b10fc7"
PARAMS = {"klein-4b": flux2_models.Klein4BParams(), "klein-9b": flux2_models.Klein9BParams(),
          "dev": flux2_models.Flux2Params()}


def names(params) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = flux2_models.Flux2(params, attn_mode="torch")
    net = lora_flux_2.create_arch_network(1.0, 4, 1.0, None, [], model)
    return {lora.lora_name: [lora.lora_up.weight.shape[0], lora.lora_down.weight.shape[1]] for lora in net.unet_loras}


def main() -> None:
    out = {"source": {"repo": REPO, "commit": COMMIT,
                      "modules": ["src/musubi_tuner/flux_2/flux2_models.py", "src/musubi_tuner/networks/lora_flux_2.py",
                                  "src/musubi_tuner/networks/lora.py"],
                      "command": "PYTHONPATH=/tmp/musubi/src python tests/data/record_musubi_names_flux2.py",
                      "network_args": "none (create_arch_network defaults: dim 4, alpha 1)",
                      "torch": torch.__version__},
           **{v: {"unet_loras": names(p)} for v, p in PARAMS.items()}}
    (Path(__file__).parent / "musubi_names_flux2.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
