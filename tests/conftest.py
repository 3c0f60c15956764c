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
