"""The loss curve as a PNG (matplotlib) next to the TensorBoard logs that accelerate writes."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path


class LossHistory:
    """Per-step losses, kept in the resume state so a resumed run's curve is whole."""

    def __init__(self, steps: list[int] | None = None, losses: list[float] | None = None):
        self.steps = list(steps or [])
        self.losses = list(losses or [])

    def add(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)

    def state(self) -> dict:
        return {"steps": self.steps, "losses": self.losses}

    def smoothed(self, window: int | None = None) -> list[float]:
        window = window or max(1, len(self.losses) // 20)
        out, acc = [], 0.0
        for i, v in enumerate(self.losses):
            acc += v
            if i >= window:
                acc -= self.losses[i - window]
            out.append(acc / min(i + 1, window))
        return out

    def plot(self, path: Path, title: str = "training loss") -> None:
        """Write the curve atomically (a reader never sees half a PNG)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
        ax.plot(self.steps, self.losses, color="#9ecae1", linewidth=0.8, label="loss")
        if len(self.losses) > 2:
            ax.plot(self.steps, self.smoothed(), color="#08519c", linewidth=1.6, label="moving average")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        try:
            with atomic_path(path, suffix=".png") as tmp:
                fig.savefig(tmp)
        finally:
            plt.close(fig)
