"""Crash safety of `lorakit train`: SIGKILL at six points (four inside saves) and `--resume`
give the uninterrupted run's LoRA bit for bit (fp32, CPU); Ctrl-C and SIGTERM save a resume state,
print the command that continues, and exit 130 / 143; in an evaluation, Ctrl-C stops it before the
next image; a second Ctrl-C stops at once; a full disk is one line naming the file while the last
good state stays loadable."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import crash_support as crash
from lorakit.train import state
from train_support import make_images, tiny_model_dir

STEPS, EVERY = 12, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("crash")


@pytest.fixture(scope="module")
def argv(root):
    """A run with everything random switched on: caption shuffle and dropout, flips, LoRA dropout,
    noise offset, a warm-up + cosine schedule (gradient accumulation: test_train.py's resume test)."""
    model = tiny_model_dir(root, "sd1")
    images = make_images(root / "images")
    return ["train", "--model", model, "--data", images, "--resolution", 32, "--bucket-step", 8, "--rank", 4,
            "--steps", STEPS, "--save-every", EVERY, "--keep-states", 2, "--scheduler", "cosine",
            "--warmup-steps", 2, "--shuffle-caption", "--flip", "--caption-dropout", 0.2, "--dropout", 0.1,
            "--noise-offset", 0.1, "--trigger", "sks", "--lr", 1e-3, "--seed", 7, "--save-dtype", "fp32",
            "--no-progress", "--no-tensorboard"]


def _with_out(argv, out: Path) -> list:
    return [*argv, "--out", out]


@pytest.fixture(scope="module")
def reference(root, argv):
    """The uninterrupted run: its LoRA tensors and its loss curve."""
    out = root / "ref" / "lora.safetensors"
    code = crash.run(_with_out(argv, out), root / "ref.log")
    assert code == 0, (root / "ref.log").read_text()
    return load_file(out), _history(out.with_name("lora-run"))


def _history(run_dir: Path) -> dict:
    return json.loads((state.list_states(run_dir)[-1] / state.STATE_FILE).read_text())["history"]


def _steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1][:6]) for p in state.list_states(run_dir)]


def _assert_states_load(run_dir: Path) -> None:
    """Every state lorakit lists is whole: its weights read back and its JSON parses."""
    for s in state.list_states(run_dir):
        assert load_file(s / "model.safetensors"), s
        assert json.loads((s / state.STATE_FILE).read_text())["step"] == int(s.name[6:12])


