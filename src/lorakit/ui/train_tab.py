"""The Train tab: `lorakit train` from the browser, with the loss curve and the latest sample grid
refreshed while it runs, and a Stop button that keeps a resumable state.

Training runs in a background thread (`TrainJob`) so that the page can poll it; the thread is the
same `lorakit.train.run` the CLI calls, so a run started here writes the same files, logs and
resume states. One job runs at a time per server: two trainings on one GPU would only fight.
"""

from __future__ import annotations

import tempfile
import threading
import time
import tomllib
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import LoraKitError

PRESETS = ["transformer", "attn", "cross-attn", "attn-mlp", "full"]
OPTIMIZERS = ["adamw", "adamw8bit", "lion", "prodigy", "adafactor"]
SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]


TEXT_ENCODER_CHOICES = {"auto": None, "yes": True, "no": False}


def _text_encoder_choice(value) -> bool | None:
    return TEXT_ENCODER_CHOICES.get(value, value) if isinstance(value, str) else value


def train_config(model: str, data: str, trigger: str, out: str, preset: str, rank: int, alpha: float,
                 conv_rank: int, steps: int, lr: float, batch_size: int, resolution: int, optimizer: str,
                 scheduler: str, train_text_encoder, class_prompt: str, class_data: str,
                 sample_prompts: str, sample_every: int, save_every: int, extra_toml: str = "",
                 resume: str = "", check=None):
    """The form as a TrainConfig. `extra_toml` takes any other option by its config name (the keys
    of `lorakit train --print-config`, with or without their [section] tables), applied last.
    `check(cfg)` sees the config before anything is written and gives the one to use (the page's
    path guard)."""
    from ..train.config import TrainConfig

    def text(value) -> str | None:
        value = (value or "").strip()
        return value or None

    if not text(data):
        raise LoraKitError("choose the training images: a folder, or a dataset TOML")
    if not text(out):
        raise LoraKitError("choose where to write the LoRA (a .safetensors file)")
    if not text(model):
        raise LoraKitError("choose a base model (a folder, a .safetensors file, a hub id or 'toy')")
    values = dict(model=text(model), data=text(data), trigger=text(trigger), out=text(out), preset=preset,
                  rank=int(rank), alpha=float(alpha) if alpha else None, conv_rank=int(conv_rank) or None,
                  steps=int(steps), lr=float(lr), batch_size=int(batch_size), resolution=int(resolution),
                  optimizer=optimizer, scheduler=scheduler, train_text_encoder=_text_encoder_choice(train_text_encoder),
                  class_prompt=text(class_prompt), class_data=text(class_data), sample_every=int(sample_every),
                  save_every=int(save_every), resume=text(resume))
    cfg = TrainConfig().override(values, source="the form")
    if text(extra_toml):
        try:
            doc = tomllib.loads(extra_toml)
        except tomllib.TOMLDecodeError as exc:
            raise LoraKitError(f"more options: not TOML ({exc})") from None
        flat = {}
        for key, value in doc.items():
            flat.update(value if isinstance(value, dict) else {key: value})
        cfg = cfg.override(flat, source="more options")
    if check is not None:
        cfg = check(cfg)
    prompts = [p.strip() for p in (sample_prompts or "").splitlines() if p.strip()]
    if prompts:
        path = cfg.resolved_run_dir() / "sample_prompts.txt"
        write_text_atomic(path, "\n".join(prompts) + "\n")
        cfg = cfg.override({"sample_prompts": path})
    from .actions import allow_pickle

    return cfg.override({"allow_pickle": allow_pickle()}).validate()  # the server's policy, not the form's


class _Stop(KeyboardInterrupt):
    """Raised inside the training thread by the Stop button: the loop saves a resume state, as on Ctrl-C."""


