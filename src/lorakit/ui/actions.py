"""What each UI button does, as plain functions over the library (testable without a browser).

Each returns values for gradio outputs and raises LoraKitError on bad input; the app turns
that into a gradio error message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import LoraKitError
from ..formats.st_io import one_line

_MODELS: dict[tuple, object] = {}
# the server's pickle policy, set once by `lorakit ui [--allow-pickle]`: it holds for every action
_POLICY = {"allow_pickle": False}


def set_allow_pickle(allow: bool) -> None:
    _POLICY["allow_pickle"] = bool(allow)


def allow_pickle() -> bool:
    return _POLICY["allow_pickle"]


def cached_model(spec: str, device: str = "auto"):
    """Keep the last base model loaded: switching LoRAs must not reload GBs of weights."""
    from ..devices import load_model_for_inference

    spec = (spec or "").strip()
    if not spec:
        raise LoraKitError("choose a base model (a folder, a .safetensors file, a hub id or 'toy')")
    key = (spec, device, allow_pickle())
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model_for_inference(spec, device, "auto", allow_pickle=allow_pickle())
    return _MODELS[key]


def parse_lora_lines(text: str) -> list:
    """One `FILE[:WEIGHT]` per line (or comma-separated)."""
    from ..generate import parse_lora_arg

    items = [x.strip() for line in (text or "").splitlines() for x in line.split(",")]
    return [parse_lora_arg(x) for x in items if x]


def generate_images(model: str, prompt: str, negative: str, loras: str, n: int, steps: int, guidance: float,
                    seed: int, width: int, height: int, sampler: str, lora_dir: str = "",
                    out_dir: str = "outputs") -> tuple[list, str]:
    from ..generate import generate, write_outputs

    base = cached_model(model)
    result = generate(base, prompt, negative=negative, loras=parse_lora_lines(loras), n=int(n), steps=int(steps),
                      guidance=float(guidance), seed=int(seed), width=int(width) or None,
                      height=int(height) or None, sampler=sampler, lora_dir=Path(lora_dir) if lora_dir else None,
                      allow_pickle=allow_pickle())
    if out_dir:
        write_outputs(result, Path(out_dir))
    return result.images, result.infotexts[0]


def evaluate_sweep(model: str, loras: str, prompts: str, trigger: str, strengths: str, n: int, steps: int,
                   guidance: float, seed: int, sampler: str = "euler_a", out: str = "") -> tuple:
    """The strength sweep of `lorakit evaluate`: its table (markdown) and its labelled grid."""
    from ..evaluation.run import evaluate
    from ..generate import save_png

    specs = parse_lora_lines(loras)
    try:
        levels = [float(x) for x in (strengths or "").split(",") if x.strip()]
    except ValueError:
        raise LoraKitError(f"strengths must be numbers separated by commas (got {strengths!r})") from None
    report = evaluate(cached_model(model), specs, (prompts or "").splitlines(), strengths=levels or (0, 0.5, 1),
                      trigger=(trigger or "").strip() or None, n=int(n), seed=int(seed), steps=int(steps),
                      guidance=float(guidance), sampler=sampler, allow_pickle=allow_pickle())
    grid = report.grid()
    if (out or "").strip():
        save_png(grid, Path(out.strip()))
    return report.table(), grid


def inspect_file(path: str) -> str:
    from ..formats import inspect_lora

    return json.dumps(inspect_lora(_existing(path), allow_pickle=allow_pickle()), indent=2, default=str)


def convert_file(path: str, to: str, out: str) -> str:
    from ..formats import load_lora, save_lora

    lf = load_lora(_existing(path), allow_pickle=allow_pickle())
    save_lora(_out(out), lf.modules, lf.metadata, format=to, family=lf.family)
    return f"wrote {out}"


def resize_file(path: str, rank: int, dynamic: str, out: str) -> str:
    from ..ops.algebra import resize

    result = resize(_existing(path), rank=int(rank) if rank else None, dynamic=dynamic or None, out=_out(out),
                    allow_pickle=allow_pickle())
    ranks = sorted(set(result.ranks().values()))
    return f"wrote {out}: {len(result.modules)} modules, ranks {ranks[0]}–{ranks[-1]}"


def merge_files(loras: str, rank: int, model: str, out: str) -> str:
    specs = parse_lora_lines(loras)
    if not specs:
        raise LoraKitError("give at least one LoRA (FILE[:WEIGHT] per line)")
    if model.strip():
        from ..ops.checkpoint_merge import merge_into_checkpoint

        merge_into_checkpoint(model.strip(), [f"{s.path}:{s.weight}" for s in specs], Path(_out(out)),
                              allow_pickle=allow_pickle())
        return f"wrote checkpoint {out}"
    from ..ops.algebra import merge_loras

    result = merge_loras([(s.path, s.weight) for s in specs], rank=int(rank) if rank else None, out=_out(out),
                         allow_pickle=allow_pickle())
    return f"wrote {out}: {len(result.modules)} modules"


def extract_file(base: str, tuned: str, rank: int, conv_rank: int, out: str) -> str:
    from ..ops.extract import extract

    ex = extract(base.strip(), tuned.strip(), rank=int(rank), conv_rank=int(conv_rank) or None, out=_out(out),
                 allow_pickle=allow_pickle())
    return f"wrote {out}\n" + "\n".join(f"{k}: {v}" for k, v in getattr(ex, "reports", {}).items())


def caption_dir(folder: str, prefix: str, overwrite: bool, model: str) -> str:
    from ..caption import caption_folder

    written = caption_folder(Path(folder), prefix=prefix, overwrite=overwrite, model=model, progress=True)
    return f"{len(written)} caption(s) written"


def _existing(path: str) -> str:
    path = (path or "").strip()
    if not path:
        raise LoraKitError("choose a file")
    if not Path(path).exists():
        raise LoraKitError("file not found", path)
    return path


def _out(path: str) -> str:
    path = (path or "").strip()
    if not path:
        raise LoraKitError("choose where to write the result")
    return path


def guarded(fn: Callable) -> Callable:
    """Any failure → gradio's error toast (one line), never a stack trace in the page; the server
    keeps serving. Bugs (not LoraKitError) are also logged with their traceback for a report."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return _shielded(fn, *args, **kwargs)
    return run


def _shielded(fn, *args, **kwargs):
    import gradio as gr

    try:
        return fn(*args, **kwargs)
    except gr.Error:
        raise
    except LoraKitError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the page gets one line and the server lives
        import logging

        logging.getLogger("lorakit.ui").exception("%s failed", getattr(fn, "__name__", "action"))
        raise gr.Error(f"{exc.__class__.__name__}: {one_line(exc)}", print_exception=False) from None
