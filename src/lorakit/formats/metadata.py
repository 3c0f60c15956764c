"""The metadata A1111, ComfyUI and Civitai read from a LoRA: kohya's `ss_*` keys and SAI's
`modelspec.*` keys (kohya-ss/sd-scripts `library/sai_model_spec.py`). All values are strings."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any, Mapping

from .. import families
from .modules import Modules, algo_of, alpha_of, is_conv_kxk, is_lycoris, most_common, rank_of

SPEC_VERSION = "1.0.0"
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")
_DERIVED_ARGS = ("conv_dim", "conv_alpha", "algo", "use_tucker", "dora_wd")


def _num(x: float) -> str:
    return str(float(x))


def _is_v(md: Mapping[str, str]) -> bool:
    return (md.get("ss_base_model_version") == "sd_v2_v" or md.get("modelspec.prediction_type") == "v"
            or md.get("ss_v_parameterization") == "True")


def network_fields(modules: Modules, args: Mapping[str, Any] | None = None) -> dict[str, str]:
    """ss_network_module/dim/alpha/args as they describe these modules (kohya's conventions:
    dim an integer, alpha a float, args a JSON object of strings; kxk convs as conv_dim/conv_alpha)."""
    lin = [t for t in modules.values() if not is_conv_kxk(t)] or list(modules.values())
    conv = [t for t in modules.values() if is_conv_kxk(t)]
    rank = most_common(rank_of(t) for t in lin)
    alpha = most_common(alpha_of(t) if alpha_of(t) is not None else rank_of(t) for t in lin)
    out_args = {k: str(v) for k, v in (args or {}).items() if k not in _DERIVED_ARGS}
    if conv:
        conv_rank = most_common(rank_of(t) for t in conv)
        out_args["conv_dim"] = str(conv_rank)
        out_args["conv_alpha"] = _num(most_common(alpha_of(t) if alpha_of(t) is not None else rank_of(t)
                                                  for t in conv) or conv_rank or 1)
    lyco = any(is_lycoris(t) for t in modules.values())
    if lyco:
        algos = {algo_of(t) for t in modules.values()}
        algo = next((a for a in ("loha", "lokr", "full", "oft") if a in algos), "locon")
        out_args["algo"] = {"oft": "diag-oft"}.get(algo, algo)  # LyCORIS' names
        if "locon" in algos or any("hada_t1" in t or "lokr_t2" in t for t in modules.values()):
            out_args["use_tucker"] = "True"
        if any("dora_scale" in t for t in modules.values()):
            out_args["dora_wd"] = "True"
    fields = {"ss_network_module": "lycoris.kohya" if lyco else "networks.lora",
              "ss_network_args": json.dumps(out_args)}
    if len({rank_of(t) for t in lin}) > 1:  # per-module ranks: kohya's resize_lora.py --dynamic_method writes this
        fields["ss_network_dim"] = fields["ss_network_alpha"] = "Dynamic"
        return fields
    if rank is not None:
        fields["ss_network_dim"] = str(rank)
    if alpha is not None:
        fields["ss_network_alpha"] = _num(alpha)
    return fields


def _string(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)


def build_metadata(modules: Modules, *, family: str | None = None, v_prediction: bool | None = None,
                   base: Mapping[str, str] | None = None, output_name: str | None = None,
                   title: str | None = None, comment: str | None = None,
                   tag_frequency: Mapping[str, Mapping[str, int]] | None = None,
                   training: Mapping[str, Any] | None = None, network_args: Mapping[str, Any] | None = None,
                   resolution: int | tuple[int, int] | None = None, timestamp: float | None = None,
                   author: str | None = None, description: str | None = None, license: str | None = None,
                   tags: str | None = None, trigger_phrase: str | None = None, clip_skip: int | None = None,
                   merged_from: str | None = None) -> dict[str, str]:
    """Full kohya + modelspec metadata for these modules.

    `base` (e.g. the metadata of the file a LoRA came from) is kept, except that the fields
    that describe the tensors (network dim/alpha/module/args, base model, architecture) are
    recomputed and the sshs hashes dropped (save_lora computes them). `training` adds `ss_*`
    hyperparameters (`learning_rate` → `ss_learning_rate`).
    """
    md = {k: str(v) for k, v in (base or {}).items() if k not in HASH_KEYS}
    base_args = {}
    try:
        base_args = json.loads(md.get("ss_network_args") or "{}") or {}
    except json.JSONDecodeError:
        pass
    md.update(network_fields(modules, {**base_args, **(network_args or {})}))
    v = _is_v(md) if v_prediction is None else v_prediction
    if family is not None:
        spec = families.get(family)
        md.update(spec.lora_metadata(v, previous=md))
        if resolution is None and "modelspec.resolution" not in md:
            resolution = spec.resolution(v)
    if resolution is not None:
        w, h = (resolution, resolution) if isinstance(resolution, int) else resolution
        md["modelspec.resolution"] = f"{w}x{h}"
    ts = time.time() if timestamp is None else timestamp
    if output_name is not None:
        md["ss_output_name"] = output_name
    if comment is not None or "ss_training_comment" not in md:
        md["ss_training_comment"] = str(comment)
    if tag_frequency is not None or "ss_tag_frequency" not in md:
        md["ss_tag_frequency"] = json.dumps(tag_frequency or {})
    for key, value in (training or {}).items():
        md[key if key.startswith("ss_") else f"ss_{key}"] = _string(value)
    md["modelspec.sai_model_spec"] = md.get("modelspec.sai_model_spec", SPEC_VERSION)
    md["modelspec.prediction_type"] = "v" if v else "epsilon"
    if title is not None or md.get("modelspec.title", "LoRA@").startswith("LoRA@"):
        md["modelspec.title"] = title or md.get("ss_output_name") or md.get("modelspec.title") or f"LoRA@{ts}"
    if "modelspec.date" not in md or timestamp is not None:
        md["modelspec.date"] = datetime.datetime.fromtimestamp(int(ts)).isoformat()
    extras = {"author": author, "description": description, "license": license, "tags": tags,
              "trigger_phrase": trigger_phrase, "merged_from": merged_from,
              "encoder_layer": None if clip_skip is None else str(clip_skip)}
    md.update({f"modelspec.{k}": str(v) for k, v in extras.items() if v is not None})
    return dict(sorted(md.items()))
