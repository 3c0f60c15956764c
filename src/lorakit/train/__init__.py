"""Training: the config (dataclass + TOML + CLI), the loop (accelerate), losses, logs, resume states."""

from .config import TrainConfig

__all__ = ["TrainConfig", "run", "TrainResult"]


def __getattr__(name: str):
    if name in ("run", "TrainResult", "Trainer"):  # the loop imports torch/diffusers; keep config import cheap
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
