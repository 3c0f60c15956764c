"""The `lorakit` command: a typer app whose commands live in lorakit/commands/, one module per area.

Every LoraKitError becomes one line on stderr and exit code 2 (`lorakit --debug …` adds its
traceback), and so does an OSError about a path (a read-only folder, a full disk) or a MemoryError;
nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, use, combine and convert LoRA adapters for Stable Diffusion and Flux.1.")

_STATE = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error, and "
                                                                  "other packages' warnings")) -> None:
    _STATE["debug"] = debug


# command name → (module in lorakit.commands, function); imported lazily so `lorakit --help` is fast
_COMMANDS = {
    "generate": ("generate", "generate"),
    "merge": ("merge", "merge"),
    "convert": ("formats", "convert"),
    "inspect": ("formats", "inspect"),
    "check": ("check", "check"),
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
            app.command(name, cls=getattr(fn, "command_class", None))(fn)
    for name, (module, attr) in _GROUPS.items():
        group = getattr(_command_module(module), attr, None)
        if group is not None:
            app.add_typer(group, name=name)


# the command line of the running command, as the user typed it (a resume hint repeats it)
invocation: list[str] = []


def main(argv: list[str] | None = None) -> int:
    from .errors import Interrupted, LoraKitError

    invocation[:] = ["lorakit", *(sys.argv[1:] if argv is None else [str(a) for a in argv])]

    # library chatter (optional-backend notices, "newly initialized" reports) is not for our users
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    args = sys.argv[1:] if argv is None else list(argv)
    _STATE["debug"] = _debug_requested(args)
    _silence_library_warnings(args)

    _register()
    usage_errors, aborts = _click_exception_types()
    try:
        app(args=args, prog_name="lorakit", standalone_mode=False)
    except LoraKitError as exc:
        return _fail(" ".join(str(exc).split()))  # one line, whatever the message holds
    except OSError as exc:
        # a path the user gave that cannot be read or written (read-only folder, full disk, a file
        # where a folder should be): theirs to fix, so one line; an OSError without a path is a bug
        if exc.filename is None:
            raise
        return _fail(f"{exc.filename}: {exc.strerror or exc.__class__.__name__}")
    except MemoryError:
        return _fail("out of memory: lower the size (--width/--height, --n, --batch-size, --resolution)")
    except Interrupted as exc:
        typer.echo(str(exc), err=True)
        return exc.exit_code
    except usage_errors as exc:  # a mistyped or missing option: click's usage message
        exc.show()
        return exc.exit_code
    except aborts:
        typer.echo("aborted", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _fail(message: str) -> int:
    """The error as one line and exit code 2; with --debug the traceback first."""
    if _STATE["debug"]:
        import traceback

        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    return 2


# Packages whose warnings speak to their own developers (deprecations of arguments lorakit passes,
# internal notices): a lorakit user cannot act on them. lorakit's own warnings are not filtered.
_LIBRARY_WARNINGS = r"(diffusers|transformers|accelerate|huggingface_hub|peft|torch|torchvision|gradio|tqdm)(\.|$)"


def _debug_requested(args: list[str]) -> bool:
    """`--debug` before the command name (the global option), read before typer parses anything so
    that warnings raised while commands import are already handled the right way."""
    for arg in args:
        if arg == "--debug":
            return True
        if not arg.startswith("-"):
            return False
    return False


def _silence_library_warnings(args: list[str] | None = None) -> None:
    """Keep other packages' warnings off the user's terminal (`--debug` or PYTHONWARNINGS bring them back)."""
    if os.environ.get("PYTHONWARNINGS") or _debug_requested(sys.argv[1:] if args is None else args):
        return
    warnings.filterwarnings("ignore", module=_LIBRARY_WARNINGS)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """click's usage-error and abort classes, wherever this typer keeps them.

    typer ≥ 0.29 vendors click as `typer._click`, whose exceptions are not `click`'s; catching only
    `click.ClickException` turned every usage error into a traceback there.
    """
    usage, aborts = [], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        aborts.append(getattr(module, "Abort", typer.Abort))
    return tuple(usage), tuple(aborts)


def entry() -> None:
    sys.exit(main())
