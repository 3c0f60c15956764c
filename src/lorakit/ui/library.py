"""The LoRA library: every safetensors file under the library folders, as a card.

A card is built from the file's JSON header alone (names, shapes, `__metadata__`), never from its
tensors: a library of hundreds of LoRAs must list in a moment, and a file whose data is cut short
still shows what it is. Cards are cached by (size, mtime), so a refresh re-reads only what changed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import LoraKitError

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.webp", ".webp")  # A1111's order
_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "lokr_w2_b")


@dataclass
class LoraCard:
    path: Path
    name: str
    family: str | None = None
    candidates: tuple[str, ...] = ()  # the families it fits alike when the file cannot tell which
    format: str | None = None
    rank: int | None = None
    alpha: str | None = None
    size: int = 0
    triggers: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def preview(self) -> Path | None:
        return next((p for p in (self.path.with_name(self.name + s) for s in PREVIEW_SUFFIXES) if p.is_file()), None)

    def summary(self) -> str:
        """The card's caption: what one needs to pick a LoRA."""
        if self.error:
            return f"{self.name} · unreadable"
        facts = [self.family or ("|".join(self.candidates) or "family") + " ?", self.format or "format ?",
                 f"r{self.rank if self.rank is not None else '?'}/α{self.alpha if self.alpha is not None else '?'}",
                 human_size(self.size)]
        line = f"{self.name} · " + " · ".join(facts)
        return line + (f" · {', '.join(self.triggers)}" if self.triggers else "")

    def undecided(self) -> str:
        from ..formats.detect import describe

        return f"{describe(self.candidates)}: the file fits each alike" if self.candidates else "unknown"

    def details(self) -> str:
        """Markdown for the selected card."""
        if self.error:
            return f"**{self.name}**: {self.error}\n\n`{self.path}`"
        rows = [("Family", self.family or self.undecided()), ("Format", self.format or "unknown"),
                ("Rank / alpha", f"{self.rank if self.rank is not None else '?'} / "
                                 f"{self.alpha if self.alpha is not None else '?'}"),
                ("Size", human_size(self.size)), ("Trigger words", ", ".join(self.triggers) or "none recorded"),
                ("Preview", str(self.preview) if self.preview else "none (Make preview draws one)"),
                ("File", f"`{self.path}`")]
        return f"### {self.name}\n" + "\n".join(f"- **{k}**: {v}" for k, v in rows)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def trigger_words(md: dict[str, str], top: int = 5) -> list[str]:
    """`modelspec.trigger_phrase` first, then the most frequent tags of `ss_tag_frequency`."""
    words = [w.strip() for w in md.get("modelspec.trigger_phrase", "").split(",") if w.strip()]
    try:
        freq = json.loads(md.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        freq = {}
    counts: Counter = Counter()
    if isinstance(freq, dict):
        for tags in freq.values():
            if isinstance(tags, dict):
                counts.update({str(t).strip(): int(c) for t, c in tags.items() if isinstance(c, (int, float))})
    words += [tag for tag, _ in counts.most_common(top) if tag and tag not in words]
    return words


class _Header:
    """Key names, shapes and metadata of a safetensors file, never its tensor bytes.

    safetensors' own (Rust) parser reads the header; a file it refuses (its data cut short, say)
    is read by our JSON header reader instead, which does not compare offsets with the file size."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                self.metadata = {str(k): str(v) for k, v in (f.metadata() or {}).items()}
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError):
            from ..formats.st_io import read_header

            header, _ = read_header(path, check_data=False)
            self.metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
            self.shapes = {k: tuple(v.get("shape") or ()) for k, v in header.items() if k != "__metadata__"}
        self.keys = list(self.shapes)

    def shape(self, key: str) -> tuple:
        return self.shapes.get(key, ())


def _detection(h: _Header):
    """Format and family as `load_lora` decides them (formats.detect), from every key's name and
    shape: a card must not call a file SDXL that loading calls SD3."""
    from ..formats.detect import detect

    return detect(h.shapes, h.metadata)


def _rank(h: _Header) -> int | None:
    if h.metadata.get("ss_network_dim", "").isdigit():
        return int(h.metadata["ss_network_dim"])
    downs = [k for k in h.keys if k.endswith(_DOWN)][:64]  # the usual rank shows in any sample
    ranks = Counter(int(shape[0]) for shape in map(h.shape, downs) if shape)
    return ranks.most_common(1)[0][0] if ranks else None


def _alpha(md: dict[str, str]) -> str | None:
    value = md.get("ss_network_alpha")
    if value is None:
        return None
    try:
        return f"{float(value):g}"
    except ValueError:
        return value.lower()  # "Dynamic"


def read_card(path: Path) -> LoraCard:
    """A card from the safetensors header (a few KB read, whatever the file's size)."""
    path = Path(path)
    card = LoraCard(path=path, name=path.stem, size=path.stat().st_size if path.exists() else 0)
    try:
        h = _Header(path)
    except LoraKitError as exc:
        card.error = exc.message
        return card
    found = _detection(h)
    card.format, card.family = found.format, found.family
    card.candidates = found.families if found.family is None else ()
    card.rank = _rank(h)
    card.alpha = _alpha(h.metadata)
    card.triggers = trigger_words(h.metadata)
    return card


class Library:
    """The cards of some folders, re-read only where a file changed."""

    def __init__(self):
        self._cache: dict[Path, tuple[tuple[int, int], LoraCard]] = {}

    def scan(self, folders: Iterable[Path]) -> list[LoraCard]:
        from ..train.state import STATE_FILE

        cards, seen = [], set()
        for folder in folders:
            for path in sorted(Path(folder).rglob("*.safetensors")):
                if path in seen or not path.is_file() or (path.parent / STATE_FILE).is_file():
                    continue  # a training run's resume state holds a model.safetensors that is not a LoRA
                seen.add(path)
                st = path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
                hit = self._cache.get(path)
                if hit is None or hit[0] != stamp:
                    hit = (stamp, read_card(path))
                    self._cache[path] = hit
                cards.append(hit[1])
        return cards


def search(cards: list[LoraCard], text: str = "", family: str = "all") -> list[LoraCard]:
    """Cards whose name, file name or trigger words contain every word of TEXT, of FAMILY."""
    words = (text or "").lower().split()
    out = []
    for c in cards:
        if family not in ("", "all", None) and (c.family or "unknown") != family:
            continue
        hay = " ".join([c.name, c.path.name, *c.triggers]).lower()
        if all(w in hay for w in words):
            out.append(c)
    return out


def card_image(card: LoraCard, side: int = 192):
    """The preview image, or a drawn placeholder with the name and family."""
    from PIL import Image, ImageDraw, ImageFont

    if card.preview is not None:
        try:
            with Image.open(card.preview) as im:
                im = im.convert("RGB")
                im.thumbnail((side, side))
                return im
        except OSError:
            pass
    from .. import families

    colour = next((f.card_colour for f in families.all() if f.name == card.family), families.Family.card_colour)
    im = Image.new("RGB", (side, side), colour)
    draw = ImageDraw.Draw(im)
    big, small = ImageFont.load_default(size=side // 8), ImageFont.load_default(size=side // 12)
    draw.text((side // 16, side // 16), card.name[:14], fill="white", font=big)
    for i, word in enumerate(card.triggers[:3]):
        draw.text((side // 16, side // 4 + i * side // 9), word[:20], fill=(230, 230, 230), font=small)
    draw.text((side // 16, side - side // 6), (card.family or "?").upper(), fill="white", font=small)
    return im
