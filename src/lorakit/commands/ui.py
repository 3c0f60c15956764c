"""`lorakit ui`: the web UI."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .options import ALLOW_PICKLE


def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="address to serve on (default: this machine only)"),
    port: int = typer.Option(7860, "--port"),
    model: str = typer.Option("toy", "--model", help="base model pre-filled in the forms"),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir", help="a LoRA library folder (repeatable)"),
    data_dir: Optional[List[Path]] = typer.Option(None, "--data-dir",
                                                  help="a folder of datasets, models or results the page may use "
                                                       "(repeatable)"),
    out_dir: Path = typer.Option(Path("outputs"), "--out-dir", help="where generated images are saved"),
    share: bool = typer.Option(False, "--share", help="ask gradio for a public link (needs a network)"),
    allow_pickle: bool = ALLOW_PICKLE,
) -> None:
    """Open lorakit in a browser. Paths typed in the page must lie under --lora-dir, --data-dir or
    --out-dir (or folders added in its Settings)."""
    from ..ui.app import build_app
    from ..ui.studio import LOOPBACK, Studio

    studio = Studio(lora_dirs=lora_dir or [], data_dirs=data_dir or [], out_dir=out_dir, default_model=model,
                    recent_file=Path.home() / ".cache" / "lorakit" / "ui-recent-models.json",
                    locked=share or host not in LOOPBACK)
    build_app(studio, allow_pickle=allow_pickle).queue().launch(server_name=host, server_port=port, share=share,
                                                                inbrowser=False)
