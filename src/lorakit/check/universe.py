"""The layers a LoRA can reach: every Linear and Conv2d of a family's denoiser and text encoders,
with the block class around it (sd-scripts picks layers by that class) and every kohya name
lorakit knows for it (`lora.targets`).

Taken from the model at hand (a pipeline: `train`, the tests) or, without one, built from the
family's shipped diffusers configs on the meta device (real sizes, no weights, no download).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .. import families
from ..kohya_names import te_path_for_name

# block classes that tools choose layers by (sd-scripts' target modules)
CONTAINERS = frozenset({"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D",
                        "CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"})


@dataclass(frozen=True)
class Layer:
    part: str  # unet (the denoiser), te, te1, te2, te3
    path: str  # module path in the diffusers/transformers model (CLIP text encoders: with `text_model.`)
    kind: str  # linear, conv (kxk), conv1x1
    container: str  # the nearest enclosing class in CONTAINERS, "" when none


@dataclass
class Universe:
    family: str
    components: dict  # pipeline attribute → model (denoiser and text encoders; meta tensors when built)
    layers: tuple[Layer, ...] = ()
    _parts: object = field(default=None, repr=False)

    @property
    def spec(self) -> families.Family:
        return families.get(self.family)

    @property
    def denoiser_config(self) -> dict:
        return dict(getattr(self.components[self.spec.denoiser], "config", {}) or {})

    @property
    def layout(self):
        return self.spec.denoiser_layout(self.denoiser_config)

    def of_part(self, part: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.part == part]

    def te_index(self, part: str) -> int:
        return self.spec.te_parts.index(part)

    def parts(self):
        """lorakit's ModelParts of these components (its kohya-name index)."""
        if self._parts is None:
            from ..lora import ModelParts

            spec = self.spec
            tes = [self.components[a] for a in spec.text_encoders if a in self.components]
            self._parts = ModelParts(self.family, self.components[spec.denoiser], tes, self.denoiser_config)
        return self._parts


def _layers(part: str, model, clip: bool) -> list[Layer]:
    import torch.nn as nn

    classes = {name: type(m).__name__ for name, m in model.named_modules()}
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not name:
            continue
        container, parent = "", name
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if classes.get(parent) in CONTAINERS:
                container = classes[parent]
                break
        if isinstance(module, nn.Conv2d):
            kind = "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
        else:
            kind = "linear"
        out.append(Layer(part, te_path_for_name(name) if clip else name, kind, container))
    return out


def from_pipeline(family: str, pipe) -> Universe:
    """The layers of a loaded pipeline (or of any object holding the family's components as attributes)."""
    spec = families.get(family)
    components = {spec.denoiser: getattr(pipe, spec.denoiser)}
    layers = _layers("unet", components[spec.denoiser], False)
    for attribute, part in zip(spec.text_encoders, spec.te_parts):
        encoder = getattr(pipe, attribute, None)
        if encoder is not None:
            components[attribute] = encoder
            layers += _layers(part, encoder, type(encoder).__name__.startswith("CLIP"))
    return Universe(family, components, tuple(layers))


def meta_copy(universe: Universe) -> dict:
    """Fresh weightless copies of the components (for a loader to attach to and be thrown away)."""
    return _meta_components(universe.components)


def _meta_components(components: dict) -> dict:
    import diffusers
    import torch
    import transformers

    out = {}
    with torch.device("meta"):
        for attribute, model in components.items():
            if isinstance(model, diffusers.ModelMixin):
                out[attribute] = type(model).from_config(model.config)
            elif isinstance(model, transformers.PreTrainedModel):
                out[attribute] = type(model)._from_config(model.config)
    return out


def from_model(model) -> Universe:
    """The layers of a lorakit BaseModel (`train`'s), as weightless copies: what a LoRA attached to
    the live model adds is not counted, and a denoiser released after training is rebuilt from its
    config."""
    import diffusers
    import torch

    spec = families.get(model.family)

    class Components:
        pass

    components = Components()
    live = {a: getattr(model.pipe, a, None) for a in (spec.denoiser, *spec.text_encoders)}
    for attribute, copy in _meta_components({a: m for a, m in live.items() if m is not None}).items():
        setattr(components, attribute, copy)
    if live[spec.denoiser] is None and model.denoiser_config:
        with torch.device("meta"):
            cls = getattr(diffusers, spec.denoiser_class)
            setattr(components, spec.denoiser, cls.from_config(model.denoiser_config))
    return from_pipeline(model.family, components)


@lru_cache(maxsize=8)
def reference(family: str) -> Universe:
    """The layers of the family's base model, from the shipped configs on the meta device."""
    spec = families.get(family)
    return from_configs(family, spec.config_dir(spec.prediction_types[0]))


def for_model(spec: str) -> Universe:
    """The layers of a base model the user names (`--model`): a diffusers folder, `toy`, or a single
    file (read for its header only: the shipped configs of the variant it is)."""
    from ..errors import LoraKitError

    if spec == "toy":
        from ..toy import BASE_DIR

        spec = str(BASE_DIR)
    path = Path(spec)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise LoraKitError("is a folder but not a diffusers model (no model_index.json)", path)
        name = json.loads(index.read_text()).get("_class_name")
        family = next((f.name for f in families.all() if f.pipeline_class == name), None)
        if family is None:
            raise LoraKitError(f"a {name} model: not a pipeline of a family lorakit knows", path)
        return from_configs(family, path)
    if not path.is_file():
        raise LoraKitError("no such file or folder", path)
    from ..models.checkpoint import detect_file_family, open_checkpoint

    ckpt = open_checkpoint(path)
    try:
        family = detect_file_family(ckpt)
        spec_ = families.get(family)
        return from_configs(family, spec_.config_dir(spec_.prediction_types[0], ckpt))
    finally:
        ckpt.close()


def from_configs(family: str, folder: Path) -> Universe:
    """The layers of a diffusers folder's denoiser and text encoders, built from their configs
    on the meta device."""
    import diffusers
    import torch
    import transformers

    spec = families.get(family)
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())

    class Components:
        pass

    components = Components()
    for attribute in (spec.denoiser, *spec.text_encoders):
        entry = index.get(attribute)
        if not entry or not (folder / attribute).is_dir():
            continue
        library, cls_name = entry
        with torch.device("meta"):
            if library == "diffusers":
                cls = getattr(diffusers, cls_name)
                model = cls.from_config(cls.load_config(folder / attribute))
            else:
                cls = getattr(transformers, cls_name)
                model = cls._from_config(transformers.AutoConfig.from_pretrained(folder / attribute))
        setattr(components, attribute, model)
    return from_pipeline(family, components)