class TrainJob:
    """One `lorakit.train.run` in a background thread, observable while it runs."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.started = time.perf_counter()
        self.result = None
        self.error: str | None = None
        self.stopped = False
        self.stage = None  # the preparation's latest progress.Stage (loading a base, a caching pass)
        self._stop = threading.Event()
        self._plots = Path(tempfile.mkdtemp(prefix="lorakit-ui-"))
        self._thread = threading.Thread(target=self._work, name="lorakit-train", daemon=True)

    def start(self) -> "TrainJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self.running

    def _on_step(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        if self._stop.is_set():
            raise _Stop()

    def _on_stage(self, stage) -> None:
        self.stage = stage

    def _work(self) -> None:
        from ..progress import listening
        from ..train.loop import run

        try:
            with listening(self._on_stage):  # the load's and the caching passes' bars, for the page
                self.result = run(self.cfg, on_step=self._on_step)
        except _Stop:
            self.stopped = True
        except LoraKitError as exc:
            self.error = str(exc)
        except Exception as exc:  # shown in the page; the server must outlive a failed run
            self.error = f"{type(exc).__name__}: {exc}"

    # what the page shows -----------------------------------------------------------------------
    def loss_plot(self) -> str | None:
        from ..train.logs import LossHistory

        if not self.losses:
            return None
        path = self._plots / f"loss-{len(self.losses)}.png"
        if not path.exists():
            for old in self._plots.glob("loss-*.png"):
                old.unlink(missing_ok=True)
            LossHistory(list(self.steps), list(self.losses)).plot(path)
        return str(path)

    def latest_samples(self) -> str | None:
        grids = sorted((self.cfg.resolved_run_dir() / "samples").glob("step-*.png"))
        return str(grids[-1]) if grids else None

    def status(self) -> str:
        done, total = (self.steps[-1] if self.steps else 0), self.cfg.steps
        elapsed = time.perf_counter() - self.started
        line = f"step {done}/{total}"
        if self.losses:
            recent = self.losses[-20:]
            line += f" · loss {sum(recent) / len(recent):.4f} (mean of the last {len(recent)})"
        if done:
            line += f" · {elapsed / max(done, 1):.2f} s/step"
        if self.error:
            return f"failed: {self.error}\n{line}"
        if self.stopped:
            return (f"stopped at step {done}; a resume state is in {self.cfg.resolved_run_dir()} "
                    f"(put that folder in 'Resume from' to continue)")
        if self.result is not None:
            return f"done in {elapsed:.0f} s: wrote {self.result.out}\n{line}"
        if done:
            return "training…\n" + line
        return f"preparing: {self.stage.text() if self.stage else 'starting'}…\n{line}"


_JOB: TrainJob | None = None


def start_job(cfg) -> TrainJob:
    global _JOB
    if _JOB is not None and _JOB.running:
        raise LoraKitError("a training run is already going; stop it first")
    _JOB = TrainJob(cfg).start()
    return _JOB


def stop_job() -> str:
    if _JOB is None or not _JOB.running:
        return "no training run is going"
    _JOB.stop()
    return "stopping after this step (a resume state is saved)…"


def guarded_form(studio, values: list) -> list:
    """The form's path fields checked against the page's folders (model, data, out, class images,
    resume); relative names are taken from the first data or library folder."""
    v = list(values)
    g = studio.guard
    v[0] = g.model(v[0])
    v[1] = str(g.check(v[1], "training images", base=studio.first("data"), exists=True))
    v[3] = str(g.check(v[3], "LoRA output", base=studio.first("lora"), kind="file"))
    if str(v[16] or "").strip():
        v[16] = str(g.check(v[16], "class image folder", base=studio.first("data"), kind="dir"))
    if str(v[21] or "").strip():
        v[21] = str(g.check(v[21], "resume folder", base=studio.first("lora"), exists=True, kind="dir"))
    return v


def guard_config(studio, cfg):
    """The finished config (the TOML box can set any option) with every path it names checked
    against the page's folders: each option typed as a path or a model (train.config.PATH_OPTIONS,
    MODEL_OPTIONS: derived from the types, so a new path option is guarded without a word here),
    the folders a dataset TOML names and a class-prompt file. Paths come back resolved: a relative
    one means the file the guard checked, not one under the server's working folder."""
    from ..evaluation.encoders import OFF
    from ..train.config import MODEL_OPTIONS, PATH_OPTIONS

    g = studio.guard
    changes = {}
    for name in PATH_OPTIONS:
        value = getattr(cfg, name)
        if isinstance(value, (list, tuple)):
            changes[name] = tuple(g.check(v, f"training option {name}") for v in value)
        elif value is not None:
            changes[name] = g.check(value, f"training option {name}")
    for name in MODEL_OPTIONS:
        value = getattr(cfg, name)
        if value is not None and str(value).strip().lower() not in OFF:  # "none": the evaluation skips it
            changes[name] = g.model(value, f"training option {name}")
    cfg = cfg.override(changes)
    g.check(cfg.resolved_run_dir(), "training run folder")
    if cfg.data is not None and Path(cfg.data).is_file():  # a dataset TOML: the folders it names, too
        from ..data.config import load_dataset_config

        for subset in load_dataset_config(Path(cfg.data)).subsets:
            g.check(subset.dir, f"image folder of {Path(cfg.data).name}")
    prompt_file = Path(str(cfg.class_prompt or ""))  # a prompt, or a .txt file of prompts
    if str(cfg.class_prompt or "").endswith(".txt") and prompt_file.exists():
        g.check(prompt_file, "class prompt file")
    return cfg


