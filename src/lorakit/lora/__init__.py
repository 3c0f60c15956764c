"""The LoRA math: adapter modules, networks on a model, merge and unmerge, low-rank algebra."""

from .modules import DeltaModule, LoRAModule
from .network import LoRANetwork
from .targets import PRESETS, ModelParts, Target, select

__all__ = ["DeltaModule", "LoRAModule", "LoRANetwork", "ModelParts", "PRESETS", "Target", "select"]
