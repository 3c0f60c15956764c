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


# pytest's "failed" retention removes a passed test's tmp_path, but not the folders module- and
# session-scoped fixtures make with tmp_path_factory (tiny models, streamed real-width files: 0.8 GB
# a run). At the end those go too; a failed test's own folder stays for a look.
_FAILED_DIRS: set[str] = set()


def pytest_runtest_logreport(report):
    if report.failed:
        import re

        # the folder name pytest's tmp_path gives a test: its name, non-word characters as "_", 30 at most
        _FAILED_DIRS.add(re.sub(r"[\W]", "_", report.nodeid.split("::")[-1])[:30])


def pytest_sessionfinish(session, exitstatus):
    import shutil

    factory = getattr(session.config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None) if factory is not None else None
    if base is None or not base.is_dir():
        return
    for path in base.iterdir():
        if path.is_dir() and not any(path.name.startswith(name) for name in _FAILED_DIRS):
            shutil.rmtree(path, ignore_errors=True)
