"""lorakit: train, use, combine and convert LoRA adapters for Stable Diffusion."""

__version__ = "0.1.0"


def _quiet_optional_imports() -> None:
    """torchao (the quantized base formats) logs, when imported, every optional CUDA extension its
    build lacks and each enum it registers with torch.compile, and diffusers warns that torchao moved
    classes it looks for; none of it concerns a lorakit user. Raised to errors before either loads."""
    import logging

    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


_quiet_optional_imports()


# The public operations, imported on first use so that `import lorakit` stays light.
_LAZY = {"resize": "ops.algebra", "merge_loras": "ops.algebra", "extract": "ops.extract"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
