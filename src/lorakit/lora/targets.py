"""Which layers of a model a network adapts, and every kohya name each layer answers to.

Presets select layers by the class names of their containers (as kohya does), so this file
needs no model library: the family names the denoiser's containers and what each preset takes
(`Transformer2DModel`, `ResnetBlock2D`... in SD UNets); in the text encoders `CLIPAttention` /
`CLIPMLP` (and their SDPA/flash variants). The kohya names come from the family too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from torch import Tensor, nn

from .. import families
from ..kohya_names import kohya_name, te_path_for_name
from . import compose

PRESETS = ("attn", "cross-attn", "attn-mlp", "transformer", "full")  # every family's, in the CLI's order


@dataclass
class Target:
    name: str  # the name lorakit writes
    path: str  # module path inside its part
    part: str  # unet, te, te1, te2
    module: nn.Module
    container: str  # class of the block it sits in ("" when none of the known ones)
    aliases: tuple[str, ...] = ()
    # A layer the file names once but the live model holds as several (fused qkv) or with its rows
    # in another order: (live layer, the rows of the named layer it holds). `module` is then a
    # weightless (meta) Linear of the named layer's shape.
    pieces: tuple[tuple[nn.Module, Tensor], ...] = ()

    @property
    def is_conv3(self) -> bool:
        return isinstance(self.module, nn.Conv2d) and tuple(self.module.kernel_size) != (1, 1)

    def sites(self) -> list[tuple[nn.Module, Tensor | None]]:
        """(live layer, rows of the named layer or None for all) for each layer a ΔW lands in."""
        return list(self.pieces) if self.pieces else [(self.module, None)]

    def weight(self) -> Tensor:
        """The named layer's weight as the file sees it (gathered from its pieces when fused)."""
        sites = self.sites()
        return compose.gather(sites, [module.weight for module, _ in sites])


@dataclass
class ModelParts:
    """What a network attaches to: a UNet and zero or more text encoders of one family."""

    family: str  # a registered family name (lorakit.families)
    unet: nn.Module | None
    text_encoders: Sequence[nn.Module] = ()
    unet_config: Mapping | None = None
    _index: dict | None = field(default=None, repr=False)

    @property
    def spec(self) -> families.Family:
        return families.get(self.family)

    def index(self) -> dict[str, Target]:
        """Every adaptable layer under every name a file may use (built once per parts)."""
        if self._index is None:
            self._index = build_index(self)
        return self._index

    def targets(self) -> list[Target]:
        seen, out = set(), []
        for t in self.index().values():
            if id(t.module) not in seen:
                seen.add(id(t.module))
                out.append(t)
        return out


def _containers(root: nn.Module, classes: set[str]) -> dict[str, str]:
    """path of each adaptable layer → class name of the nearest container of interest."""
    found: dict[str, str] = {}
    for path, module in root.named_modules():
        cls = type(module).__name__
        if cls in classes:
            for sub, child in module.named_modules():
                if isinstance(child, (nn.Linear, nn.Conv2d)) and sub:
                    found.setdefault(f"{path}.{sub}" if path else sub, cls)
    return found


def _te_container(cls: str) -> str:
    if "Attention" in cls:
        return "CLIPAttention"
    if "MLP" in cls or cls.startswith("T5Dense"):  # T5's gated MLP is T5DenseGatedActDense
        return "CLIPMLP"
    return cls


def _is_clip(te: nn.Module) -> bool:
    return str(getattr(getattr(te, "config", None), "model_type", "clip")).startswith("clip")


def build_index(parts: ModelParts) -> dict[str, Target]:
    index: dict[str, Target] = {}
    spec = parts.spec
    custom = spec.denoiser_targets(parts.unet) if parts.unet is not None else None
    if custom is not None:  # a denoiser whose file names are not its module paths (SD3's fused qkv)
        index.update(custom)
    elif parts.unet is not None:
        layout = spec.denoiser_layout(parts.unet_config)
        containers = _containers(parts.unet, set(spec.denoiser_containers))
        for path, module in parts.unet.named_modules():
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            names = spec.kohya_denoiser_names(path, layout)
            t = Target(names[0], path, "unet", module, containers.get(path, ""), names)
            for n in names:
                index[n] = t
    for i, te in enumerate(parts.text_encoders):
        if te is None or i >= len(spec.te_prefixes):  # an encoder without a kohya prefix never gets a LoRA
            continue
        prefix = spec.te_prefix(i)
        containers = {p: _te_container(c) for p, c in _containers(te, {
            type(m).__name__ for m in te.modules()
            if "Attention" in type(m).__name__ or _te_container(type(m).__name__) == "CLIPMLP"}).items()}
        for path, module in te.named_modules():
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            name = kohya_name(prefix, te_path_for_name(path) if _is_clip(te) else path)
            index[name] = Target(name, path, prefix[len("lora_"):], module, containers.get(path, ""), (name,))
    return index


def _te_selected(t: Target, preset: str) -> bool:
    if t.container == "CLIPAttention":
        return True
    return t.container == "CLIPMLP" and preset in ("attn-mlp", "transformer", "full")


def select(parts: ModelParts, preset: str = "transformer", *, unet: bool = True,
           text_encoder: bool = True) -> list[Target]:
    """The layers a preset adapts, in model order. kohya's default is `transformer`."""
    spec = parts.spec
    if preset not in spec.presets:
        raise ValueError(f"unknown target preset {preset!r}: choose from {', '.join(spec.presets)}")
    out = []
    for t in parts.targets():
        if t.part == "unet":
            if unet and spec.denoiser_selected(t.path, t.container, preset):
                out.append(t)
        elif text_encoder and _te_selected(t, preset):
            out.append(t)
    return out
