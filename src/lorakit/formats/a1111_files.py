"""What A1111's and Forge's Lora page read beside a LoRA file, and the SAI model spec's thumbnail.

- NAME.preview.png: the card picture (modules/ui_extra_networks.py `find_preview` tries
  `{path}.{ext}` and `{path}.preview.{ext}`).
- NAME.json: the "user metadata" its editor writes (extensions-builtin/Lora/ui_edit_user_metadata.py
  `save_lora_user_metadata`) and its page reads (ui_extra_networks_lora.py): `activation text` is added
  to the prompt with the tag, `preferred weight` is the tag's weight, `sd version` (a member of
  network.py's SdVersion: SD1, SD2, SDXL, Unknown) decides under which checkpoints the card shows.
  Forge's SdVersion adds Flux, A1111's does not (it would guess SD1 from the metadata), so
  families A1111 does not know are written as Unknown, which both show for every checkpoint.
- `modelspec.thumbnail` inside the file: a data: URI of a small image (sd-scripts'
  library/sai_model_spec.py `file_to_data_url` writes `data:{mime};base64,{data}`).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

THUMBNAIL_SIDE = 256  # the spec asks for a small image


def thumbnail_uri(image, side: int = THUMBNAIL_SIDE) -> str:
    """A PNG data: URI of the image scaled to at most `side` pixels on its long side."""
    im = image.convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def user_metadata(family, trigger: str | None, description: str = "", notes: str = "",
                  weight: float = 1.0) -> dict:
    """The fields A1111's Lora editor saves, as it saves them (weight a number, the rest strings)."""
    return {"description": description, "sd version": family.a1111_sd_version,
            "activation text": trigger or "", "preferred weight": weight, "negative text": "", "notes": notes}


def sidecar_paths(lora_path: Path) -> tuple[Path, Path]:
    base = Path(lora_path).with_suffix("")
    return base.with_name(base.name + ".preview.png"), base.with_name(base.name + ".json")


def write_sidecars(lora_path: Path, family, trigger: str | None, image=None, description: str = "",
                   notes: str = "") -> list[Path]:
    """NAME.json always, NAME.preview.png when there is an image."""
    from ..atomic import write_text_atomic
    from ..generate import save_png

    preview, meta = sidecar_paths(lora_path)
    write_text_atomic(meta, json.dumps(user_metadata(family, trigger, description, notes), indent=4) + "\n")
    written = [meta]
    if image is not None:
        save_png(image, preview)
        written.append(preview)
    return written
