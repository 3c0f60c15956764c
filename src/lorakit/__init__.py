"""lorakit: train, use, combine and convert LoRA adapters for Stable Diffusion."""

__version__ = "0.1.0"


# The public operations, imported on first use so that `import lorakit` stays light.
_LAZY = {"resize": "ops.algebra", "merge_loras": "ops.algebra", "extract": "ops.extract"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
