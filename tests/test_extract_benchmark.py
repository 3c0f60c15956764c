"""benchmarks/extract.py keeps running: its --quick mode (tiny SD 1.5 layout) end to end."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "extract.py"


def test_extract_benchmark_quick(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("extract_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--quick", "--skip-sdxl", "--work", str(tmp_path)])
    bench.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| SD 1.5")]
    assert len(rows) == 2, out
    streamed, whole = rows
    assert "lorakit extract (layer by layer)" in streamed and "unet: 72 modules" in streamed
    assert "te: 12 modules" in streamed  # the planted update reaches the text encoder
    assert "same file, tensor for tensor" in whole
    assert float(streamed.split("|")[2]) > 0
    assert not (SCRIPT.parent / "results" / "extract.json").exists() or '"quick": false' in \
        (SCRIPT.parent / "results" / "extract.json").read_text()  # --quick never overwrites the real figures
