"""Resume states: accelerate's `save_state` (LoRA weights, optimizer, scheduler, RNG) plus
`lorakit_state.json` (step, config, loss history), written to a temporary folder and renamed.

A state folder exists complete or not at all; older ones are deleted only after the new one
is in place, so an interrupted save never loses the last good state.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..errors import LoraKitError

STATE_FILE = "lorakit_state.json"
_STATE_DIR = re.compile(r"^state-(\d+)$")


def state_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"state-{step:06d}"


def find_state(path: Path) -> Path:
    """`path` itself if it is a state, else the latest state inside it (a run folder)."""
    path = Path(path)
    if not path.exists():
        raise LoraKitError("resume folder does not exist", path)
    if (path / STATE_FILE).is_file():
        return path
    states = list_states(path)
    if not states:
        raise LoraKitError(f"not a resume state (no {STATE_FILE}) and holds no state-NNNNNN folders", path)
    return states[-1]


def list_states(run_dir: Path) -> list[Path]:
    if not Path(run_dir).is_dir():
        return []
    found = [(int(m[1]), p) for p in Path(run_dir).iterdir() if (m := _STATE_DIR.match(p.name))
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def read_state(path: Path) -> dict:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LoraKitError(f"cannot read the resume state ({exc.__class__.__name__}: {exc})", path) from None


def check_compatible(state: dict, fingerprint: dict, path: Path, *, steps_may_grow: bool) -> None:
    """Refuse a state written by a run with other settings (listing what differs)."""
    saved = state.get("config", {})
    diffs = []
    for key, value in fingerprint.items():
        if key == "steps" and steps_may_grow and isinstance(saved.get(key), int) and value >= state.get("step", 0):
            continue
        if key in saved and saved[key] != value:
            diffs.append(f"{key} {saved[key]!r} → {value!r}")
        elif key not in saved:
            diffs.append(f"{key} (not in the state)")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise LoraKitError(f"this resume state comes from another config: {shown}", path)


def save(accelerator, run_dir: Path, step: int, info: dict, keep: int) -> Path:
    """Write state-NNNNNN atomically (all processes call this) and prune old states."""
    final = state_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(info, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_states(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
