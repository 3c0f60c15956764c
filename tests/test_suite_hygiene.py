"""The suite's own footprint: a passing run must not leave its big files in the temp folder.

The real-size single-file tests write GBs into tmp_path; pytest's default keeps every test's
folder for three runs, which filled CI's disk once. This runs a small suite under the project's
own pytest settings and measures what stays behind.
"""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ini_lines() -> str:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    kept = {k: v for k, v in options.items() if k.startswith("tmp_path")}
    return "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in kept.items())


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def test_a_passing_run_leaves_no_big_files_in_the_temp_folder(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pyproject.toml").write_text("[tool.pytest.ini_options]\n" + _ini_lines())
    (suite / "test_big.py").write_text(
        "def test_writes(tmp_path):\n"
        "    (tmp_path / 'big.bin').write_bytes(bytes(8 << 20))\n"
        "def test_writes_in_a_shared_folder(tmp_path_factory):\n"
        "    (tmp_path_factory.mktemp('shared') / 'big.bin').write_bytes(bytes(8 << 20))\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTEST_ADDOPTS": ""}
    for _ in range(2):  # a second run must not pile up on the first
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=suite, env=env,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    assert _bytes_under(temp) < (1 << 20), f"{_bytes_under(temp)} bytes left under {temp}"
