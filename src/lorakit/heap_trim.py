"""Give freed host memory back to the OS: between a training step's forward and backward pass, after
each group of tensors a streamed load placed, and once generation releases its text encoders.

glibc keeps freed activation buffers in its heap for reuse; the backward's differently sized
allocations then land beside them, and the process's peak RSS grows. `malloc_trim(0)` returns the
free pages, and the next step pays for faulting them in again. Measured on a 256-px SD 1.5 step
(2-core CPU, fp32): −0.15 GB peak RSS for +0.35 s/step (+9 %). The trainer therefore trims only
with gradient checkpointing, where the user chose memory over time (4.36 GB peak there).
A no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _trim = getattr(_libc, "malloc_trim", None)
    except OSError:
        _trim = None


def release_free_memory() -> None:
    if _trim is not None:
        _trim(0)
