"""Resume states: accelerate's `save_state` (LoRA weights, optimizer, scheduler, RNG) plus
`lorakit_state.json` (step, config, loss history), written to a temporary folder and renamed.

A state folder exists complete or not at all; older ones are deleted only after the new one
is in place, so an interrupted save never loses the last good state. A state moved aside while
a newer copy of the same step was renamed in (`state-N.old`, see lorakit.atomic) still counts.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..atomic import commit_dir, final_name, remove_stale_temporaries, write_failure
from ..errors import LoraKitError

STATE_FILE = "lorakit_state.json"
_STATE_DIR = re.compile(r"^state-(\d+)(\.old)?$")
_STATE_TMP = re.compile(r"^state-\d+\.tmp$")


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
    """Complete states, oldest first (for one step, `state-N` wins over a moved-aside `state-N.old`)."""
    if not Path(run_dir).is_dir():
        return []
    found: dict[int, Path] = {}
    for p in Path(run_dir).iterdir():
        m = _STATE_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file() and (int(m[1]) not in found or not m[2]):
            found[int(m[1])] = p
    return [found[k] for k in sorted(found)]


def remove_partial(run_dir: Path) -> None:
    """Delete what a killed save left behind: unfinished state folders and temporary files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    complete = {p.name for p in list_states(run_dir)}
    for p in run_dir.iterdir():
        if _STATE_TMP.match(p.name) or (_STATE_DIR.match(p.name) and p.name not in complete and p.is_dir()):
            shutil.rmtree(p, ignore_errors=True)
    remove_stale_temporaries(run_dir)


def read_state(path: Path) -> dict:
    try:
        return json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise LoraKitError(f"cannot read the resume state ({exc.__class__.__name__}: {exc})", path) from None


def check_compatible(state: dict, fingerprint: dict, path: Path, *, steps_may_grow: bool,
                     defaults: dict | None = None) -> None:
    """Refuse a state written by a run with other settings (listing what differs). An option the state
    does not name (it predates the option) matches when it has its default value (`defaults`): the
    run that wrote the state behaved as that default does."""
    saved = state.get("config", {})
    defaults = defaults or {}
    diffs = []
    for key, value in fingerprint.items():
        if key == "steps" and steps_may_grow and isinstance(saved.get(key), int) and value >= state.get("step", 0):
            continue
        if key in saved and saved[key] != value:
            diffs.append(f"{key} {saved[key]!r} → {value!r}")
        elif key not in saved and not (key in defaults and defaults[key] == value):
            diffs.append(f"{key} (not in the state)")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise LoraKitError(f"this resume state comes from another config: {shown}", path)


def save(accelerator, run_dir: Path, step: int, info: dict, keep: int) -> Path:
    """Write state-NNNNNN atomically (all processes call this) and prune old states.

    accelerate's `save_state` writes one file per process into a folder every process must name
    alike, hence the fixed temporary name `state-NNNNNN.tmp` (not a random one).
    """
    final = state_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(info, indent=1))
            commit_dir(tmp, final)
            for old in list_states(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    except Exception as exc:  # torch.save reports a full disk as a RuntimeError, safetensors as its own
        if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "SafetensorError":
            raise
        err = write_failure(exc, final_name(exc, tmp, final))  # (before the clean-up frees space)
        shutil.rmtree(tmp, ignore_errors=True)
        raise err from None
    accelerator.wait_for_everyone()
    return final
