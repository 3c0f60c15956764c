"""The TOML dataset config (kohya's layout): `[general]`, `[[datasets]]`, `[[datasets.subsets]]`.

Options cascade general → dataset → subset. Example:

    [general]
    shuffle_caption = true
    keep_tokens = 1
    [[datasets]]
    resolution = 512
    batch_size = 2
      [[datasets.subsets]]
      image_dir = "photos"
      num_repeats = 10
      class_tokens = "sks dog"
      [[datasets.subsets]]
      image_dir = "dogs"
      is_reg = true

A bare `[[subsets]]` list (no datasets level) is accepted too. Relative paths are relative to
the TOML file.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import LoraKitError
from .folders import Subset

# kohya spelling → Subset field
_SUBSET_KEYS = {
    "image_dir": "dir", "num_repeats": "repeats", "class_tokens": "class_tokens",
    "caption_extension": "caption_ext", "keep_tokens": "keep_tokens", "shuffle_caption": "shuffle_caption",
    "caption_dropout_rate": "caption_dropout", "flip_aug": "flip", "is_reg": "is_reg", "name": "name",
    "caption_tag_dropout_rate": "caption_tag_dropout",
}
_SUBSET_KEYS.update({f.name: f.name for f in fields(Subset)})
_DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "bucket_reso_steps", "min_bucket_reso",
                 "max_bucket_reso", "bucket_no_upscale"}


@dataclass
class DatasetConfig:
    subsets: list[Subset]
    options: dict  # dataset-level settings that override the training config (resolution, batch_size…)


def load_dataset_config(path: Path, defaults: Subset | None = None) -> DatasetConfig:
    """Subsets of the file; options it leaves out come from `defaults` (the training config's)."""
    path = Path(path)
    base = {} if defaults is None else {f.name: getattr(defaults, f.name) for f in fields(Subset)
                                        if f.name not in ("dir", "name")}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LoraKitError(f"cannot read dataset config ({exc})", path) from None
    general = doc.get("general", {})
    datasets = doc.get("datasets")
    if datasets is None:
        datasets = [{"subsets": doc.get("subsets", [])}]
    elif isinstance(datasets, dict):  # `[[datasets.subsets]]` with no `[[datasets]]` above it: one dataset
        datasets = [datasets]
    if not (isinstance(datasets, list) and all(isinstance(ds, dict) for ds in datasets)
            and all(isinstance(ds.get("subsets", []), list) for ds in datasets)):
        raise LoraKitError("'datasets' must be [[datasets]] tables, each with [[datasets.subsets]] tables", path)
    unknown = set(doc) - {"general", "datasets", "subsets"}
    if unknown:
        raise LoraKitError(f"unknown table(s) {sorted(unknown)} (expected general, datasets, subsets)", path)
    subsets, options = [], {}
    for ds in datasets:
        ds_opts = {k: v for k, v in {**general, **ds}.items() if k in _DATASET_KEYS}
        if "resolution" in ds_opts:
            ds_opts["resolution"] = _resolution(path, ds_opts["resolution"])
        for k, v in ds_opts.items():
            if k in options and options[k] != v:
                raise LoraKitError(f"datasets disagree on {k} ({options[k]} vs {v}); one value is trained", path)
            options[k] = v
        inherited = {k: v for k, v in {**general, **ds}.items() if k not in _DATASET_KEYS and k != "subsets"}
        for raw in ds.get("subsets", []):
            subsets.append(_subset(path, {**base, **inherited, **raw}))
    if not subsets:
        raise LoraKitError("dataset config lists no subsets", path)
    return DatasetConfig(subsets, options)


def _resolution(path: Path, value) -> int:
    """`resolution = 512` or sd-scripts' `[w, h]`; lorakit trains a square pixel budget, so the sides must agree."""
    if isinstance(value, list):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise LoraKitError(f"resolution {value}: expected N or [width, height]", path)
        if value[0] != value[1]:
            raise LoraKitError(f"resolution {value}: lorakit trains a square pixel budget (buckets keep each image's "
                               "shape): give one number", path)
        return value[0]
    return value


def _subset(path: Path, raw: dict) -> Subset:
    kwargs = {}
    for key, value in raw.items():
        name = _SUBSET_KEYS.get(key)
        if name is None:
            raise LoraKitError(f"unknown subset option {key!r}", path)
        kwargs[name] = value
    if "dir" not in kwargs:
        raise LoraKitError("a subset has no image_dir", path)
    d = Path(kwargs["dir"]).expanduser()
    kwargs["dir"] = d if d.is_absolute() else (path.parent / d)
    return Subset(**kwargs)
