"""`load_model(spec)`: a diffusers folder, an original-layout single file, a hub id, or "toy".

Prediction type, first that speaks wins: the `prediction_type` argument; what a single file
declares (modelspec metadata, `v_pred` marker); the scheduler config of a diffusers folder or of
`config_dir`; for SD2 files ComfyUI's weight test (768-v vs 512 base); else epsilon. An SD2 file
found to be v-prediction gets the SD 2.1 768 config, an epsilon one the SD 2.1 base config.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch

from .. import families
from ..errors import LoraKitError
from .base import PREDICTION_TYPES, BaseModel, detect_family
from .. import progress
from .single_file import quiet_loading
from .tensor_file import data_bytes

COMPONENTS = ("unet", "text_encoders", "vae")
SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def load_model(spec: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               prediction_type: str | None = None, config_dir: str | os.PathLike | None = None,
               components=COMPONENTS, allow_pickle: bool = False,
               text_encoders: str | os.PathLike | None = None, base_precision: str = "auto") -> BaseModel:
    """Load a Stable Diffusion 1.x / 2.x / XL / 3.x base model.

    `components` picks the parts to load (others are None in the pipeline); `config_dir` overrides
    the shipped diffusers configs for single files; `.ckpt` files need `allow_pickle=True`;
    `text_encoders` is the folder SD3 single files without their text encoders take them from.
    `base_precision` (auto, fp32, bf16, fp16, fp8, int8, nf4) is the format of the denoiser and the
    family's big text encoders (models/base_precision.py); fp8/int8/nf4 compute in `dtype`.
    """
    from . import base_precision as bp
    from .. import quantized

    fmt = bp.parse(base_precision)
    quantized.require(fmt, device)
    prediction_type = _normalise_prediction(prediction_type)
    components = tuple(components)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise LoraKitError(f"unknown component(s) {sorted(unknown)}: choose from {', '.join(COMPONENTS)}")
    spec = str(spec)
    if spec == "toy":
        model = _load_folder(_toy_path(), "toy", dtype, prediction_type, components)
        model.source = "toy"
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            model = _load_folder(path, "diffusers", dtype, prediction_type, components, allow_pickle)
        elif path.is_file():
            model = _load_single_file(path, dtype, prediction_type, config_dir, components, allow_pickle,
                                      text_encoders, fmt)
        elif _looks_like_hub_id(spec):
            model = _load_hub(spec, dtype, prediction_type, components, allow_pickle)
        else:
            raise LoraKitError("no such file or folder (and not a hub id like org/name)", spec)
    bp.apply(model, fmt, dtype, components)  # what the family's loader left in another format
    model.base_precision = fmt
    if torch.device(device).type != "cpu":
        model.pipe.to(device)
    return model


def _normalise_prediction(value: str | None) -> str | None:
    if value is None:
        return None
    aliases = {"v": "v_prediction", "v-prediction": "v_prediction", "eps": "epsilon"}
    value = aliases.get(value.lower(), value.lower())
    if value not in PREDICTION_TYPES:
        raise LoraKitError(f"unknown prediction type {value!r}: choose epsilon or v_prediction")
    return value


def _looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.lower().endswith(SINGLE_FILE_SUFFIXES)


def _toy_path() -> Path:
    try:
        from ..toy import base_path
    except ImportError as e:
        raise LoraKitError("the toy base model is not available in this installation (lorakit.toy)") from e
    return Path(base_path())


def _offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import constants

        return flag or bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return flag


# --- single files ------------------------------------------------------------------------------

def _load_single_file(path: Path, dtype, prediction_type, config_dir, components, allow_pickle,
                      text_encoders=None, base_precision: str = "auto") -> BaseModel:
    from .checkpoint import open_checkpoint

    ckpt = open_checkpoint(path, allow_pickle=allow_pickle)
    family, pt, folder = single_file_setup(ckpt, prediction_type, config_dir)
    spec = families.get(family)
    options = {"text_encoders": Path(text_encoders)} if text_encoders is not None else {}
    with quiet_loading(), progress.loading(path, data_bytes(path)):
        pipe = spec.pipeline_from_checkpoint(ckpt, folder, dtype=dtype, prediction_type=pt, components=components,
                                             base_precision=base_precision, **options)
    config_file = folder / spec.denoiser / "config.json"
    denoiser_config = (json.loads(config_file.read_text()) if "unet" not in components and config_file.is_file()
                       else None)
    return BaseModel(pipe, family, pt, str(path), "single_file", denoiser_config)


def single_file_setup(ckpt, prediction_type: str | None, config_dir) -> tuple[str, str, Path]:
    """An opened single file's family, prediction type and diffusers config folder."""
    from .checkpoint import declared_prediction_type, detect_file_family
    from .single_file import read_index

    family = detect_file_family(ckpt)
    spec = families.get(family)
    folder = Path(config_dir) if config_dir is not None else None
    if folder is not None:
        read_index(folder)  # fails early, naming the folder
    declared = [p for p in (declared_prediction_type(ckpt), _scheduler_prediction(folder)) if p in spec.prediction_types]
    pt = prediction_type or next(iter(declared), None) or spec.guess_prediction_type(ckpt) or spec.prediction_types[0]
    _check_prediction(spec, pt)
    return family, pt, folder or spec.config_dir(pt, ckpt)


