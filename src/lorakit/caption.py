"""BLIP captions for a folder of images, written as editable same-name `.txt` files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import LoraKitError
from .formats.st_io import write_bytes_atomic

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DEFAULT_MODEL = "Salesforce/blip-image-captioning-large"


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def load_captioner(model: str, device: str = "cpu"):
    """BLIP model + processor from a folder or a hub id (cached when offline)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        processor = BlipProcessor.from_pretrained(model)
        net = BlipForConditionalGeneration.from_pretrained(model).to(device).eval()
    except (OSError, ValueError) as exc:  # HFValidationError is a ValueError: a path that is not there
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise LoraKitError(f"cannot load the BLIP captioning model ({first[:160]}); give a local folder with "
                           "--model, or run once with a network to cache it", model) from None
    return processor, net


def caption_images(images: Iterable, processor, net, *, max_length: int = 40, num_beams: int = 3,
                   conditional: str | None = None) -> list[str]:
    import torch

    images = list(images)
    kwargs = {"text": [conditional] * len(images)} if conditional else {}
    inputs = processor(images=images, return_tensors="pt", **kwargs).to(net.device)
    with torch.no_grad():
        out = net.generate(**inputs, max_length=max_length, num_beams=num_beams, min_length=3)
    return [processor.decode(o, skip_special_tokens=True).strip() for o in out]


def caption_folder(folder: Path, *, prefix: str = "", ext: str = ".txt", overwrite: bool = False,
                   model: str = DEFAULT_MODEL, batch_size: int = 4, max_length: int = 40, device: str = "cpu",
                   captioner=None, progress: bool = True) -> list[Path]:
    """Caption every image that has no caption yet (all of them with overwrite); returns the files written."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from .data.folders import load_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise LoraKitError("not a folder", folder)
    if not ext.startswith("."):
        ext = "." + ext
    images = list_images(folder)
    if not images:
        raise LoraKitError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder", folder)
    todo = [p for p in images if overwrite or not p.with_suffix(ext).exists()]
    if not todo:
        return []
    written = []
    for p in todo:  # check every image before the model loads: a bad file fails fast
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise LoraKitError(f"cannot read this image ({exc.__class__.__name__})", p) from None
    from .writable import require_writable

    for parent in sorted({p.parent for p in todo}):
        require_writable(parent, folder=True)  # before the model loads: captions go next to the images
    processor, net = captioner or load_captioner(model, device)
    for start in tqdm(range(0, len(todo), batch_size), desc="caption", disable=not progress, unit="batch"):
        batch = todo[start:start + batch_size]
        pics = [load_rgb(p) for p in batch]  # upright, alpha on white, 16-bit scaled: what training sees
        for path, text in zip(batch, caption_images(pics, processor, net, max_length=max_length)):
            target = path.with_suffix(ext)
            line = f"{prefix.strip()}, {text}" if prefix.strip() else text
            write_bytes_atomic(target, (line + "\n").encode("utf-8"))
            written.append(target)
    return written
