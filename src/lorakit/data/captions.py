"""Caption text: read from the image's side file, trigger in front, kohya's shuffle and dropout.

Captions are comma-separated tags or sentences. The trigger word always leads and is never
shuffled or counted against `keep_tokens`; `keep_tokens` then pins the caption's first tags.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from ..errors import LoraKitError

CAPTION_EXTS = (".txt", ".caption")


def caption_file(image: Path, ext: str | None = None) -> Path | None:
    """The caption file next to an image: `ext` if given, else .txt then .caption."""
    for e in ([ext] if ext else CAPTION_EXTS):
        p = image.with_suffix(e)
        if p.is_file():
            return p
    return None


def read_caption(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoraKitError(f"cannot read caption ({exc.__class__.__name__}: {exc})", path) from None
    return " ".join(text.split())  # one line, single spaces


def tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def with_trigger(caption: str, trigger: str | None) -> str:
    """`trigger, caption`, unless the caption already names the trigger (a captioner's prefix, or a
    sentence like "a photo of sks dog"): then it is left as written."""
    if not trigger:
        return caption
    if re.search(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", caption):
        return caption
    return ", ".join([trigger, *tags(caption)])


def augment(caption: str, rng: random.Random, *, trigger: str | None = None, shuffle: bool = False,
            keep_tokens: int = 0, dropout: float = 0.0) -> str:
    """The caption one step trains on: maybe dropped (""), maybe shuffled after the kept tags."""
    if dropout and rng.random() < dropout:
        return ""
    parts = tags(caption)
    if trigger and parts and parts[0] == trigger:
        head, parts = [trigger], parts[1:]
    else:
        head = []
    if shuffle and len(parts) > keep_tokens + 1:
        kept, rest = parts[:keep_tokens], parts[keep_tokens:]
        rng.shuffle(rest)
        parts = kept + rest
    return ", ".join(head + parts)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """Tag → count, as kohya writes it into `ss_tag_frequency`."""
    return dict(Counter(t for c in captions for t in tags(c)))
