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


def read_caption(path: Path, lines: bool = False) -> str:
    """One line, single spaces; `lines`: one such line per non-empty line of the file (sd-scripts'
    enable_wildcard draws one of them each step)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoraKitError(f"cannot read caption ({exc.__class__.__name__}: {exc})", path) from None
    if lines:
        return "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
    return " ".join(text.split())


def with_affixes(caption: str, prefix: str = "", suffix: str = "") -> str:
    """sd-scripts' caption_prefix / caption_suffix: joined with one space (process_caption)."""
    if prefix:
        caption = prefix + " " + caption
    if suffix:
        caption = caption + " " + suffix
    return caption


def tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def with_trigger(caption: str, trigger: str | None) -> str:
    """`trigger, caption`, unless the caption already names the trigger (a captioner's prefix, or a
    sentence like "a photo of sks dog"): then it is left as written."""
    if not trigger:
        return caption
    if "\n" in caption:  # one caption a line (enable_wildcard): each gets the trigger
        return "\n".join(with_trigger(line, trigger) for line in caption.split("\n"))
    if re.search(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", caption):
        return caption
    return ", ".join([trigger, *tags(caption)])


def augment(caption: str, rng: random.Random, *, trigger: str | None = None, shuffle: bool = False,
            keep_tokens: int = 0, dropout: float = 0.0, tag_dropout: float = 0.0, keep_tokens_separator: str = "",
            secondary_separator: str = "", wildcard: bool = False) -> str:
    """The caption one step trains on: maybe dropped (""), maybe shuffled after the kept tags.

    sd-scripts' options follow its `BaseDataset.process_caption`: a `{a|b}` wildcard (and one line of
    several) drawn; tags before `keep_tokens_separator` (and after a second one) kept in place while
    the rest are shuffled and each dropped with `tag_dropout`; `secondary_separator` turned into ','
    last, so that `a;;;b` is shuffled and dropped as one tag."""
    if dropout and rng.random() < dropout:
        return ""
    kohya = tag_dropout or keep_tokens_separator or secondary_separator or wildcard
    if kohya:
        return _kohya_caption(caption, rng, trigger=trigger, shuffle=shuffle, keep_tokens=keep_tokens,
                              tag_dropout=tag_dropout, separator=keep_tokens_separator,
                              secondary=secondary_separator, wildcard=wildcard)
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


def _kohya_caption(caption: str, rng: random.Random, *, trigger, shuffle, keep_tokens, tag_dropout, separator,
                   secondary, wildcard) -> str:
    if wildcard:
        if "\n" in caption:
            caption = rng.choice(caption.split("\n"))
        caption = _wildcards(caption, rng)
    else:
        caption = caption.split("\n")[0]
    head = ""
    if trigger and (caption == trigger or caption.startswith(trigger + ",")):  # lorakit's trigger leads, pinned
        head, caption = trigger, caption[len(trigger) + 1:]
    if shuffle or tag_dropout:
        fixed, suffix = [], []
        if separator and separator in caption:
            fixed_part, flex_part = caption.split(separator, 1)
            if separator in flex_part:
                flex_part, suffix_part = flex_part.split(separator, 1)
                suffix = [t.strip() for t in suffix_part.split(",") if t.strip()]
            fixed = [t.strip() for t in fixed_part.split(",") if t.strip()]
            flex = [t.strip() for t in flex_part.split(",") if t.strip()]
        else:
            flex = [t.strip() for t in caption.strip().split(",")]
            if keep_tokens > 0:
                fixed, flex = flex[:keep_tokens], flex[keep_tokens:]
        if shuffle:
            rng.shuffle(flex)
        if tag_dropout:
            flex = [t for t in flex if rng.random() >= tag_dropout]
        caption = ", ".join(fixed + flex + suffix)
    if secondary:
        caption = caption.replace(secondary, ",")
    return ", ".join(p for p in (head, caption.strip()) if p)


def _wildcards(caption: str, rng: random.Random) -> str:
    """`{a|b|c}` → one of them; `{{` and `}}` stay literal braces."""
    left, right = "⦅", "⦆"
    while left in caption or right in caption:
        left, right = left + "⦅", right + "⦆"
    caption = caption.replace("{{", left).replace("}}", right)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(left, "{").replace(right, "}")


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """Tag → count, as kohya writes it into `ss_tag_frequency`."""
    return dict(Counter(t for c in captions for t in tags(c)))
