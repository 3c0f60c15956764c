"""A model's parts built on the meta device from their configs: every shape, no weight read.

The memory plan needs each part's parameters, which Linear layers a base format quantizes and the
denoiser's config; all of it is in the configs (a diffusers folder's own, a single file's shipped
or `--config-dir` folder, found from the file's header) and none of it needs the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from .. import families
from ..errors import LoraKitError


@dataclass
class Sketch:
    family: families.Family
    kind: str  # folder, single_file or toy
    denoiser: nn.Module  # on the meta device
    denoiser_config: dict
    text_encoders: dict[str, nn.Module] = field(default_factory=dict)  # pipeline attribute → meta module
    vae: nn.Module | None = None
    vae_config: dict | None = None
    prediction_type: str = "epsilon"

    @property
    def vae_scale(self) -> int:
        """Pixels per latent pixel: 2 ** (VAE levels - 1); 8 when the VAE is not known."""
        if not self.vae_config:
            return 8
        return 2 ** (len(self.vae_config["block_out_channels"]) - 1)


def sketch(spec: str, *, config_dir=None, text_encoders=None, allow_pickle: bool = False,
           prediction_type: str | None = None) -> Sketch:
    """The parts of the model `spec` names (a diffusers folder, a single file, or toy) on meta."""
    from .loader import _looks_like_hub_id, _toy_path

    spec = str(spec)
    if spec == "toy":
        return _from_folder(_toy_path(), "toy", prediction_type)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path, "folder", prediction_type)
    if path.is_file():
        return _from_file(path, config_dir, text_encoders, allow_pickle, prediction_type)
    if _looks_like_hub_id(spec):
        raise LoraKitError("the memory plan reads a local folder or file; download the hub model first", spec)
    raise LoraKitError("no such file or folder (and not a hub id like org/name)", spec)


def _from_folder(path: Path, kind: str, prediction_type: str | None) -> Sketch:
    from .single_file import read_index

    index = read_index(path)
    return _build(path, index, kind, prediction_type, {})


def _from_file(path: Path, config_dir, text_encoders, allow_pickle: bool, prediction_type) -> Sketch:
    from .checkpoint import open_checkpoint
    from .loader import single_file_setup
    from .single_file import read_index

    ckpt = open_checkpoint(path, allow_pickle=allow_pickle)
    _, pt, folder = single_file_setup(ckpt, prediction_type, config_dir)
    # the text encoders a single file lacks come from --text-encoders: their configs then too
    encoder_dir = Path(text_encoders) if text_encoders is not None else None
    return _build(folder, read_index(folder), "single_file", pt, {"encoders": encoder_dir})


def _build(folder: Path, index: dict, kind: str, prediction_type: str | None, elsewhere: dict) -> Sketch:
    parts: dict[str, nn.Module] = {}
    configs: dict[str, dict] = {}
    for name, entry in index.items():
        if not (isinstance(entry, list) and len(entry) == 2) or name.startswith(("tokenizer", "scheduler",
                                                                                  "feature_extractor",
                                                                                  "safety_checker", "image_encoder")):
            continue
        where, other = folder, elsewhere.get("encoders")
        # the parts a single file lacks come from --text-encoders (the text encoders; Flux's VAE too)
        if other is not None and (other / name / "config.json").is_file() and (
                name.startswith("text_encoder") or not (folder / name / "config.json").is_file()):
            where = other
        config_file = where / name / "config.json"
        if not config_file.is_file():
            continue
        configs[name] = json.loads(config_file.read_text())
        parts[name] = _meta_module(entry[0], entry[1], where / name, configs[name])
    denoiser_name = next((n for n in ("transformer", "unet") if n in parts), None)
    if denoiser_name is None:
        raise LoraKitError("no denoiser (unet or transformer) config in the model folder", folder)
    ns = SimpleNamespace(**parts)
    # the pipeline class names the family, or the families sharing it (SD 1.x and 2.x): their evidence decides
    among = families.by_pipeline(str(index.get("_class_name", "")))
    if len(among) == 1:
        family = among[0]
    elif among:
        family = max(among, key=lambda f: f.pipeline_evidence(ns, configs[denoiser_name]))
    else:
        family = families.detect_pipeline(ns, configs[denoiser_name])
    if family is None:
        raise LoraKitError("a model of no known family", folder)
    pt = prediction_type or _scheduler_prediction(folder) or family.prediction_types[0]
    if pt not in family.prediction_types:
        pt = family.prediction_types[0]
    encoders = {n: parts[n] for n in family.text_encoders if n in parts}
    return Sketch(family, kind, parts[family.denoiser], configs[family.denoiser], encoders, parts.get("vae"),
                  configs.get("vae"), pt)


def _scheduler_prediction(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("prediction_type")


def _meta_module(library: str, class_name: str, folder: Path, config: dict) -> nn.Module:
    """One part built from its config on the meta device (diffusers' or transformers' class)."""
    try:
        if library == "diffusers":
            import diffusers

            cls = getattr(diffusers, class_name)
            with torch.device("meta"):
                return cls.from_config(config)
        import transformers

        cls = getattr(transformers, class_name)
        cfg = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            return cls(cfg)
    except (AttributeError, OSError, ValueError, TypeError) as e:
        raise LoraKitError(f"cannot build {class_name} from its config: {e}", folder / "config.json") from None
