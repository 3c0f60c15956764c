"""An evaluation's files in one folder: report.json (every figure), report.html (the page, images
inline) and grid.png (the labelled strength × prompt grid), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoraKitError
from ..atomic import write_bytes_atomic
from ..generate import save_png
from . import page

REPORT_JSON, REPORT_HTML, GRID_PNG = "report.json", "report.html", "grid.png"


def write_report(report, out: Path, title: str | None = None) -> dict[str, Path]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LoraKitError("--out must be a folder for the report (report.json, report.html, grid.png)", out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / REPORT_JSON, "html": out / REPORT_HTML, "grid": out / GRID_PNG}
    doc = report.as_dict()
    doc["files"] = {k: p.name for k, p in paths.items()}
    doc["legend"] = page.LEGEND
    write_bytes_atomic(paths["json"], (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    save_png(report.grid(), paths["grid"])
    write_bytes_atomic(paths["html"], page.render(report, title).encode("utf-8"))
    return paths
