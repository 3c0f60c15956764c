"""Runs `lorakit train` in real child processes that die or get signalled at chosen points.

A fork server imports torch, diffusers and lorakit once, so each run starts in well under a
second instead of ~10 s; each child is its own process, so SIGKILL, SIGINT and SIGTERM act on it
exactly as on a `lorakit train` started from a shell. The child enters through `lorakit.cli.main`,
the function the `lorakit` console script calls. A fault names where the child interferes with
itself: it kills itself there (leaving whatever was being written half done), pauses there until
a signal arrives, or makes a write fail with ENOSPC.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

_CTX = None
PAUSE_LIMIT_S = 20.0


def _warm() -> None:
    """Import what a training run imports lazily, once in the fork server rather than in every child."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 (the loss curve)
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    import lorakit.commands.train  # noqa: F401
    import lorakit.formats  # noqa: F401
    import lorakit.models.loader  # noqa: F401
    import lorakit.train.loop  # noqa: F401


_warm()


def context():
    global _CTX
    if _CTX is None:
        # the fork server imports its preload list with the environment's path, not pytest's sys.path
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["crash_support"])
    return _CTX


def start(argv: list, log: Path, faults: list[tuple] = ()):
    """Start `lorakit ARGV` in a child; its stdout and stderr go to LOG."""
    p = context().Process(target=_child, args=([str(a) for a in argv], str(log), list(faults)), daemon=True)
    p.start()
    return p


def run(argv: list, log: Path, faults: list[tuple] = (), timeout: float = 120) -> int:
    """Run to the end; the exit code (negative: killed by that signal)."""
    p = start(argv, log, faults)
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise TimeoutError(f"lorakit {' '.join(map(str, argv))} still running after {timeout} s")
    return p.exitcode


def wait_for(path: Path, proc, timeout: float = 60) -> None:
    """Until PATH exists (a child writes it when it reaches its pause point)."""
    t0 = time.time()
    while not path.exists():
        if not proc.is_alive():
            raise RuntimeError(f"the child ended (exit {proc.exitcode}) before reaching {path.name}")
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)


# --- in the child ---------------------------------------------------------------------------------
def _child(argv: list[str], log: str, faults: list[tuple]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(1)  # the same arithmetic in every child and the reference run
    for fault in faults:
        _install(*fault)
    from lorakit.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def _halve(path) -> None:
    """Cut a file to half its size: what a kill in the middle of writing it leaves."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _pause(marker: str, until) -> None:
    Path(marker).write_text("here")
    t0 = time.time()
    while not until() and time.time() - t0 < PAUSE_LIMIT_S:
        time.sleep(0.01)


def _install(kind: str, *args) -> None:
    import accelerate.checkpointing as ckpt

    from lorakit import atomic
    from lorakit.train import loop, state

    if kind in ("kill_at_micro", "pause_at_micro"):
        micro_step = loop.Trainer.micro_step

        def patched(self, micro):
            if micro == args[0]:
                if kind == "kill_at_micro":
                    _die()
                _pause(args[1], lambda: self.stops.signum is not None)
            return micro_step(self, micro)

        loop.Trainer.micro_step = patched

    elif kind in ("kill_in_state_file", "pause_in_state_file", "enospc_in_state_file"):
        # accelerate's save_state writes model.safetensors, optimizer.bin … through checkpointing.save
        step, name = args[0], args[1]
        save = ckpt.save

        def patched(obj, f, *a, **kw):
            hit = Path(f).name == name and Path(f).parent.name == f"state-{step:06d}.tmp"
            if hit and kind == "enospc_in_state_file":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            save(obj, f, *a, **kw)
            if hit and kind == "kill_in_state_file":
                _halve(f)
                _die()
            if hit and kind == "pause_in_state_file":
                _pause(args[2], lambda: False)

        ckpt.save = patched

    elif kind in ("kill_before_state_rename", "kill_after_state_rename"):
        step = args[0]
        commit = state.commit_dir

        def patched(tmp, final):
            hit = Path(final).name == f"state-{step:06d}"
            if hit and kind == "kill_before_state_rename":
                _halve(Path(tmp) / state.STATE_FILE)
                _die()
            commit(tmp, final)
            if hit:
                _die()

        state.commit_dir = patched

    elif kind in ("kill_in_file", "enospc_in_file"):
        # every file lorakit writes itself passes through atomic_path, which fsyncs it before the rename
        name = args[0]
        fsync = atomic._fsync_file

        def patched(tmp):
            if Path(tmp).name.startswith(f".{name}."):
                if kind == "enospc_in_file":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
                _halve(tmp)
                _die()
            fsync(tmp)

        atomic._fsync_file = patched
    elif kind == "pause_at_evaluation_image":
        # every image an evaluation draws is one generate() call, logged; at call args[0] it pauses until
        # the run has seen a signal (the trainer is taken from the evaluation's own argument)
        from lorakit.evaluation import run as ev

        evaluate_run, generate, seen = loop.evaluate_run, ev.generate, {"calls": 0, "trainer": None}

        def patched_run(trainer, *a, **kw):
            seen["trainer"] = trainer
            return evaluate_run(trainer, *a, **kw)

        def patched_generate(*a, **kw):
            seen["calls"] += 1
            print(f"evaluation image {seen['calls']}", file=sys.stderr, flush=True)
            if seen["calls"] == args[0]:
                _pause(args[1], lambda: seen["trainer"].stops.signum is not None)
            return generate(*a, **kw)

        loop.evaluate_run, ev.generate = patched_run, patched_generate
    else:
        raise ValueError(kind)
