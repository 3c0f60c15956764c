"""benchmarks/demo_seeds.py runs end to end (its quick mode), so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]


def test_demo_seeds_quick(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "demo_seeds.py"), "--quick", "--work",
                           str(tmp_path), "--set", "prior_weight=1.5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 0 |" in done.stdout and "| **minimum** |" in done.stdout
    report = json.loads((tmp_path / "seed-0" / "report.json").read_text())
    assert report["steps"] == 4 and report["n_images"] == {"concept": 2, "base": 2}
    with safe_open(str(tmp_path / "seed-0" / "lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_prior_loss_weight"] == "1.5"  # --set reached the training run
    saved = json.loads((ROOT / "benchmarks" / "results" / "demo_seeds_quick.json").read_text())
    assert saved["overrides"] == {"prior_weight": 1.5} and saved["seeds"]["0"]["report"] == report
