"""Record the LoRA module names musubi-tuner's own code gives the real-size Z-Image transformer.

Run from a checkout of kohya-ss/musubi-tuner (its `src` on the path), with torch, accelerate and
transformers installed:

    cd musubi-tuner/src && PYTHONPATH=. python /path/to/record_musubi_names_zimage.py OUT.json [COMMIT]

(COMMIT: the commit of the tree, when it is an export without git.)

musubi-tuner's `zimage_model.create_model` builds the transformer on the meta device (accelerate's
init_empty_weights); `networks.lora_zimage.create_arch_network` is what `zimage_train_network.py
--network_module networks.lora_zimage` calls. Each name is written with the (out, in) shape of the layer.
"""

import json
import subprocess
import sys
from pathlib import Path

import musubi_tuner
from musubi_tuner.networks import lora_zimage
from musubi_tuner.zimage import zimage_model


def main(out: str) -> None:
    model = zimage_model.create_model(attn_mode="torch", split_attn=False, dtype=None)
    net = lora_zimage.create_arch_network(1.0, 4, 1.0, None, [], model)
    names = {m.lora_name: list(m.org_module_ref[0].weight.shape) if hasattr(m, "org_module_ref")
             else [m.lora_up.weight.shape[0], m.lora_down.weight.shape[1]] for m in net.unet_loras}
    repo = Path(musubi_tuner.__file__).resolve().parents[2]
    commit = sys.argv[2] if len(sys.argv) > 2 else subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {"source": {"repository": "kohya-ss/musubi-tuner", "commit": commit,
                         "modules": ["src/musubi_tuner/zimage/zimage_model.py",
                                     "src/musubi_tuner/networks/lora_zimage.py", "src/musubi_tuner/networks/lora.py"],
                         "command": "cd musubi-tuner/src && "
                                    "PYTHONPATH=. python record_musubi_names_zimage.py OUT.json [COMMIT]",
                         "call": "lora_zimage.create_arch_network(1.0, 4, 1.0, None, [], "
                                 "zimage_model.create_model(attn_mode='torch', split_attn=False, dtype=None))"},
              "zimage": {"unet_loras": names, "text_encoder_loras": {}}}
    Path(out).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
