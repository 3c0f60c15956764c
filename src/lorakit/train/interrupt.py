"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, save a resume state, exit 130 / 143.

The first signal only raises a flag, read by the loop between optimizer steps, so the state is
saved at a consistent point (never half an optimizer update). A second signal ends the process at
once: every file lorakit writes is atomic, so the last complete resume state stays as it was, and
what the cut-off save left half-done is cleaned up by the next run. Before the first step nothing
is worth saving, so a signal there stops the run straight away. An evaluation (`--evaluate`,
`--evaluate-every`) reads the flag before each image: a signal ends it there, without a report, and
the run stops as above (after the final one, the finished LoRA stays and the exit code is the same).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable

from ..errors import Interrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequests:
    """Signal handlers installed for the duration of a run (main thread only: signals go there)."""

    def __init__(self, last_state: Callable[[], Path | None]):
        self.signum: int | None = None
        self.armed = False  # True once training steps run: then a signal asks for a clean stop
        self.notice = "finishing this step, then saving a resume state"  # what the first signal does now
        self._last_state = last_state
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal_name(signum)
        if self.signum is not None:  # the second signal: stop now, leaving the last complete state
            last = self._last_state()
            where = f"the last complete resume state is {last}" if last else "no resume state was saved"
            os.write(2, f"\n{name} again: stopped at once; {where}\n".encode())
            os._exit(EXIT_CODES[signum])
        self.signum = signum
        if not self.armed:
            raise Interrupted(f"{name}: stopped before the first training step; nothing to resume",
                              EXIT_CODES[signum])
        again = "Ctrl-C" if signum == signal.SIGINT else name
        os.write(2, f"\n{name}: {self.notice} ({again} again stops at once)\n".encode())