def _check_prediction(spec, pt: str) -> None:
    if pt not in spec.prediction_types:
        raise LoraKitError(f"{spec.label} models predict {' or '.join(spec.prediction_types)}, not {pt}")


def _scheduler_prediction(folder: Path | None) -> str | None:
    if folder is None:
        return None
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("prediction_type")
    except ValueError as e:
        raise LoraKitError(f"not valid JSON: {e}", config) from e


# --- diffusers folders and hub ids -------------------------------------------------------------

def _load_folder(path: Path, kind: str, dtype, prediction_type, components, allow_pickle: bool = False) -> BaseModel:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        hint = ""
        if any(path.glob("*.safetensors")):
            hint = " (for a single-file checkpoint give the .safetensors file itself)"
        raise LoraKitError(f"not a diffusers model folder: model_index.json is missing{hint}", path)
    try:
        index = json.loads(index_file.read_text())
    except ValueError as e:
        raise LoraKitError(f"model_index.json is not valid JSON: {e}", index_file) from e
    tokenizers = {t for f in families.by_pipeline(index.get("_class_name", "")) for t in f.tokenizers}
    missing_tokenizers = [t for t in sorted(tokenizers) if t in index and not (path / t).is_dir()]
    pickled = _pickled_parts(path, index, components)
    if pickled:
        from ..formats.st_io import refuse_pickle

        refuse_pickle(pickled[0], allow_pickle)
    # safetensors only, unless the folder holds pickles and the user allowed them (then read weights_only)
    pipe = _from_pretrained(str(path), index, dtype, components, local_only=True, skip=missing_tokenizers,
                            use_safetensors=not pickled)
    return _finish(pipe, str(path), kind, prediction_type, missing_tokenizers, local_only=True)