def _same_lora(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def test_sigkill_anywhere_then_resume_is_bit_exact(root, argv, reference):
    out = root / "killed" / "lora.safetensors"
    run_dir = out.with_name("lora-run")
    first = _with_out(argv, out)
    again = [*first, "--resume", run_dir]
    # (fault, latest complete state afterwards); micro-steps count from 0, one per step
    kills = [
        (("kill_at_micro", 3), 2),                             # in the forward/backward of step 4
        (("kill_in_state_file", 4, "model.safetensors"), 2),   # inside accelerate's save of state 4
        (("kill_in_file", "lora-000006.safetensors"), 6),      # inside the LoRA snapshot, after state 6
        (("kill_before_state_rename", 8), 6),                  # state 8 written, its JSON half, not renamed
        (("kill_after_state_rename", 10), 10),                 # state 10 renamed, older ones not yet pruned
        (("kill_in_file", "lora.safetensors"), 12),            # inside the final LoRA write
    ]
    for i, (fault, latest) in enumerate(kills):
        log = root / f"kill{i}.log"
        code = crash.run(first if i == 0 else again, log, [fault])
        assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{log.read_text()}"
        assert _steps(run_dir)[-1] == latest, (fault, _steps(run_dir))
        _assert_states_load(run_dir)
        assert not out.exists(), "a LoRA appeared before the run finished"
        snapshots = sorted(run_dir.glob("lora-*.safetensors"))
        assert all(load_file(p) for p in snapshots)  # never half a file under a real name
    assert list(run_dir.glob(".lora.safetensors.*")) or list(out.parent.glob(".lora.safetensors.*.tmp")), \
        "the last kill should have left the final LoRA's temporary file"

    code = crash.run(again, root / "final.log")
    assert code == 0, (root / "final.log").read_text()
    want, want_history = reference
    _same_lora(load_file(out), want)
    assert _history(run_dir) == want_history  # the loss curve is whole and equal, step by step
    leftovers = [p.name for p in [*run_dir.iterdir(), *out.parent.iterdir()]
                 if p.name.startswith(".") or p.name.endswith((".tmp", ".old"))]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert _steps(run_dir) == [10, 12]


def _signalled(root, argv, name: str, faults: list, signals: list[tuple[Path, int]]):
    """Start a run, send each signal once its marker file appears; the exit code and the log."""
    out = root / name / "lora.safetensors"
    log = root / f"{name}.log"
    proc = crash.start(_with_out(argv, out), log, faults)
    for marker, sig in signals:
        crash.wait_for(marker, proc)
        os.kill(proc.pid, sig)
    proc.join(60)
    assert not proc.is_alive()
    return proc.exitcode, log.read_text(), out


def test_ctrl_c_saves_state_prints_resume_command_and_exits_130(root, argv, reference):
    marker = root / "int.here"
    code, log, out = _signalled(root, argv, "int", [("pause_at_micro", 4, str(marker))], [(marker, signal.SIGINT)])
    run_dir = out.with_name("lora-run")
    assert code == 130, log
    lines = log.strip().splitlines()
    assert f"SIGINT: stopped at step 5 of {STEPS}; the resume state is {run_dir / 'state-000005'}" in lines, log
    assert "Traceback" not in log
    assert _steps(run_dir) == [4, 5] and not out.exists()
    _assert_states_load(run_dir)
    command = [ln for ln in lines if ln.startswith("resume with: ")]
    assert len(command) == 1, log
    resume = shlex.split(command[0][len("resume with: "):])
    assert resume[:2] == ["lorakit", "train"] and resume[-2:] == ["--resume", str(run_dir)]
    code = crash.run(resume[1:], root / "int-resumed.log")  # the printed command, as given
    assert code == 0, (root / "int-resumed.log").read_text()
    _same_lora(load_file(out), reference[0])


def test_sigterm_saves_state_and_exits_143(root, argv):
    marker = root / "term.here"
    code, log, out = _signalled(root, argv, "term", [("pause_at_micro", 1, str(marker))],
                                [(marker, signal.SIGTERM)])
    run_dir = out.with_name("lora-run")
    assert code == 143, log
    assert f"SIGTERM: stopped at step 2 of {STEPS}; the resume state is {run_dir / 'state-000002'}" in log, log
    assert "resume with: lorakit train" in log and "Traceback" not in log
    assert _steps(run_dir) == [2]  # the regular save of step 2 is the state: not written twice
    _assert_states_load(run_dir)


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_good_state(root, argv):
    first, second = root / "int2.first", root / "int2.second"
    # Ctrl-C in step 3; stopping then saves state 3, and a second Ctrl-C lands inside that save
    faults = [("pause_at_micro", 2, str(first)), ("pause_in_state_file", 3, "model.safetensors", str(second))]
    code, log, out = _signalled(root, argv, "int2", faults, [(first, signal.SIGINT), (second, signal.SIGINT)])
    run_dir = out.with_name("lora-run")
    assert code == 130, log
    assert f"SIGINT again: stopped at once; the last complete resume state is {run_dir / 'state-000002'}" in log
    assert _steps(run_dir) == [2]
    _assert_states_load(run_dir)
    assert (run_dir / "state-000003.tmp").is_dir()  # the save it cut short, never taken for a state
    assert not out.exists()


@pytest.mark.parametrize("when", ["final", "during"])
def test_ctrl_c_in_an_evaluation_stops_before_its_next_image(root, argv, reference, when):
    """Evaluations at steps 4 and 8 and at the end, 2 prompts: 3 × 2 images at step 4, 2 × 2 at each later
    one (the strength-0 images are kept). Ctrl-C while the final evaluation draws its 2nd image (the 12th
    in all): no image after it, no report for step 12, the reports of steps 4 and 8 and the finished
    LoRA (the uninterrupted run's) stay, exit 130. Ctrl-C in the evaluation at step 4: the run stops
    there as between steps, with its resume state and command."""
    prompts = root / "evaluate-prompts.txt"
    prompts.write_text("sks, a square\na red house\n")
    evaluating = [*argv, "--evaluate-every", 4, "--evaluate-prompts", prompts, "--evaluate-n", 1, "--sample-steps", 1,
                  "--clip-model", "none", "--dino-model", "none"]
    marker = root / f"eval-{when}.here"
    pause_at = 12 if when == "final" else 2
    code, log, out = _signalled(root, evaluating, f"eval-{when}", [("pause_at_evaluation_image", pause_at, str(marker))],
                                [(marker, signal.SIGINT)])
    run_dir = out.with_name("lora-run")
    assert code == 130, log
    assert "Traceback" not in log
    drawn = [ln for ln in log.splitlines() if ln.startswith("evaluation image ")]
    assert drawn[-1] == f"evaluation image {pause_at}", log
    folders = list((run_dir / "evaluate").iterdir()) if (run_dir / "evaluate").is_dir() else []
    reports = sorted(p.name for p in folders if (p / "report.json").is_file())
    if when == "final":
        assert f"SIGINT: stopped during the evaluation at step {STEPS}; the LoRA {out} is complete" in log, log
        assert "resume with" not in log
        assert reports == ["step-000004", "step-000008"]
        _same_lora(load_file(out), reference[0])
    else:
        assert f"SIGINT: stopped at step 4 of {STEPS}; the resume state is {run_dir / 'state-000004'}" in log, log
        assert "resume with: lorakit train" in log
        assert reports == [] and _steps(run_dir) == [2, 4] and not out.exists()
    assert len(reports) == len(folders)  # no half-written report


@pytest.mark.parametrize("fault, failing, good", [
    (("enospc_in_state_file", 4, "model.safetensors"), "state-000004/model.safetensors", "state-000002"),
    (("enospc_in_file", "lora-000004.safetensors"), "lora-000004.safetensors", "state-000004"),
], ids=["resume-state", "lora-snapshot"])
def test_full_disk_is_one_line_naming_the_file_and_keeps_the_last_good_state(root, argv, reference, fault,
                                                                              failing, good):
    out = root / f"full-{failing.split('/')[0]}" / "lora.safetensors"
    run_dir = out.with_name("lora-run")
    log = root / f"full-{good}.log"
    assert crash.run(_with_out(argv, out), log, [fault]) == 2, log.read_text()
    text = log.read_text()
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {run_dir / failing}: cannot write (no space left on device); the last good resume "
                      f"state {run_dir / good} is intact: free some space, then continue with --resume {run_dir}"], text
    assert "Traceback" not in text
    assert state.list_states(run_dir)[-1].name == good
    _assert_states_load(run_dir)
    left = [p.name for p in run_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not left and not (run_dir / failing).exists()
    if "state" in failing:  # the disk has room again: the run continues from the last good state
        code = crash.run([*_with_out(argv, out), "--resume", run_dir], root / f"full-{good}-resumed.log")
        assert code == 0
        _same_lora(load_file(out), reference[0])
