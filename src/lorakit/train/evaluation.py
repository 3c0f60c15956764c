"""`lorakit train --evaluate` / `--evaluate-every N`: the LoRA being trained, measured as
`lorakit evaluate` measures a file, with the weights in memory.

Each evaluation writes RUN_DIR/evaluate/step-NNNNNN/ (report.json, report.html, grid.png) and
logs the figures at strength 1 (and the grid) to TensorBoard under `evaluate/`. The strength-0
images (the base) are drawn once per run and kept. The held-out images (--validation-split,
--validation-data) are the reference for subject fidelity, else the training images of the
instance subsets (the first MAX_DATA_IMAGES of them). With held-out images each evaluation also
gives the validation loss (lorakit.train.validation); every step's scores go on the run's board
(lorakit.train.best), which the report shows and --keep-best chooses from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

STRENGTHS = (0.5, 1.0)
MAX_DATA_IMAGES = 32
LOGGED = ("subject_dino", "subject_clip", "prompt_clip", "prompt_clip_other", "drift_other", "drift_clip_other",
          "drift_dino_other", "drift_trigger", "fidelity_trigger", "fidelity_other")


def _components(trainer) -> None:
    """The VAE and text encoders back on the pipeline when the run let them go after caching."""
    pipe = trainer.model.pipe
    names = [n for n in pipe.components if n == "vae" or n.startswith("text_encoder")]
    if all(getattr(pipe, n, None) is not None for n in names):
        return
    from ..quantized import cast_module

    extra = trainer._load(("vae", "text_encoders")).pipe
    for name in names:
        module = getattr(extra, name, None)
        if getattr(pipe, name, None) is None and module is not None:
            cast_module(module.requires_grad_(False), trainer.acc.device, trainer.weight_dtype)
            pipe.register_modules(**{name: module})


def _prompts(trainer) -> tuple[list[str], list[bool] | None]:
    from ..evaluation.prompts import default_prompts
    from ..generate import read_prompt_file

    cfg = trainer.cfg
    if cfg.evaluate_prompts:
        return read_prompt_file(cfg.evaluate_prompts, "evaluation prompt file"), None
    return default_prompts(cfg.trigger, toy=getattr(trainer.model, "kind", None) == "toy",
                           captions=[it.caption for it in trainer.data.instance],
                           class_prompts=getattr(trainer, "class_prompts", ()) or ())


def evaluate_run(trainer) -> Path | None:
    """Evaluate the network as it is now (main process only); returns the report folder, or None when a
    stop was asked for (Ctrl-C, SIGTERM): then it ends before the next image and writes no report, and the
    trainer acts on the signal."""
    if not trainer.main:
        return None
    from ..evaluation.run import Stopped

    try:
        return _evaluate_run(trainer, stop=lambda: trainer.stops.signum is not None)
    except Stopped:
        return None


def _evaluate_run(trainer, stop) -> Path:
    from ..evaluation.run import Stopped, evaluate
    from ..evaluation.files import write_report
    from ..toy.evaluate import GUIDANCE

    cfg = trainer.cfg
    if stop():  # before the encoders load again
        raise Stopped
    _components(trainer)
    pipe = trainer.model.pipe
    net = trainer._unwrapped_network()
    from .validation import validation_loss

    val_loss = validation_loss(trainer)
    prompts, own = _prompts(trainer)
    toy = getattr(trainer.model, "kind", None) == "toy"
    reference = trainer.data.validation or trainer.data.instance
    scheduler, was_training = pipe.scheduler, net.training
    cache = trainer.__dict__.setdefault("_evaluation_base_images", {})
    net.eval()
    try:
        report = evaluate(trainer.model, [], prompts, own=own, network=net, strengths=STRENGTHS, trigger=cfg.trigger,
                          n=cfg.evaluate_n, seed=cfg.sample_seed, steps=cfg.sample_steps,
                          guidance=GUIDANCE if toy else cfg.sample_guidance, sampler="ddim" if toy else "euler_a",
                          width=cfg.resolution, height=cfg.resolution, progress=False,
                          data=[it.path for it in reference][:MAX_DATA_IMAGES],
                          clip_model=cfg.clip_model, dino_model=cfg.dino_model, base_cache=cache, stop=stop)
    finally:
        pipe.scheduler = scheduler  # generate() installs its sampler on the pipeline
        if was_training:
            net.train()
    report.loras = [{"path": str(cfg.out), "weight": 1.0, "step": trainer.step}]
    board = _score(trainer, val_loss, report)
    report.checkpoints = board.as_dict()
    out = trainer.run_dir / "evaluate" / f"step-{trainer.step:06d}"
    write_report(report, out, title=f"{Path(cfg.out).name} at step {trainer.step}")
    if cfg.tensorboard:
        row = report.row(1.0)
        logged = {f"evaluate/{k}": getattr(row, k) for k in LOGGED if getattr(row, k) is not None}
        if val_loss is not None:
            logged["evaluate/validation_loss"] = val_loss
        trainer.acc.log(logged, step=trainer.step)
        try:
            writer = trainer.acc.get_tracker("tensorboard", unwrap=True)
            writer.add_image("evaluate/grid", np.asarray(report.grid()), trainer.step, dataformats="HWC")
        except (ValueError, AttributeError, ImportError):  # no TensorBoard tracker, or one without images
            pass
    print(f"evaluation at step {trainer.step}: {out / 'report.html'}"
          + (f" (validation loss {val_loss:.6g})" if val_loss is not None else ""), file=sys.stderr)
    if cfg.keep_best:
        print(f"best so far by {cfg.keep_best}: {board.why()}", file=sys.stderr)
    for note in report.notes.values():
        print(f"note: {note}", file=sys.stderr)
    return out


def _score(trainer, val_loss, report):
    """This step's scores on the run's board; with --keep-best, OUT.best.safetensors rewritten when it wins."""
    from . import best

    cfg = trainer.cfg
    board = trainer.__dict__.get("_board")
    if board is None:
        board = trainer._board = best.Board.load(trainer.run_dir, cfg.keep_best, trainer.resumed_from)
    if board.add(best.scores(trainer.step, val_loss, report)) and cfg.keep_best:
        trainer.save_lora(best.best_path(cfg.out), trainer.step, final=False, extra=best.metadata(board))
    board.save(trainer.run_dir)
    return board
