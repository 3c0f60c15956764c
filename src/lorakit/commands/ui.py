"""`lorakit ui`: the web UI."""

from __future__ import annotations

import typer

from .options import ALLOW_PICKLE


def ui(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7860, "--port"),
    model: str = typer.Option("toy", "--model", help="base model pre-filled in the forms"),
    share: bool = typer.Option(False, "--share", help="ask gradio for a public link (needs a network)"),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Open lorakit in a browser."""
    from ..ui.app import build_app

    build_app(model, allow_pickle=allow_pickle).queue().launch(server_name=host, server_port=port, share=share, inbrowser=False)
