"""Options shared by several commands, defined once so their name and help never drift apart."""

from __future__ import annotations

import typer

from ..pickles import PICKLE_HELP

# every command that reads a model or a LoRA takes this; typer reads the default, never mutates it
ALLOW_PICKLE = typer.Option(False, "--allow-pickle", help=PICKLE_HELP)


def _family_help() -> str:
    from .. import families

    return f"the model family ({', '.join(families.names())}) when the file cannot tell"


def _text_encoders_help() -> str:
    from dataclasses import fields

    from ..train.config import TrainConfig

    return next(f.metadata["help"] for f in fields(TrainConfig) if f.name == "text_encoders")


FAMILY = typer.Option(None, "--family", help=_family_help())
# the wording of `train --text-encoders`, so that the three commands never describe it apart
TEXT_ENCODERS = typer.Option(None, "--text-encoders", help=_text_encoders_help())


def _base_precision_help() -> str:
    from ..models.base_precision import HELP

    return HELP


# the wording of `train --base-precision`'s choices, shared by generate, evaluate and demo
BASE_PRECISION = typer.Option("auto", "--base-precision", help=_base_precision_help())