def _load_hub(repo_id: str, dtype, prediction_type, components, allow_pickle: bool = False) -> BaseModel:
    from diffusers import DiffusionPipeline

    offline = _offline()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hub-client deprecation chatter from inside diffusers
            index = DiffusionPipeline.load_config(repo_id, local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        if offline:
            raise LoraKitError("a hub id that is not in the local Hugging Face cache, and HF_HUB_OFFLINE is "
                               "set: download it once with a network, or give a local folder or file",
                               repo_id) from e
        raise LoraKitError(f"cannot fetch from the Hugging Face hub: {e}", repo_id) from e
    try:
        pipe = _from_pretrained(repo_id, dict(index), dtype, components, local_only=offline,
                                use_safetensors=None if allow_pickle else True)
    except LoraKitError:
        raise
    except Exception as e:  # noqa: BLE001
        where = "the local cache is incomplete and HF_HUB_OFFLINE is set" if offline else str(e)
        raise LoraKitError(f"cannot load the hub model: {where}", repo_id) from e
    return _finish(pipe, repo_id, "hub", prediction_type, [], local_only=offline)


def _pickled_parts(path: Path, index: dict, components) -> list[Path]:
    """The weight files of component folders that hold pickles (.bin/.ckpt/.pt) and no safetensors."""
    from ..pickles import PICKLE_SUFFIXES

    fams = families.by_pipeline(index.get("_class_name", ""))
    wanted = {"unet": {f.denoiser for f in fams}, "vae": {"vae"},
              "text_encoders": {t for f in fams for t in f.text_encoders}}
    found = []
    for part in sorted(name for c in components for name in wanted[c] if name in index):
        folder = path / part
        files = [f for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
        if not any(f.suffix == ".safetensors" for f in files):
            found += sorted(f for f in files if f.suffix.lower() in PICKLE_SUFFIXES)
    return found


def _from_pretrained(source: str, index: dict, dtype, components, *, local_only: bool, skip=(),
                     use_safetensors: bool | None = True):
    import diffusers

    class_name = index.get("_class_name", "")
    candidates = families.by_pipeline(class_name)
    if not candidates:
        raise LoraKitError(f"unsupported pipeline {class_name!r}: only {', '.join(families.pipeline_classes())} "
                           "are supported", source)
    spec = candidates[0]  # families sharing a pipeline class share its component names
    kwargs: dict = {name: None for name in skip}
    if "unet" not in components:
        kwargs[spec.denoiser] = None
    if "vae" not in components:
        kwargs["vae"] = None
    if "text_encoders" not in components:
        kwargs.update({n: None for n in spec.text_encoders if n in index})
    kwargs.update(spec.pipeline_kwargs)
    folder = Path(source) if Path(source).is_dir() and use_safetensors else None
    parts = _weight_parts(folder, index, kwargs) if folder is not None else {}
    cls = getattr(diffusers, class_name)
    try:
        with quiet_loading(), progress.loading(source, sum(data_bytes(f) for fs in parts.values() for f in fs)):
            if spec.denoiser in parts and dtype in (torch.bfloat16, torch.float16):
                from .streamed import load_denoiser

                progress.begin(spec.denoiser)  # cast while reading: no full fp32 copy of the denoiser in memory
                denoiser = load_denoiser(folder / spec.denoiser, str(index[spec.denoiser][1]), dtype)
                if denoiser is not None:
                    kwargs[spec.denoiser] = denoiser
            for name, files in parts.items():
                if name not in kwargs:
                    kwargs[name] = _load_part(folder, name, index[name], dtype, files)
            return cls.from_pretrained(source, torch_dtype=dtype, local_files_only=local_only,
                                       use_safetensors=use_safetensors, **kwargs)
    except LoraKitError:
        raise
    except Exception as e:  # noqa: BLE001 - missing or corrupt weight files come in many error types
        if not local_only or Path(source).is_dir():
            raise LoraKitError(f"cannot load the diffusers model: {e}", source) from e
        raise


def _weight_parts(folder: Path, index: dict, given: dict) -> dict[str, list[Path]]:
    """{component: its safetensors files} of the folder's weight components still to load."""
    from .streamed import _weight_files

    parts = {}
    for name, entry in index.items():
        if name in given or not (isinstance(entry, list) and len(entry) == 2 and entry[0] in _LIBRARIES):
            continue
        files = _weight_files(folder / name) or _weight_files(folder / name, "model.safetensors")
        if files:
            parts[name] = files
    return parts


_LIBRARIES = ("diffusers", "transformers")


def _load_part(folder: Path, name: str, entry: list, dtype, files: list[Path]):
    """One component by its own class, as the pipeline's loader would, but each alone: the load's
    progress names it and counts its bytes (the library reads the files whole, so the count comes
    when it is in)."""
    import importlib

    library, class_name = entry
    progress.begin(name)
    model = getattr(importlib.import_module(library), class_name).from_pretrained(
        str(folder / name), dtype=dtype, local_files_only=True, use_safetensors=True)
    progress.read(sum(data_bytes(f) for f in files))
    return model


def _denoiser_config(pipe, source: str, local_only: bool) -> dict | None:
    """The denoiser config of a folder or hub model whose denoiser was not loaded (for its family)."""
    import diffusers

    candidates = families.by_pipeline(type(pipe).__name__)
    if not candidates or getattr(pipe, candidates[0].denoiser, None) is not None:
        return None
    spec = candidates[0]
    try:
        return dict(getattr(diffusers, spec.denoiser_class).load_config(source, subfolder=spec.denoiser,
                                                                        local_files_only=local_only))
    except Exception:  # noqa: BLE001 - then the family comes from the text encoders
        return None


def _finish(pipe, source: str, kind: str, prediction_type, missing_tokenizers, *, local_only: bool) -> BaseModel:
    from .tokenizer import clip_tokenizer

    denoiser_config = _denoiser_config(pipe, source, local_only)
    family = detect_family(pipe, denoiser_config)
    spec = families.get(family)
    for name in missing_tokenizers:  # folders saved without tokenizers get the shipped CLIP BPE one
        pad = spec.tokenizer_pads[spec.tokenizers.index(name)]
        if pad is not None:
            pipe.register_modules(**{name: clip_tokenizer(pad)})
    for te, tok in zip(spec.text_encoders, spec.tokenizers):
        if getattr(pipe, te, None) is not None and getattr(pipe, tok, None) is None:
            raise LoraKitError(f"the model has {te} but no {tok}, and lorakit ships no tokenizer for it (T5's "
                               f"cannot ship): copy {tok} from the model's download", source)
    scheduler_pt = getattr(getattr(pipe, "scheduler", None), "config", {}).get("prediction_type",
                                                                              spec.prediction_types[0])
    if scheduler_pt not in spec.prediction_types:
        scheduler_pt = spec.prediction_types[0]
    pt = prediction_type or scheduler_pt
    _check_prediction(spec, pt)
    if pt != scheduler_pt and pipe.scheduler is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=pt)
    return BaseModel(pipe, family, pt, source, kind, denoiser_config)
