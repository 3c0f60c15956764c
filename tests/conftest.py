import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_sd1():
    from lorakit.models.tiny import tiny_pipeline

    return tiny_pipeline("sd1")


def parts_of(pipe, family):
    from lorakit.lora import ModelParts

    tes = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    return ModelParts(family, pipe.unet, tes, dict(pipe.unet.config))


def tiny_model_with_lora(root, rank: int = 8, alpha: float = 4, std: float = 0.2, seed: int | None = None):
    """A tiny SD1 pipeline saved to ROOT/model and a random kohya LoRA on it at ROOT/a.safetensors."""
    import torch

    from lorakit.formats import save_lora
    from lorakit.lora import LoRANetwork
    from lorakit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(root / "model")
    net = LoRANetwork.create(parts_of(pipe, "sd1"), rank=rank, alpha=alpha)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    save_lora(root / "a.safetensors", net.kohya_modules(), {}, family="sd1")
    return root
