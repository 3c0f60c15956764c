"""benchmarks/extract.py keeps running: its --quick mode (tiny SD 1.5 layout) end to end."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_extract_benchmark_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extract.py"), "--quick", "--skip-sdxl",
                           "--work", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| SD 1.5")]
    assert len(rows) == 2, done.stdout
    streamed, whole = rows
    assert "lorakit extract (layer by layer)" in streamed and "unet: 72 modules" in streamed
    assert "same file, tensor for tensor" in whole
    seconds, rss = (float(c) for c in streamed.split("|")[2:4])
    assert seconds > 0 and 0 < rss < 4
