"""`lorakit check`: which of a LoRA file's modules ComfyUI, Forge, A1111, diffusers, kohya
sd-scripts and musubi-tuner apply, which keys each leaves unused and why, and whether each applies
the modules at the strength lorakit means.

One module per tool holds that tool's key rules as its source has them (the version and file are
named at its top); diffusers is asked directly (`diffusers.py`). The model the rules run against
is the family's base model built on the meta device, or the model at hand (`pipe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import families
from ..errors import LoraKitError
from . import a1111, comfyui, diffusers, filekeys, forge, kohya, meaning, musubi, universe
from .outcome import Outcome

TOOLS = (comfyui, forge, a1111, diffusers, kohya, musubi)
SHOWN_SKIPS = 3


@dataclass
class ToolResult:
    name: str
    source: str
    runs: bool
    modules: int  # the file's modules
    applied: int = 0  # of them, applied by the tool
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why), in file order
    strength: list[tuple[str, float, float]] = field(default_factory=list)  # (module, tool's scale, lorakit's)
    refused: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.runs or (self.refused is None and self.applied == self.modules and not self.strength)

    def line(self) -> str:
        """One line: `ComfyUI: 84/84 modules, strength as meant`."""
        if not self.runs:
            return f"{self.name}: does not run this model family"
        if self.refused:
            return f"{self.name}: 0/{self.modules} modules: refuses the file: {self.refused}"
        text = f"{self.name}: {self.applied}/{self.modules} modules"
        if self.strength:
            stem, got, meant = self.strength[0]
            text += f", {len(self.strength)} at another strength ({stem}: {got:g} where lorakit means {meant:g})"
        elif self.applied:
            text += ", strength as meant"
        if self.skipped:
            key, why = self.skipped[0]
            more = f" (+{len(self.skipped) - 1} more keys)" if len(self.skipped) > 1 else ""
            text += f"; skips {key}: {why}{more}"
        return text


@dataclass
class CheckReport:
    path: str
    family: str
    modules: int
    results: list[ToolResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def lines(self) -> list[str]:
        return [r.line() for r in self.results]

    def text(self) -> str:
        """The full report: a header, each tool's line, then its first skipped keys and notes."""
        out = [f"{self.path}: {families.label(self.family)} LoRA, {self.modules} modules"]
        for r in self.results:
            out.append("  " + r.line())
            for key, why in r.skipped[1:SHOWN_SKIPS]:
                out.append(f"      skips {key}: {why}")
            for note in r.notes:
                out.append(f"      note: {note}")
        if self.ok:
            out.append("every tool applies every module as meant")
        else:
            out.append("not every tool applies every module as meant (lorakit check --fix FILE --for "
                       "comfyui|a1111|diffusers|kohya --out NEW writes the layout one tool applies fully)")
        return "\n".join(out)


def family_of(fk: filekeys.FileKeys, family: str | None) -> str:
    from ..formats.detect import AmbiguousFamily, detect

    if family is not None:
        return families.get(family).name
    det = detect(fk.shapes, fk.metadata)
    if det.family is not None:
        return det.family
    if len(det.families) > 1:
        raise AmbiguousFamily(det.families, fk.path)
    raise LoraKitError("cannot tell which model family this LoRA is for: say it with --family "
                       f"({', '.join(families.names())})", fk.path)


def check(path: str | Path, family: str | None = None, *, pipe=None, model=None, base: str | None = None,
          tools=TOOLS) -> CheckReport:
    """Check a file against every tool: against `pipe` (a pipeline), `model` (a lorakit BaseModel)
    or `base` (a model the user names: folder, single file, toy) when given, else against the
    family's base model."""
    fk = filekeys.read(path)
    stems = fk.modules()
    if not stems:
        sample = ", ".join(sorted(fk.shapes)[:3])
        raise LoraKitError(f"not a LoRA file: no LoRA keys found (keys like {sample})", fk.path)
    given = universe.for_model(base) if base is not None else None
    family = family_of(fk, model.family if model is not None else given.family if given is not None else family)
    if given is not None:
        u = given
    elif model is not None:
        u = universe.from_model(model)
    elif pipe is not None:
        u = universe.from_pipeline(family, pipe)
    else:
        u = universe.reference(family)
    spec = families.get(family)
    meant = {s: meaning.meant_scale(fk, s, k) for s, k in stems.items()}
    results = []
    for tool in tools:
        source = tool.source() if callable(getattr(tool, "source", None)) else tool.SOURCE
        result = ToolResult(tool.NAME, source, tool.runs(spec), len(stems))
        if result.runs:
            _fill(result, tool.load(fk, u), stems, meant)
        results.append(result)
    return CheckReport(fk.path, family, len(stems), results)


def _fill(result: ToolResult, outcome: Outcome, stems: dict, meant: dict) -> None:
    result.refused = outcome.refused
    result.notes = outcome.notes
    result.skipped = outcome.skipped
    if outcome.refused:
        return
    applied = [s for s in stems if s in outcome.applied]
    result.applied = len(applied)
    for s in applied:
        got, want = outcome.applied[s], meant.get(s)
        if got is not None and want is not None and not math.isclose(got, want, rel_tol=1e-4):
            result.strength.append((s, got, want))


def summary(path: str | Path, family: str | None = None, *, model=None) -> list[str]:
    """`check: TOOL: …` lines for `train` and `convert` to print after writing a file."""
    try:
        report = check(path, family, model=model)
    except LoraKitError as exc:
        return [f"check: {' '.join(str(exc).split())}"]
    return [f"check: {line}" for line in report.lines()]


__all__ = ["TOOLS", "CheckReport", "ToolResult", "check", "summary"]
