"""CLIP and DINOv2 as image (and text) embedders, loaded offline through transformers.

Subject fidelity follows the DreamBooth paper (Ruiz et al. 2023): cosine similarity of DINO
ViT-S/16 embeddings (here DINOv2 ViT-S/14, `facebook/dinov2-small`, its CLS token after the last
layer norm; `facebook/dino-vits16`, the paper's own, loads the same way) and of CLIP image
embeddings between generated and real images; prompt fidelity is the cosine of CLIP's text and
image embeddings (CLIP-T; CLIPScore without its ×100 and clamp at 0).

CLIP's default is `openai/clip-vit-large-patch14`: the CLIP whose text tower conditions SD 1.x,
the model torchmetrics' CLIPScore (what most diffusion papers report) uses by default, and one
many Stable Diffusion users already hold in their hub cache.

Nothing is downloaded: a model is read from a local folder or the hub cache
(`local_files_only`). One that is not there is reported as a note naming the model, the metrics
it would give, and how to get it; the rest of the evaluation goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINO = "facebook/dinov2-small"
OFF = {"", "none", "off", "no"}
BATCH = 16

_CACHE: dict[tuple, "Encoder"] = {}


@dataclass
class Encoder:
    """One loaded embedder; every embedding it returns is L2-normalised (rows of a float32 tensor)."""

    kind: str  # "clip" or "dino"
    name: str
    model: torch.nn.Module
    processor: object
    tokenizer: object | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @torch.no_grad()
    def images(self, images: Sequence) -> torch.Tensor:
        out = []
        for start in range(0, len(images), BATCH):
            chunk = [im.convert("RGB") for im in images[start:start + BATCH]]
            px = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(self.device)
            if self.kind == "clip":
                emb = _tensor(self.model.get_image_features(pixel_values=px))
            else:  # the CLS token after the final layer norm (DINOv2, and DINO v1 as ViTModel alike)
                emb = self.model(pixel_values=px).last_hidden_state[:, 0]
            out.append(emb.float().cpu())
        if not out:
            return torch.empty(0, 0)
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError(f"{self.name} has no text tower")
        out = []
        for start in range(0, len(texts), BATCH):
            tok = self.tokenizer(list(texts[start:start + BATCH]), padding="max_length", truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings,
                                 return_tensors="pt")
            emb = _tensor(self.model.get_text_features(input_ids=tok.input_ids.to(self.device)))
            out.append(emb.float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _tensor(out) -> torch.Tensor:
    """transformers 5 returns the projected features as `pooler_output`; 4.x as a bare tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _processor(name, kind: str):
    """The model's own preprocessing; a folder without it gets the standard one for its kind."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        from transformers import BitImageProcessor, CLIPImageProcessor
        from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        if kind == "clip":
            return CLIPImageProcessor()  # OpenAI CLIP's: 224 px centre crop, CLIP mean/std
        return BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                 do_center_crop=True, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)


def _tokenizer(name):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        from ..models.tokenizer import clip_tokenizer  # OpenAI CLIP's BPE vocabulary, shipped with lorakit

        return clip_tokenizer()


WHAT = {"clip": ("CLIP", "CLIP-I subject fidelity, CLIP-T prompt fidelity and CLIP feature drift", "--clip-model"),
        "dino": ("DINOv2", "DINO subject fidelity and DINO feature drift", "--dino-model")}


def locate(name: str) -> Path | None:
    """A local folder, or the hub-cache snapshot folder of a hub id; None when neither is there.

    Loading from the folder itself keeps transformers off the network: given a hub id, it asks
    the hub for optional files (an adapter config) even with local_files_only, and waits out
    its retries on a machine without a network."""
    path = Path(str(name)).expanduser()
    if path.exists():
        return path
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(name), "config.json")
    except ValueError:  # not a valid hub id either
        return None
    return Path(found).parent if isinstance(found, str) else None


def load(kind: str, name: str | None, device=None) -> tuple[Encoder | None, str | None]:
    """(encoder, None) or (None, a note saying why not and what is missing)."""
    label, metrics, flag = WHAT[kind]
    if name is None or str(name).strip().lower() in OFF:
        return None, f"{label} not requested ({flag} none): {metrics} not computed."
    device = torch.device(device or "cpu")
    key = (kind, str(name), str(device))
    if key in _CACHE:
        return _CACHE[key], None
    from ..formats.st_io import one_line
    from ..models.single_file import quiet_loading

    folder = locate(name)
    try:
        if folder is None:
            raise FileNotFoundError(name)
        with quiet_loading():
            if kind == "clip":
                from transformers import CLIPModel

                model = CLIPModel.from_pretrained(folder, local_files_only=True)
                tokenizer = _tokenizer(folder)
            else:
                from transformers import AutoModel

                model = AutoModel.from_pretrained(folder, local_files_only=True)
                tokenizer = None
            processor = _processor(folder, kind)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if folder is not None:
            why = f"{folder} does not hold a loadable model ({one_line(exc)[:120]})"
        else:
            from huggingface_hub.constants import HF_HUB_CACHE

            why = f"no local folder of that name, and not in the hub cache ({HF_HUB_CACHE})"
        return None, (f"{label} model {name!r} is not available offline: {why}; {metrics} not computed. "
                      f"Fetch it once where there is a network (`hf download {name}`) or pass {flag} FOLDER.")
    enc = Encoder(kind, str(name), model.to(device).eval().float(), processor, tokenizer, device)
    _CACHE[key] = enc
    return enc, None
