"""A1111's PNG info, read back: the `parameters` text chunk of a PNG made by lorakit or A1111 as
the settings that made it (the reverse of `generate.infotext`).

Written by hand because the format is A1111's own (its `parse_generation_parameters`), not a
library's: prompt lines, an optional `Negative prompt:` block, and a last line of `Key: value`
pairs where quoted values may hold commas.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LoraKitError

_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def read_parameters(path: str | Path) -> str:
    """The `parameters` text of an image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = im.info.get("parameters") or (im.text.get("parameters") if hasattr(im, "text") else None)
    except (UnidentifiedImageError, OSError) as exc:
        raise LoraKitError(f"cannot read the image ({exc.__class__.__name__})", path) from None
    if not text:
        raise LoraKitError("this image carries no generation settings (no A1111 'parameters' text)", path)
    return str(text)


def parse_parameters(text: str) -> dict:
    """prompt, negative, and every `Key: value` of the last line (numbers as numbers, the sampler
    as lorakit's name, `Size` as width and height)."""
    from ..samplers import SAMPLERS

    lines = text.strip().splitlines()
    params: dict = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        for key, value in _PAIR.findall(lines[-1]):
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = value[1:-1].replace('\\"', '"')
            params[key.strip()] = value
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict = {"prompt": "\n".join(prompt).strip(), "negative": "\n".join(negative).strip(), "params": params}
    for key, name, cast in (("Steps", "steps", int), ("CFG scale", "guidance", float), ("Seed", "seed", int)):
        try:
            out[name] = cast(params[key])
        except (KeyError, ValueError):
            pass
    size = re.fullmatch(r"(\d+)x(\d+)", params.get("Size", ""))
    if size:
        out["width"], out["height"] = int(size[1]), int(size[2])
    by_a1111 = {label: name for name, (_, _, label) in SAMPLERS.items()}
    if params.get("Sampler") in by_a1111:
        out["sampler"] = by_a1111[params["Sampler"]]
    if "Model" in params:
        out["model"] = params["Model"]
    return out
