"""`--keep-best METRIC`: every evaluated step scored, and the best one kept as OUT.best.safetensors.

The scores of one step (a checkpoint):
- val-loss: the validation loss on the held-out images (lorakit.train.validation); lower is better;
- fidelity: subject fidelity at strength 1 on the LoRA's own prompts: on the toy world the
  scorer's share drawn as asked (exact there), else DINO against the held-out images (the
  training images when none are held out), else CLIP-I; higher is better;
- drift: what the LoRA moves on the prompts without its trigger (the class prompts among them),
  in the same measure as fidelity: the share of base-world prompts it broke (toy), else 1 − cosine
  of DINO or CLIP features against the base's image, else mean |Δpixel|; lower is better;
- combined: fidelity − drift. Fidelity and drift are the two things a LoRA trades (DreamBooth's
  subject fidelity against language drift) and both are on the same cosine (or share) scale, so
  equal weights say one point of fidelity is worth one point of drift. The validation loss is no
  part of it: it measures denoising, not what the images show (on the toy demo it was lowest at a
  step of lower fidelity, and moved by a few per cent while fidelity rose from 0.56 to 0.94).
  Without a fidelity measure, combined is the validation loss.

Equal scores go to the later step: a small evaluation set ties late steps often (16 held-out images
score in sixteenths), and of two checkpoints nothing tells apart the later one has trained more and
is the file users would take anyway. Breaking such ties by the validation loss picked a worse step
on the toy world (seed 1: step 600 of a 600–800 tie, 93.8 % against the last step's 95.8 % fidelity
on fresh prompts).

The board of scores lives in RUN_DIR/checkpoints.json, rewritten (atomically) after each
evaluation; a resumed run reads back the rows up to the step it resumes from (later ones came from
a future it retraces), so it keeps its best so far. A later step replaces the best when it scores
at least as well.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_text_atomic

METRICS = ("val-loss", "fidelity", "drift", "combined")
BOARD_FILE = "checkpoints.json"
HIGHER_IS_BETTER = {"val-loss": False, "fidelity": True, "drift": False, "combined": True}


@dataclass
class Scores:
    step: int
    val_loss: float | None = None
    fidelity: float | None = None
    drift: float | None = None
    measure: str | None = None  # what fidelity and drift were measured with
    combined: float | None = None

    def value(self, metric: str) -> float | None:
        return getattr(self, metric.replace("-", "_"))


def _toy(row0, row1):
    if row1.fidelity_trigger is None:
        return None
    drift = None if row1.fidelity_other is None or row0.fidelity_other is None else \
        row0.fidelity_other - row1.fidelity_other
    return row1.fidelity_trigger, drift


def scores(step: int, val_loss: float | None, report) -> Scores:
    """A step's scores from its validation loss and its evaluation (lorakit.evaluation.run.EvalReport)."""
    row0, row1 = report.row(0.0), report.row(1.0)
    measures = (("toy scorer", _toy(row0, row1)),
                ("DINO", (row1.subject_dino, row1.drift_dino_other)),
                ("CLIP", (row1.subject_clip, row1.drift_clip_other)))
    for name, pair in measures:
        if pair is not None and pair[0] is not None and pair[1] is not None:
            fid, drift = pair
            return Scores(step, val_loss, fid, drift, name, fid - drift)
    return Scores(step, val_loss, None, row1.drift_other, "pixels", None)


def rank_key(s: Scores, metric: str) -> tuple | None:
    """Larger is better; None when the step lacks what the metric needs."""
    if metric == "combined":
        if s.combined is not None:
            return (s.combined,)
        return None if s.val_loss is None else (-s.val_loss,)
    v = s.value(metric)
    if v is None or not math.isfinite(v):
        return None
    return (v if HIGHER_IS_BETTER[metric] else -v,)


class Board:
    """The scores of every evaluated step and the best one so far."""

    def __init__(self, metric: str | None, rows: list[Scores] | None = None, best: int | None = None):
        self.metric, self.rows, self.best = metric, list(rows or []), best

    @classmethod
    def load(cls, run_dir: Path, metric: str | None, up_to_step: int) -> "Board":
        path = Path(run_dir) / BOARD_FILE
        if up_to_step <= 0 or not path.is_file():
            return cls(metric)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rows = [Scores(**r) for r in doc.get("rows", []) if r["step"] <= up_to_step]
        except (OSError, ValueError, TypeError, KeyError):
            return cls(metric)  # an unreadable board: start a new one
        board = cls(metric, rows)
        best = doc.get("best")
        board.best = best if any(r.step == best for r in rows) else board._argbest()
        return board

    def _argbest(self) -> int | None:
        if not self.metric:
            return None
        keyed = [(rank_key(r, self.metric), r.step) for r in self.rows]
        keyed = [(k, s) for k, s in keyed if k is not None]
        if not keyed:
            return None
        top = max(k for k, _ in keyed)
        return max(s for k, s in keyed if k == top)  # ties: the later step

    def add(self, row: Scores) -> bool:
        """Record a step's scores; True when it is the new best."""
        self.rows = [r for r in self.rows if r.step != row.step] + [row]
        self.rows.sort(key=lambda r: r.step)
        if not self.metric:
            return False
        key = rank_key(row, self.metric)
        if key is None:
            return False
        current = next((r for r in self.rows if r.step == self.best), None)
        if current is None or current.step == row.step or key >= rank_key(current, self.metric):
            self.best = row.step
            return True
        return False

    def best_row(self) -> Scores | None:
        return next((r for r in self.rows if r.step == self.best), None)

    def why(self) -> str:
        """One sentence: which step won and by what."""
        best = self.best_row()
        if not self.metric:
            return "no --keep-best metric: nothing chosen"
        if best is None:
            return f"no step has a {self.metric} score yet"
        n = len(self.rows)
        if self.metric == "combined" and best.combined is None:
            return (f"step {best.step}: the lowest validation loss ({best.val_loss:.6g}) of {n} evaluated steps "
                    f"(no fidelity measure, so combined is the validation loss)")
        if self.metric == "combined":
            return (f"step {best.step}: the highest fidelity − drift, {best.fidelity:.4g} − {best.drift:.4g} = "
                    f"{best.combined:.4g} ({best.measure}), of {n} evaluated steps; ties go to the later "
                    f"step")
        word = "highest" if HIGHER_IS_BETTER[self.metric] else "lowest"
        return f"step {best.step}: the {word} {self.metric} ({best.value(self.metric):.6g}) of {n} evaluated steps"

    def as_dict(self) -> dict:
        return {"metric": self.metric, "best": self.best, "why": self.why(), "rows": [asdict(r) for r in self.rows]}

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / BOARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.as_dict(), indent=2) + "\n")
        return path


def best_path(out: Path) -> Path:
    """OUT.best.safetensors beside OUT."""
    out = Path(out)
    return out.with_name(out.stem + ".best" + (out.suffix or ".safetensors"))


def metadata(board: Board) -> dict[str, str]:
    """What the best file says about itself (safetensors metadata: strings)."""
    row = board.best_row()
    return {"lorakit_best_metric": str(board.metric), "lorakit_best_step": str(row.step),
            "lorakit_best_scores": json.dumps(asdict(row), sort_keys=True), "lorakit_best_why": board.why()}
