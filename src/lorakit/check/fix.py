"""`lorakit check --fix`: rewrite a LoRA in a layout one tool applies fully, through lorakit's own
readers and writers (formats.load_lora / save_lora), and check the result for that tool."""

from __future__ import annotations

from pathlib import Path

from .. import families
from ..errors import LoraKitError
from . import CheckReport, a1111, check, comfyui, diffusers, kohya

# the tools --for names → (tool module, the layouts to try, most portable first)
TARGETS = {
    "comfyui": (comfyui, ("kohya", "comfyui", "diffusers")),
    "a1111": (a1111, ("kohya",)),
    "diffusers": (diffusers, ("diffusers", "kohya")),
    "kohya": (kohya, ("kohya",)),
}


def fix(path: str | Path, target: str, out: str | Path, family: str | None = None) -> CheckReport:
    """Write `path` to `out` in the first layout that `target` applies fully; its check report."""
    from ..formats import load_lora, save_lora
    from ..writable import require_writable

    if target not in TARGETS:
        raise LoraKitError(f"--for {target!r}: choose from {', '.join(TARGETS)}")
    if Path(out).resolve() == Path(path).resolve():
        raise LoraKitError("output would overwrite the input; choose another --out", out)
    require_writable(out)
    tool, layouts = TARGETS[target]
    lf = load_lora(path, family)
    if lf.family is None:
        raise LoraKitError("cannot tell which model family this LoRA is for: say it with --family", path)
    spec = families.get(lf.family)
    if not tool.runs(spec):
        raise LoraKitError(f"{tool.NAME} does not run {spec.label} models", path)
    report = None
    for layout in layouts:
        if layout not in spec.lora_formats:
            continue
        save_lora(out, lf, format=layout, dtype=None)
        report = check(out, lf.family, tools=(tool,))
        if report.ok:
            return report
    detail = report.results[0].line() if report is not None else "no layout to write"
    raise LoraKitError(f"no layout lorakit writes for {spec.label} is applied fully by {tool.NAME}: {detail}", out)
