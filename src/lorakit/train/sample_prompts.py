"""The --sample-prompts file in kohya's syntax: a prompt, then options after ` --`, one line each.

`a dog --n blurry --w 512 --h 768 --s 28 --l 7.5 --d 42 --ss euler_a`, split as sd-scripts'
`line_to_prompt_dict` splits it (on " --", the option letter matched without case). The options
become the sample's settings and never part of its prompt. Where sd-scripts logs a bad value and
goes on, a bad or unknown option here is one line naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoraKitError
from ..generate import read_prompt_file
from ..samplers import SAMPLERS

# sd-scripts' sampler names (--sample_sampler and --ss) that are lorakit's under another name
KOHYA_SAMPLERS = {"k_euler": "euler", "k_euler_a": "euler_a", "k_lms": "lms", "dpmsolver++": "dpm++2m",
                  "dpmsingle": "dpm++sde"}
# (field, sd-scripts' pattern for the value) of each option sd-scripts reads that lorakit's samples use
_OPTIONS = {"n": ("negative", r"(.+)"), "w": ("width", r"(\d+)"), "h": ("height", r"(\d+)"),
            "s": ("steps", r"(\d+)"), "l": ("guidance", r"([\d\.]+)"), "d": ("seed", r"(\d+)"),
            "ss": ("sampler", r"(.+)")}
_UNSUPPORTED = {"g": "Flux.1's embedded guidance is --guidance-scale for training; samples take --l",
                "cn": "ControlNet images are not used in samples", "ctr": "CFG truncation is not supported",
                "rcfg": "renormalised CFG is not supported", "fs": "use the model's own flow shift"}


@dataclass
class SamplePrompt:
    prompt: str
    negative: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    sampler: str | None = None


def sampler_name(name: str) -> str:
    """lorakit's name of a sampler given in sd-scripts' or lorakit's spelling; ValueError if neither."""
    key = name.strip().lower()
    key = KOHYA_SAMPLERS.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} (choose from {', '.join([*SAMPLERS, *KOHYA_SAMPLERS])})")
    return key


def parse_line(line: str, source: str = "sample prompts file") -> SamplePrompt:
    parts = line.split(" --")
    found = SamplePrompt(parts[0].strip())
    for part in parts[1:]:
        key = part.split(" ", 1)[0].lower()
        if key in _UNSUPPORTED:
            raise LoraKitError(f"--{key}: {_UNSUPPORTED[key]}", source)
        if key not in _OPTIONS:
            raise LoraKitError(f"unknown option --{part.split(' ', 1)[0]} (kohya's: --n --w --h --s --l --d --ss)",
                               source)
        name, pattern = _OPTIONS[key]
        m = re.fullmatch(key + " " + pattern, part.strip(), re.IGNORECASE)
        if m is None:
            raise LoraKitError(f"--{key} {part[len(key):].strip()!r} is not a valid {name}", source)
        value = m.group(1).strip()
        try:
            if name in ("width", "height", "seed"):
                value = int(value)
            elif name == "steps":
                value = max(1, min(1000, int(value)))  # sd-scripts clamps it so
            elif name == "guidance":
                value = float(value)
            elif name == "sampler":
                value = sampler_name(value)
        except ValueError as exc:
            raise LoraKitError(f"--{key}: {exc}", source) from None
        if name in ("width", "height") and value < 8:
            raise LoraKitError(f"--{key} {value}: a side of at least 8 pixels", source)
        setattr(found, name, value)
    if not found.prompt:
        raise LoraKitError("a line has options but no prompt before them", source)
    return found


def read_sample_prompts(path: Path | None, fallback: str) -> list[SamplePrompt]:
    """The file's prompts with their options, or the fallback prompt when there is no file."""
    if path is None:
        return [SamplePrompt(fallback)]
    lines = read_prompt_file(path, "sample prompts file")
    return [parse_line(line, f"{path} (prompt {k})") for k, line in enumerate(lines, 1)]
