"""The embedded toy world: a drawn world of shapes, a scorer for it, and a tiny trained SD base.

base_path() is the shipped diffusers folder of the base model (a StableDiffusionPipeline);
concept.dataset_path() is the never-seen concept a LoRA can be taught.
"""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).parent / "assets" / "base"


def base_path() -> Path:
    """The shipped toy base model: a diffusers StableDiffusionPipeline folder."""
    from ..errors import LoraKitError

    if not (BASE_DIR / "model_index.json").is_file():
        raise LoraKitError("the toy base model is missing; rebuild it with `lorakit toy build-base`", BASE_DIR)
    return BASE_DIR


def load_base(**kwargs):
    """The shipped base as a StableDiffusionPipeline: fp32, offline, progress bar off."""
    return load_folder(base_path(), **kwargs)


def load_folder(folder, **kwargs):
    """StableDiffusionPipeline.from_pretrained(folder), offline, progress bar off (fp32: the
    weights are stored in fp16 but every config says float32)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
