"""`inspect_lora`: everything a user asks about a LoRA file, as one JSON-able dict."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from .hashes import file_hashes
from .lorafile import load_lora
from .metadata import HASH_KEYS
from .modules import algo_of, is_conv_kxk
from .st_io import PICKLE_SUFFIXES


def _summary(values) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"min": None, "max": None, "values": []}
    return {"min": min(vals), "max": max(vals), "values": sorted(set(vals))}


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def inspect_lora(path: str | os.PathLike, family: str | None = None, *, allow_pickle: bool = False) -> dict:
    """Family, format, module counts per part and per kind, ranks/alphas, conv modules, dtype,
    size, metadata, and the sshs hashes: stored, recomputed from the file, and whether they match."""
    lf = load_lora(path, family, allow_pickle=allow_pickle)
    p = Path(path)
    kinds = Counter(algo_of(t) + ("+dora" if "dora_scale" in t else "") for t in lf.modules.values())
    conv = [n for n, t in lf.modules.items() if is_conv_kxk(t)]
    stored = {k: lf.metadata[k] for k in HASH_KEYS if k in lf.metadata}
    computed = file_hashes(p) if p.is_file() and p.suffix.lower() not in PICKLE_SUFFIXES else {}
    match = {k: computed.get(k) == v for k, v in stored.items()} if stored and computed else {}
    dtype = lf.dtype
    try:
        args = json.loads(lf.metadata.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        args = {}
    args = args if isinstance(args, dict) else {}
    return {
        "path": str(p),
        "format": lf.format,
        "family": lf.family,
        "candidates": list(lf.candidates),  # several when the file fits them alike and cannot tell
        "modules": len(lf.modules),
        "parts": lf.parts(),
        "kinds": dict(kinds),
        # what trained it, as the metadata says: the algorithm and its options (kinds: what the tensors are)
        "network": {"algo": args.get("algo", "lora" if lf.metadata.get("ss_network_module") else None),
                    "args": {k: v for k, v in args.items() if k != "algo"}},
        "ranks": _summary(lf.ranks().values()),
        "alphas": _summary(lf.alphas().values()),
        "conv_modules": len(conv),
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "file_size": _size(p),
        "metadata": dict(lf.metadata),
        "hashes": {"stored": stored, "computed": computed, "match": match,
                   "all_match": all(match.values()) if match else None},
    }
