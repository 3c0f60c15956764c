"""The `lorakit` command: a typer app whose commands live in lorakit/commands/, one module per area.

Every LoraKitError becomes one line on stderr and exit code 2; nothing else is caught, so a
real bug still shows its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, use, combine and convert LoRA adapters for Stable Diffusion.")

# command name → (module in lorakit.commands, function); imported lazily so `lorakit --help` is fast
_COMMANDS = {
    "generate": ("generate", "generate"),
    "merge": ("merge", "merge"),
    "convert": ("formats", "convert"),
    "inspect": ("formats", "inspect"),
    "resize": ("algebra", "resize"),
    "extract": ("algebra", "extract"),
    "train": ("train", "train"),
    "demo": ("demo", "demo"),
    "caption": ("caption", "caption"),
    "evaluate": ("evaluate", "evaluate"),
    "ui": ("ui", "ui"),
}
_GROUPS = {"toy": ("toy", "app")}


def _command_module(module: str):
    """The commands module of an area, or None when that area is not part of this install."""
    try:
        return importlib.import_module(f"lorakit.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"lorakit.commands.{module}":
            raise
        return None


def _register() -> None:
    if app.registered_commands or app.registered_groups:
        return
    for name, (module, attr) in _COMMANDS.items():
        fn = getattr(_command_module(module), attr, None)
        if fn is not None:
            app.command(name)(fn)
    for name, (module, attr) in _GROUPS.items():
        group = getattr(_command_module(module), attr, None)
        if group is not None:
            app.add_typer(group, name=name)


def main(argv: list[str] | None = None) -> int:
    from .errors import LoraKitError

    # library chatter (optional-backend notices, "newly initialized" reports) is not for our users
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except LoraKitError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click's own usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return 2
        raise
    return 0


def entry() -> None:
    sys.exit(main())
