"""diffusers' `load_lora_weights`, asked directly: the file is loaded into a weightless (meta
device) pipeline of the family, built from the model's own configs, and the layers that received
an adapter, with PEFT's scaling on each, are what diffusers applies.

Source: the installed diffusers (its loaders/lora_pipeline.py, loaders/lora_conversion_utils.py
and peft's injection), whatever version that is; `source()` names it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging

from .filekeys import SUFFIXES, FileKeys, split_key
from .meaning import kohya_name
from .outcome import Outcome, kohya_groups
from .universe import Universe, meta_copy

NAME = "diffusers"


def source() -> str:
    import diffusers
    import peft

    return f"diffusers {diffusers.__version__} (installed) load_lora_weights, peft {peft.__version__}"


def runs(spec) -> bool:
    return True


_ADAPTER = "lorakit_check"


def adapted(u: Universe, path: str) -> tuple[dict[tuple[str, str], float], str | None]:
    """{(part, live path): PEFT scaling} of the layers diffusers attaches the file to, and the
    error diffusers raised (None when it loaded)."""
    import diffusers
    from diffusers.utils import logging as dlog

    spec = u.spec
    components = meta_copy(u)
    pipe_cls = getattr(diffusers, spec.pipeline_class)
    params = [p for p in inspect.signature(pipe_cls.__init__).parameters if p != "self"]
    options = {p: components.get(p) for p in params if p in components or p not in spec.pipeline_kwargs}
    options.update(spec.pipeline_kwargs)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pipe = pipe_cls(**{k: v for k, v in options.items() if k in params})  # the rest None: not touched
    part_of = {spec.denoiser: "unet", **dict(zip(spec.text_encoders, spec.te_parts))}
    error = None
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            pipe.load_lora_weights(str(path), adapter_name=_ADAPTER)
    except Exception as exc:  # diffusers' refusal is the answer, whatever its type
        error = _one_line(exc, spec.label)
    finally:
        dlog.set_verbosity(level)
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
    found = {}
    for attribute, model in components.items():
        for name, module in model.named_modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict) and _ADAPTER in scaling:
                found[(part_of[attribute], name)] = float(scaling[_ADAPTER])
    return found, error


def _one_line(exc: Exception, label: str) -> str:
    text = " ".join(str(exc).split())
    if "size mismatch for " in text:  # the file's widths are another model's
        first = text.split("size mismatch for ", 2)[1].split(" size mismatch")[0]
        return f"tensor shapes do not fit the {label} model (size mismatch for {first})"[:300]
    return f"{type(exc).__name__}: {text}"[:300]


def converted(u: Universe, path) -> dict[tuple[str, str], dict]:
    """{(part, module path): {"down": A, "up": B}} as diffusers' own `lora_state_dict` converts the
    file: some converters fold alpha / rank into the weights (sd-scripts' Flux files), so the
    strength diffusers applies is PEFT's scaling times what the factors themselves carry."""
    import diffusers
    from diffusers.utils import logging as dlog

    spec = u.spec
    heads = {spec.denoiser: "unet", **dict(zip(spec.text_encoders, spec.te_parts))}
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = getattr(diffusers, spec.pipeline_class).lora_state_dict(str(path))
    except Exception:  # the load itself reports why
        return {}
    finally:
        dlog.set_verbosity(level)
    state = state[0] if isinstance(state, tuple) else state
    out: dict[tuple[str, str], dict] = {}
    for key, t in state.items():
        stem, suffix = split_key(key)
        role = SUFFIXES.get(suffix)
        head, _, rest = stem.partition(".")
        if role in ("down", "up") and head in heads:
            out.setdefault((heads[head], _plain(rest)), {})[role] = t
    return out


def _plain(path: str) -> str:
    return path[len("text_model."):] if path.startswith("text_model.") else path


def _norm(up, down) -> float:
    """‖up · down‖ (Frobenius) without forming the product: sum((upᵀup) ∘ (down downᵀ))."""
    up, down = up.float().flatten(1), down.float().flatten(1)
    return float(((up.T @ up) * (down @ down.T)).sum().clamp(min=0).sqrt())


def _effective(fk: FileKeys, keys: dict, layers, found: dict, factors: dict) -> float | None:
    """The strength diffusers applies a module at: its pieces' PEFT scaling times the norm of the
    factors it loaded, over the norm of the file's own product."""
    down = next((keys[s] for s in keys if SUFFIXES.get(s) == "down"), None)
    up = next((keys[s] for s in keys if SUFFIXES.get(s) == "up"), None)
    pieces = [factors.get((part, _plain(path))) for part, path in layers]
    if down is None or up is None or any(p is None or len(p) < 2 for p in pieces):
        return None
    mine = _norm(fk.tensor(up), fk.tensor(down))
    if mine == 0:
        return None
    total = sum((found[layer] * _norm(p["up"], p["down"])) ** 2 for layer, p in zip(layers, pieces))
    return total ** 0.5 / mine


def load(fk: FileKeys, u: Universe) -> Outcome:
    out = Outcome()
    found, error = adapted(u, fk.path)
    groups = kohya_groups(u)
    if error and not found:
        out.refused = error
        return out
    if error:
        out.notes.append(error)
    factors = converted(u, fk.path)
    for stem, keys in fk.stems().items():
        name = kohya_name(stem, keys, u.family)
        layers = groups.get(name) if name else None
        if layers and all(layer in found for layer in layers):
            effective = _effective(fk, keys, layers, found, factors)
            out.applied[stem] = found[layers[0]] if effective is None else effective
        else:
            why = "diffusers attaches no adapter to this layer" if layers else \
                f"not a layer of {u.spec.label} models under any name lorakit knows"
            out.skip(keys.values(), why)
    return out
