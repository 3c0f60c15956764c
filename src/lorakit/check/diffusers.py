"""diffusers' `load_lora_weights`, asked directly: the file is loaded into a weightless (meta
device) pipeline of the family, built from the model's own configs, and the layers that received
an adapter, with PEFT's scaling on each, are what diffusers applies.

Source: the installed diffusers (its loaders/lora_pipeline.py, loaders/lora_conversion_utils.py
and peft's injection), whatever version that is; `SOURCE` names it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging

from .filekeys import FileKeys
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


def load(fk: FileKeys, u: Universe) -> Outcome:
    out = Outcome()
    found, error = adapted(u, fk.path)
    groups = kohya_groups(u)
    if error and not found:
        out.refused = error
        return out
    if error:
        out.notes.append(error)
    for stem, keys in fk.stems().items():
        name = kohya_name(stem, keys, u.family)
        layers = groups.get(name) if name else None
        if layers and all(layer in found for layer in layers):
            out.applied[stem] = found[layers[0]]
        else:
            why = "diffusers attaches no adapter to this layer" if layers else \
                f"not a layer of {u.spec.label} models under any name lorakit knows"
            out.skip(keys.values(), why)
    return out