def build(gr, studio, progress_wrap) -> dict:
    from .actions import guarded

    default_out = (studio.first("lora") / "my-lora.safetensors") if studio.first("lora") else "my-lora.safetensors"

    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(studio.model_choices(), value=studio.default_model, allow_custom_value=True,
                                    label="Base model ('toy', a hub id, or a folder/file under your folders)")
                data = gr.Textbox(str(studio.first("data") or ""), elem_id="train-data",
                                  label="Training images (folder with captions, or dataset TOML)")
                trigger = gr.Textbox("", label="Trigger word")
                out = gr.Textbox(str(default_out), label="Write the LoRA to", elem_id="train-out")
                with gr.Row():
                    preset = gr.Dropdown(PRESETS, value="transformer", label="Targets")
                    rank = gr.Number(16, label="Rank", precision=0)
                    alpha = gr.Number(16, label="Alpha", precision=None)
                    conv_rank = gr.Number(0, label="Conv rank (full)", precision=0)
                with gr.Row():
                    steps = gr.Number(1000, label="Steps", precision=0, elem_id="train-steps")
                    lr = gr.Number(1e-4, label="Learning rate")
                    batch = gr.Number(1, label="Batch size", precision=0)
                    resolution = gr.Number(512, label="Resolution", precision=0)
                with gr.Row():
                    optimizer = gr.Dropdown(OPTIMIZERS, value="adamw", label="Optimizer")
                    scheduler = gr.Dropdown(SCHEDULERS, value="constant", label="LR schedule")
                    train_te = gr.Radio(list(TEXT_ENCODER_CHOICES), value="auto", label="Text-encoder LoRA",
                                        info="auto: the family's default (SD 1.x/2.x/XL yes, as kohya; "
                                             "SD 3.x/Flux.1 no)")
                with gr.Accordion("Prior preservation (DreamBooth)", open=False):
                    class_prompt = gr.Textbox("", label="Class prompt (e.g. 'a dog')")
                    class_data = gr.Textbox("", label="Class image folder (missing images are generated)")
                with gr.Accordion("Samples, saving, more options", open=False):
                    sample_prompts = gr.Textbox("", label="Sample prompts, one per line", lines=3)
                    with gr.Row():
                        sample_every = gr.Number(100, label="Samples every N steps (0: off)", precision=0)
                        save_every = gr.Number(0, label="Save every N steps (0: at the end)", precision=0)
                    extra = gr.Textbox("", elem_id="train-extra", lines=3,
                                       label="More options (TOML, keys of --print-config)",
                                       placeholder="min_snr_gamma = 5\nmixed_precision = \"bf16\"")
                    resume = gr.Textbox("", label="Resume from (a run folder)", elem_id="train-resume")
                with gr.Row():
                    go = gr.Button("Train", variant="primary", elem_id="train-go")
                    stop = gr.Button("Stop", elem_id="train-stop")
                    again = gr.Button("Resume the stopped run", elem_id="train-resume-go")
            with gr.Column():
                status = gr.Textbox(label="Status", lines=3, elem_id="train-status")
                loss = gr.Image(label="Loss", type="filepath", elem_id="train-loss")
                samples = gr.Image(label="Latest samples", type="filepath", elem_id="train-samples")

        fields = [model, data, trigger, out, preset, rank, alpha, conv_rank, steps, lr, batch, resolution, optimizer,
                  scheduler, train_te, class_prompt, class_data, sample_prompts, sample_every, save_every, extra,
                  resume]

        def checked_config(values):
            return train_config(*guarded_form(studio, values), check=lambda cfg: guard_config(studio, cfg))

        def train(progress=gr.Progress(), *values):  # progress first: see progress_wrap in app.py
            yield from watch(guarded(lambda *v: start_job(checked_config(v)))(*values), progress)

        def resume_stopped(progress=gr.Progress(), *values):
            def start(*v):
                if _JOB is None or not _JOB.stopped:
                    raise LoraKitError("no stopped run to resume (Stop one first, or fill 'Resume from')")
                v = list(v)
                v[21] = str(_JOB.cfg.resolved_run_dir())
                return start_job(checked_config(v))
            yield from watch(guarded(start)(*values), progress)

        def watch(job, progress):
            while True:
                finished = job.wait(timeout=1.0)
                done = job.steps[-1] if job.steps else 0
                if done or job.stage is None:
                    progress((done, job.cfg.steps), desc="train", unit="steps")
                else:  # still loading the base or caching: that bar, with its own words
                    progress(job.stage.done / max(job.stage.total, 1), desc=job.stage.text())
                note = ""
                if finished and job.result is not None:
                    note = _into_library(studio, Path(job.result.out))
                yield job.status() + note, job.loss_plot(), _picture(job.latest_samples())
                if finished:
                    return

        go.click(train, fields, [status, loss, samples])
        again.click(resume_stopped, fields, [status, loss, samples])
        stop.click(stop_job, [], status)
    return {"data": data}


def _picture(path: str | None):
    """The image itself, not its path: the run folder lies under the user's folders, which gradio's
    file route must not serve (it would refuse them anyway, being outside its own folders)."""
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
    scale = 256 // max(im.size)  # tiny sample grids (the toy model draws 32 px) shown at a visible size
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def _into_library(studio, out: Path) -> str:
    """A finished LoRA joins the library (its folder is added when it is not a library folder yet)."""
    try:
        if not any(out.resolve().is_relative_to(d) for d in studio.lora_dirs):
            studio.add_library_folder(out.resolve().parent)
    except LoraKitError as exc:
        return f"\nnot added to the library: {exc}"
    return f"\nin the library as {out.stem}"
