"""A model whose layers are read from its files one at a time, never loaded whole.

`lorakit extract` needs each targeted layer of two models once, as a pair: holding both models
(two SDXL checkpoints are ~26 GB in fp32) is only a way to get there. Here the model's structure
is built on the `meta` device from its configs (no weights: target names, paths and shapes come
from the same `lora.targets` code as for a loaded model) and each layer's weight is read from
the .safetensors file when asked, under its name in that file: diffusers folders keep the module
path, original-layout single files the family's original name (`Family.original_weight_keys`,
the inverse of what `families.unet.original_layout` writes). A read weight equals, bit for bit, what
the loaders put in the loaded model: same tensor, same cast.

Only what can be read this way opens here (`open_streamed` answers None otherwise: hub ids,
pickles, folders without safetensors, families whose layers are fused in their files); the
caller then loads the model whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from .. import families
from ..errors import LoraKitError
from ..formats.kohya import count_non_finite
from ..lora.targets import ModelParts, Target

from .tensor_file import TensorFile


@dataclass
class StreamedModel:
    """A model's structure on `meta` (`parts`) and where each of its weights lies in its files."""

    family: str
    prediction_type: str
    source: str
    kind: str  # diffusers | single_file | toy
    parts: ModelParts  # on the meta device: names, paths and shapes only
    files: dict[str, dict[str, TensorFile]]  # model part (unet, te, te1...) → its tensor names → their file
    attributes: dict[str, str]  # model part → pipeline attribute, for messages (unet, text_encoder_2...)
    layout: object = None  # the denoiser's naming layout (single files)
    _last: tuple[tuple[str, str], torch.Tensor] | None = field(default=None, repr=False)

    # --- where a layer's weight lies ---------------------------------------------------------------
    def candidates(self, target: Target) -> tuple[tuple[str, ...], int | None]:
        if self.kind == "single_file":
            return self.parts.spec.original_weight_keys(target.part, target.path, self.layout)
        if target.part == "unet":
            return (target.path + ".weight",), None
        bare = target.path.removeprefix("text_model.")  # transformers 5 saves CLIPTextModel without it
        return (target.path + ".weight", "text_model." + bare + ".weight", bare + ".weight"), None

    def locate(self, target: Target) -> tuple[str, int | None]:
        """(tensor name, third of a fused q/k/v or None), checked against the layer's shape."""
        names, third = self.candidates(target)
        files = self.files.get(target.part, {})
        key = next((k for k in names if k in files), None)
        if key is None:
            raise LoraKitError(f"the file lacks tensor {names[0]} ({target.name}): truncated, or not this "
                               "architecture", self.source)
        shape = files[key].shapes[key]
        if third is not None:
            shape = (shape[0] // 3, *shape[1:])
        wanted = tuple(target.module.weight.shape)
        if shape != wanted:
            raise LoraKitError(f"tensor {key} has shape {shape}, the model's config expects {wanted}: "
                               "a different architecture", self.source)
        return key, third

    def _tensor(self, part: str, key: str) -> torch.Tensor:
        if self._last is None or self._last[0] != (part, key):  # q, k and v come from one fused tensor in turn
            self._last = ((part, key), self.files[part][key].get(key))
        return self._last[1]

    # --- reading --------------------------------------------------------------------------------------
    def read(self, target: Target, dtype: torch.dtype) -> torch.Tensor:
        """The layer's weight in `dtype` (as a model loaded in `dtype` holds it); NaN/Inf refused."""
        key, third = self.locate(target)
        tensor = self._tensor(target.part, key)
        if third is not None:
            tensor = tensor.chunk(3, dim=0)[third]
        self._require_finite(target.part, key, tensor)
        return tensor.to(dtype)

    def require_finite(self, skip: set[tuple[str, str]] = frozenset()) -> None:
        """Every tensor of the denoiser and text encoders but `skip` (those are checked as read),
        one at a time: the same refusal as `BaseModel.require_finite` on a loaded model."""
        for part, files in self.files.items():
            for key, file in files.items():
                if (part, key) in skip or not file.dtypes[key].startswith(("F", "BF")):
                    continue
                self._require_finite(part, key, file.get(key))

    def _require_finite(self, part: str, key: str, tensor: torch.Tensor) -> None:
        bad = count_non_finite(tensor) if tensor.is_floating_point() and tensor.numel() else 0
        if bad:
            raise LoraKitError(f"the base model's {self.attributes.get(part, part)} weight {key} holds {bad} "
                               "NaN/Inf value(s): the checkpoint is corrupt", self.source)

    def close(self) -> None:
        self._last = None
        for files in self.files.values():
            for f in set(files.values()):
                f.close()


# --- opening -------------------------------------------------------------------------------------------

def open_streamed(spec: str, *, config_dir=None, prediction_type: str | None = None) -> StreamedModel | None:
    """The model at `spec` opened for reading layer by layer; None when it cannot be (the caller
    loads it whole: hub ids, pickles, folders without safetensors, families with fused layers)."""
    spec = str(spec)
    if spec == "toy":
        from .loader import _toy_path

        model = _open_folder(_toy_path(), prediction_type)
        if model is not None:
            model.source, model.kind = "toy", "toy"
        return model
    path = Path(spec).expanduser()
    if path.is_dir():
        return _open_folder(path, prediction_type)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return _open_single_file(path, prediction_type, config_dir)
    return None


def _meta_denoiser(spec, config: dict):
    import diffusers
    from accelerate import init_empty_weights

    from .single_file import quiet_loading

    with init_empty_weights(), quiet_loading():
        return getattr(diffusers, spec.denoiser_class).from_config(config)


def _meta_text_encoder(class_name: str, folder: Path):
    import transformers
    from accelerate import init_empty_weights

    cls = getattr(transformers, class_name)
    config = cls.config_class.from_pretrained(str(folder), local_files_only=True)
    with init_empty_weights():
        return cls(config)


def _open_single_file(path: Path, prediction_type, config_dir) -> StreamedModel | None:
    from .checkpoint import open_checkpoint
    from .loader import single_file_setup

    ckpt = open_checkpoint(path)
    family, pt, folder = single_file_setup(ckpt, prediction_type, config_dir)
    spec = families.get(family)
    if not spec.streams_weights:
        return None
    config = json.loads(_config_file(folder / spec.denoiser / "config.json").read_text())
    encoders = [_meta_text_encoder(cls, _config_file(folder / sub / "config.json").parent)
                for sub, cls in zip(spec.text_encoders, spec.text_encoder_classes)]
    parts = ModelParts(family, _meta_denoiser(spec, config), encoders, config)
    prefixes = {"unet": ("model.diffusion_model.",),
                **{part: (prefix,) for part, (_, prefix) in zip(spec.te_parts, spec.checkpoint_text_encoders)}}
    file = TensorFile(path)
    files = {part: {k: file for k in file.shapes if k.startswith(p)} for part, p in prefixes.items()}
    return StreamedModel(family, pt, str(path), "single_file", parts, files, _attributes(spec),
                         spec.denoiser_layout(config))


def _config_file(path: Path) -> Path:
    if not path.is_file():
        raise LoraKitError("the config folder lacks this file", path)
    return path


def _attributes(spec) -> dict[str, str]:
    return {"unet": spec.denoiser, **dict(zip(spec.te_parts, spec.text_encoders))}


def _weight_files(folder: Path, name: str) -> list[Path] | None:
    """The safetensors file of a component folder, or its shards; None when it has neither."""
    index = folder / f"{name}.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise LoraKitError(f"not a valid shard index: {e}", index) from e
        return [folder / s for s in shards]
    return [folder / name] if (folder / name).is_file() else None


def _open_folder(path: Path, prediction_type) -> StreamedModel | None:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_text())
    except ValueError:
        return None  # the loader says what is wrong with it
    candidates = families.by_pipeline(index.get("_class_name", ""))
    if not candidates or not all(f.streams_weights for f in candidates):
        return None
    first = candidates[0]  # families sharing a pipeline class share its component names
    present = [n for n in first.text_encoders if isinstance(index.get(n), list) and index[n][0] is not None]
    denoiser = path / first.denoiser
    weights = {first.denoiser: _weight_files(denoiser, "diffusion_pytorch_model.safetensors")}
    weights.update({n: _weight_files(path / n, "model.safetensors") for n in present})
    if any(w is None for w in weights.values()) or not (denoiser / "config.json").is_file():
        return None  # pickles (or nothing): the loader refuses or reads them
    config = json.loads((denoiser / "config.json").read_text())
    unet = _meta_denoiser(first, config)
    encoders = {n: _meta_text_encoder(index[n][1], path / n) for n in present}
    found = families.detect_pipeline(SimpleNamespace(**{first.denoiser: unet}, **encoders), config)
    if found is None or found not in candidates:
        return None
    parts = ModelParts(found.name, unet, [encoders.get(n) for n in found.text_encoders], config)
    files: dict[str, dict[str, TensorFile]] = {}
    for attribute, shards in weights.items():
        part = "unet" if attribute == found.denoiser else found.te_part_of_attribute(attribute)
        for shard in shards:
            f = TensorFile(shard)
            files.setdefault(part, {}).update(dict.fromkeys(f.shapes, f))
    return StreamedModel(found.name, _folder_prediction(path, found, prediction_type), str(path), "diffusers",
                         parts, files, _attributes(found))


def _folder_prediction(path: Path, spec, prediction_type) -> str:
    """As the loader decides it: the argument, else the scheduler config's, else the family default."""
    pt = spec.prediction_types[0]
    config = path / "scheduler" / "scheduler_config.json"
    if config.is_file():
        try:
            pt = json.loads(config.read_text()).get("prediction_type", pt)
        except ValueError:
            pass
    if pt not in spec.prediction_types:
        pt = spec.prediction_types[0]
    return prediction_type or pt
