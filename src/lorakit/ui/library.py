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
_WIDTH_MODULES = ("attn2_to_k", "attn2_to_v", "self_attn_q_proj", "self_attn_k_proj")  # what families read
_DOWN = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "hada_w1_b", "lokr_w2_b")


@dataclass
class LoraCard:
    path: Path
    name: str
    family: str | None = None
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
        facts = [self.family or "family ?", self.format or "format ?",
                 f"r{self.rank if self.rank is not None else '?'}/α{self.alpha if self.alpha is not None else '?'}",
                 human_size(self.size)]
        line = f"{self.name} · " + " · ".join(facts)
        return line + (f" · {', '.join(self.triggers)}" if self.triggers else "")

    def details(self) -> str:
        """Markdown for the selected card."""
        if self.error:
            return f"**{self.name}**: {self.error}\n\n`{self.path}`"
        rows = [("Family", self.family or "unknown"), ("Format", self.format or "unknown"),
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
    """Key names, metadata and shapes of a safetensors file, never its tensor bytes.

    safetensors' own (Rust) parser reads a 300 KB SDXL header ten times faster than json.loads;
    a file it refuses (its data cut short, say) is read by our JSON header reader instead, which
    does not compare offsets with the file size."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                self.keys = list(f.keys())
                self.metadata = {str(k): str(v) for k, v in (f.metadata() or {}).items()}
                shapes = {k: list(f.get_slice(k).get_shape()) for k in self._wanted(self.keys, self.metadata)}
            self.shape = lambda k: shapes.get(k, [])
        except (SafetensorError, OSError):
            from ..formats.st_io import read_header

            header, _ = read_header(path, check_data=False)
            self.metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
            self.keys = [k for k in header if k != "__metadata__"]
            self.shape = lambda k: list(header[k].get("shape") or [])

    @staticmethod
    def _wanted(keys: list[str], md: dict[str, str]) -> list[str]:
        """The keys whose shapes a card needs, unless the metadata tells rank and family: some
        LoRA down weights (the rank), and those the families read widths from (cross-attention
        to_k/to_v, text-encoder q/k projections)."""
        from .. import families

        if md.get("ss_network_dim", "").isdigit() and families.detect_lora({}, md):
            return []
        downs = [k for k in keys if k.endswith(_DOWN)]
        telling = [k for k in downs if k.split(".", 1)[0].endswith(_WIDTH_MODULES)]
        return list(dict.fromkeys(downs[:64] + telling[:8]))


class _Shaped:
    """A tensor's stand-in that has only its shape: what the families' width checks read."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def _family(h: _Header) -> str | None:
    """Asked of the families (lorakit.families), with shape-only stand-ins for the tensors."""
    from .. import families

    found = families.detect_lora({}, h.metadata)  # the metadata alone, when it tells
    if found:
        return found.name
    # names tell the text encoders (one name each is enough); widths come from the few modules
    # whose shapes were read: building stand-ins for every key of an SDXL file would cost more
    # than reading its header
    modules: dict[str, dict[str, _Shaped]] = {k.split(".", 1)[0]: {} for k in h.keys if k.startswith("lora_te")}
    telling = {k.split(".", 1)[0] for k in h.keys if k.endswith(_DOWN) and h.shape(k)
               and k.split(".", 1)[0].endswith(_WIDTH_MODULES)}
    for key in h.keys:
        name, _, sub = key.partition(".")
        if name in telling:
            modules.setdefault(name, {})[sub] = _Shaped(h.shape(key))
    found = families.detect_lora(modules, h.metadata)
    return found.name if found else None


def _rank(h: _Header) -> int | None:
    if h.metadata.get("ss_network_dim", "").isdigit():
        return int(h.metadata["ss_network_dim"])
    downs = [k for k in h.keys if k.endswith(_DOWN)][:64]  # the usual rank shows in any sample
    ranks = Counter(int(shape[0]) for shape in map(h.shape, downs) if shape)
    return ranks.most_common(1)[0][0] if ranks else None


def _format(h: _Header) -> str | None:
    from ..formats.detect import detect_format

    if h.metadata.get("ss_network_module") == "networks.lora" and any(k.startswith("lora_") for k in h.keys[:8]):
        return "kohya"  # what kohya's trainer writes; skips scanning every key for LyCORIS marks
    # a spread sample of the names: LyCORIS or diffusers marks are on every module, so 256 of an
    # SDXL file's 2000+ names decide the format as well as all of them, in a tenth of the time
    return detect_format(h.keys[::max(1, len(h.keys) // 256)], h.metadata)


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
    card.format = _format(h)
    card.family = _family(h)
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
