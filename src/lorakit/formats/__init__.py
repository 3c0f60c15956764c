"""LoRA files in and out: kohya (default), LyCORIS, diffusers and PEFT, plus metadata and hashes.

In memory every LoRA is kohya-named modules, {name: {subkey: tensor}}; each format here only
translates keys. One file per format; `lorafile.py` holds the entry points.
"""

from .detect import AmbiguousFamily, Detection, detect, detect_family, detect_format
from .hashes import file_hashes, precalculate_hashes
from .lorafile import FORMATS, LoRAFile, load_lora, save_lora
from .metadata import build_metadata
from .network_io import load_network
from .paths import kohya_to_path, path_to_kohya
from .report import inspect_lora

__all__ = ["FORMATS", "AmbiguousFamily", "Detection", "LoRAFile", "build_metadata", "detect", "detect_family",
           "detect_format", "file_hashes",
           "inspect_lora", "kohya_to_path", "load_lora", "load_network", "path_to_kohya", "precalculate_hashes",
           "save_lora"]
