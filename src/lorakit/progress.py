"""Progress of the work before the first step or image: a base's load (bytes of the tensors read,
per component) and the caching passes, as tqdm bars like the steps' own.

tqdm draws them on the command line, and the page's `gr.Progress(track_tqdm=True)` shows any tqdm
bar made inside its request. The one hook added here is for listeners outside both: tqdm calls no
one back, and the training page runs the trainer in a thread that gradio's tracking does not see,
so `listening(fn)` hands that thread's updates to the page (ui/train_tab.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator


@dataclass(frozen=True)
class Stage:
    """What a listener is told: the bar's text, how far it is, and in what unit."""

    desc: str
    done: float
    total: float
    unit: str

    def text(self) -> str:
        if self.unit == "B":
            return f"{self.desc}: {_size(self.done)} of {_size(self.total)}"
        return f"{self.desc}: {self.done:g}/{self.total:g}"


_LISTENERS: ContextVar[tuple[Callable[[Stage], None], ...]] = ContextVar("lorakit_progress_listeners", default=())
_LOAD: ContextVar["Load | None"] = ContextVar("lorakit_load", default=None)


@contextmanager
def listening(fn: Callable[[Stage], None]) -> Iterator[None]:
    """`fn` gets every update of the bars made in this thread (or task) while the block runs."""
    token = _LISTENERS.set(_LISTENERS.get() + (fn,))
    try:
        yield
    finally:
        _LISTENERS.reset(token)


def _tell(stage: Stage) -> None:
    for fn in _LISTENERS.get():
        fn(stage)


def track(items: Iterable, desc: str, *, total: int | None = None, disable: bool = False) -> Iterator:
    """tqdm over `items` (a caching pass), each step also told to the listeners."""
    from tqdm.auto import tqdm

    total = len(items) if total is None and hasattr(items, "__len__") else total
    with tqdm(total=total, desc=desc, disable=disable) as bar:
        for done, item in enumerate(items, 1):
            yield item
            bar.update(1)
            _tell(Stage(desc, done, total or done, "it"))


class Load:
    """One base's load: `total` bytes of tensors in `name`, read component by component. Each component
    gets its own bar over the whole load (the page shows a bar's text as it was made, so a new text
    needs a new bar), starting where the previous one stopped."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, int(total), 0
        self.component: str | None = None
        self.parts: dict[str, int] = {}  # bytes read per component, in the order read
        self._bar = None

    def begin(self, component: str) -> None:
        from tqdm.auto import tqdm

        self._close()
        self.component = component
        self.parts.setdefault(component, 0)
        # shown on a terminal only (disable=None), like diffusers' own bars; the page tracks it all the same
        self._bar = tqdm(total=self.total, desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024,
                         leave=False, dynamic_ncols=True, disable=None)
        if self.done:
            self._bar.update(self.done)
        _tell(Stage(self.desc, self.done, self.total, "B"))

    @property
    def desc(self) -> str:
        return f"loading {self.name} · {self.component}"

    def read(self, nbytes: int) -> None:
        if self.component is None:
            self.begin("weights")
        self.done += nbytes
        self.parts[self.component] += nbytes
        if self.done > self.total:  # parts read from beside the file (--text-encoders): the total grows
            self.total = self._bar.total = self.done
        self._bar.update(nbytes)
        _tell(Stage(self.desc, self.done, self.total, "B"))

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def loading(name: str | Path, total: int) -> Iterator[Load]:
    """A base's load from `name` (its file or folder name is shown) of `total` tensor bytes. Inside a
    load already going (a single file's parts taken from a folder), the outer one goes on counting."""
    outer = _LOAD.get()
    if outer is not None:
        outer.total += total
        yield outer
        return
    load = Load(Path(str(name)).name or str(name), total)
    token = _LOAD.set(load)
    try:
        yield load
    finally:
        load._close()
        _LOAD.reset(token)


def begin(component: str) -> None:
    """The reads from here on are `component`'s (unet, vae, text_encoder, transformer...)."""
    load = _LOAD.get()
    if load is not None:
        load.begin(component)


def read(nbytes: int) -> None:
    """`nbytes` of tensors read by the load going on (none: nothing to count)."""
    load = _LOAD.get()
    if load is not None:
        load.read(int(nbytes))


def nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
