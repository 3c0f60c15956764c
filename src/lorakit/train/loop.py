"""The training loop, in one place: set-up, one step, checkpoints, samples, the final file.

Built on accelerate: mixed precision, gradient accumulation and DDP (`accelerate launch -m
lorakit train ...`) come from it; the model it wraps is `Denoiser`, which owns only the LoRA
weights, so DDP synchronises those and never touches the frozen base.

Exact resume: every random choice of a micro-step (batch, caption shuffle/dropout, flip,
noise, timesteps, LoRA dropout) is drawn from generators seeded by (seed, micro-step,
process), so a state holding the LoRA weights, optimizer, scheduler and step is all a resumed
run needs to retrace the uninterrupted one bit for bit.
"""

from __future__ import annotations

import gc
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data import (BucketSettings, Sample, Subset, TensorStore, TrainingData, cache_key, load_dataset_config,
                    mix_seed, pixels, scan, subsets_in)
from ..data.captions import with_trigger
from ..atomic import remove_stale_temporaries, write_text_atomic
from ..errors import Interrupted, LoraKitError
from ..lora.network import LoRANetwork
from ..writable import require_writable
from . import continuation, losses, state
from .conditioning import Conditioner, encode_pixels
from .interrupt import EXIT_CODES, StopRequests, signal_name
from .config import TrainConfig
from .logs import LossHistory
from ..heap_trim import map_large_blocks, release_free_memory
from .metadata import network_args, training_fields
from .optim import build_optimizer, build_scheduler
from ..generate import image_grid, save_png
from ..quantized import cast_module
from .evaluation import evaluate_run
from .sample_prompts import read_sample_prompts
from .sampling import count_images, generate_class_images, read_class_prompts, render_samples

# Text-cache entries kept when captions vary (the encoders stay, so an entry that goes is encoded again).
TEXT_MEMO_ITEMS = 4096
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainResult:
    out: Path
    run_dir: Path
    step: int
    losses: list[float]
    network: LoRANetwork
    model: object  # lorakit.models.BaseModel
    metadata: dict = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)


def _accelerator_device_present() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or \
        bool(getattr(torch, "xpu", None) and torch.xpu.is_available())


def _accelerator_device_type() -> str:
    """The device accelerate will pick when one is present (the order of its own search)."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "xpu"


class Denoiser(nn.Module):
    """The module accelerate prepares: the LoRA network as its only child, the frozen UNet and
    text encoders held by plain reference so DDP neither broadcasts nor reduces them."""

    def __init__(self, network: LoRANetwork, unet: nn.Module, conditioner: Conditioner, spec, dtype: torch.dtype):
        super().__init__()
        self.network = network
        object.__setattr__(self, "unet", unet)
        object.__setattr__(self, "conditioner", conditioner)
        object.__setattr__(self, "spec", spec)
        self.dtype = dtype

    def forward(self, jobs: list[dict]) -> list[torch.Tensor]:
        """One prediction per job (instance batch, prior batch); same-sized jobs share one UNet call."""
        if len(jobs) > 1 and len({tuple(j["noisy"].shape[1:]) for j in jobs}) == 1:
            merged = self.forward([_concat(jobs)])[0]
            return list(merged.split([len(j["noisy"]) for j in jobs]))
        out = []
        for job in jobs:
            cond = self.conditioner.encode_ids(job["ids"], job.get("cond")) if "ids" in job else job["cond"]
            extra = {k: v for k, v in job.items() if k not in _JOB_KEYS}  # the family's extra_inputs
            out.append(self.spec.predict(self.unet, job["noisy"], job["t"], cond, extra, self.dtype))
        return out


_JOB_KEYS = ("noisy", "t", "ids", "cond")  # a job's other keys are the family's extra_inputs


def _concat(jobs: list[dict]) -> dict:
    out = {k: torch.cat([j[k] for j in jobs]) for k in jobs[0] if k not in ("ids", "cond")}
    if "ids" in jobs[0]:
        out["ids"] = [torch.cat(parts) for parts in zip(*(j["ids"] for j in jobs))]
    if "cond" in jobs[0]:
        out["cond"] = {k: torch.cat([j["cond"][k] for j in jobs]) for k in jobs[0]["cond"]}
    return out


def run(cfg: TrainConfig, *, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a LoRA as `cfg` says; `on_step(step, loss)` is called after each optimizer step."""
    return Trainer(cfg, on_step).run()


class Trainer:
    def __init__(self, cfg: TrainConfig, on_step=None):
        self.cfg = cfg.validate()
        self.on_step = on_step
        self.run_dir = cfg.resolved_run_dir()
        self.precision = None  # chosen in setup(), once the device (and the model's size) is known
        self.weight_dtype = WEIGHT_DTYPES.get(cfg.mixed_precision, torch.float32)
        self.history = LossHistory()
        self.step = 0
        self.last_sample = None  # the first image of the latest samples: the A1111 preview and thumbnail
        self.step_times: list[float] = []
        self.skipped: list[int] = []  # optimizer steps skipped for a non-finite loss (--nan-policy skip)
        self._bad_step = False
        self._saved_step: int | None = None  # the step of the last resume state this process wrote
        self.resumed_from = 0  # the step of the resume state this run continues (0: a fresh run)
        self.stops = StopRequests(self.last_state)

    # --- set-up ----------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, \
            ProjectConfiguration

        cfg = self.cfg
        cpu = cfg.device == "cpu" or (cfg.device is None and not _accelerator_device_present())
        self._choose_precision("cpu" if cpu else (cfg.device or _accelerator_device_type()))
        mixed = self.precision.mixed_precision
        if cpu and mixed == "bf16":
            # bf16 on CPU: the frozen weights are bf16 already and the LoRA runs in fp32, so accelerate's
            # autocast would only add a cast check on every op (1.5× fp32's speed instead of 1.9× on SD 1.5).
            mixed = "no"
        kwargs = dict(
            mixed_precision=mixed,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum,
                                                                    sync_with_dataloader=False),
            step_scheduler_with_optimizer=False,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.module_dropout > 0)],
            project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                logging_dir=str(self.run_dir / "logs")),
        )
        if cpu:
            kwargs["cpu"] = True  # also what makes accelerate run several CPU processes as DDP (gloo)
        if cfg.tensorboard:
            kwargs["log_with"] = "tensorboard"
        from accelerate.state import AcceleratorState, GradientState

        # accelerate keeps its settings in process-wide singletons; a second run in the same
        # process (tests, the demo) may want other ones. The distributed state (PartialState) stays.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        try:
            acc = Accelerator(**kwargs)
        except ValueError as exc:  # e.g. fp16 on a device that has none
            raise LoraKitError(f"--mixed-precision {self.precision.mixed_precision}: {exc}") from None
        if cfg.device not in (None, "cpu") and acc.device.type != str(cfg.device).split(":")[0]:
            raise LoraKitError(f"--device {cfg.device}: not available here (accelerate found {acc.device.type})")
        from .. import quantized

        quantized.require(cfg.base_precision, acc.device)  # before minutes of loading
        if acc.device.type == "cpu" and self.precision.name == "fp16" and acc.is_main_process:
            print("note: fp16 on CPU: weights are stored in fp16 but there is no autocast or loss scaling; "
                  "bf16 is the better choice on CPU", file=sys.stderr)
        return acc

    def _choose_precision(self, device: str, unet: nn.Module | None = None) -> bool:
        """Pick the format from the device and the denoiser's size (read from its config, or counted on
        the loaded `unet`); True when it changed the weight dtype. Printed when training starts (after
        every check of the input, so that a refused run still ends in one line)."""
        from ..models import base_precision
        from ..models.size import denoiser_parameters
        from ..precision import choose, count_parameters

        cfg = self.cfg
        params = count_parameters(unet) if unet is not None else None
        if params is None and cfg.mixed_precision == "auto" and torch.device(device).type == "cpu":
            params = denoiser_parameters(str(cfg.model))
        self.precision = choose(device, params, cfg.mixed_precision)
        self._precision_final = self.precision.final
        before, self.weight_dtype = self.weight_dtype, base_precision.compute_dtype(cfg.base_precision, device,
                                                                                     self.precision.dtype)
        return before != self.weight_dtype

    def _subsets(self) -> list[Subset]:
        cfg = self.cfg
        defaults = Subset(Path(cfg.data), repeats=cfg.repeats, caption_ext=cfg.caption_ext,
                          keep_tokens=cfg.keep_tokens, shuffle_caption=cfg.shuffle_caption,
                          caption_dropout=cfg.caption_dropout, flip=cfg.flip)
        data = Path(cfg.data)
        if data.suffix.lower() == ".toml":
            if not data.is_file():
                raise LoraKitError("dataset config does not exist", data)
            dc = load_dataset_config(data, defaults=defaults)
            rename = {"resolution": "resolution", "batch_size": "batch_size", "enable_bucket": "bucket",
                      "bucket_reso_steps": "bucket_step", "min_bucket_reso": "min_bucket_side",
                      "max_bucket_reso": "max_bucket_side", "bucket_no_upscale": "bucket_no_upscale"}
            self.cfg = self.cfg.override({rename[k]: v for k, v in dc.options.items()}, source=data)
            subsets = dc.subsets
        else:
            subsets = subsets_in(data, defaults)
        instance = []
        for s in subsets:  # fail on a bad folder now, before minutes of model loading
            found = scan(s)
            if not s.is_reg:
                instance += found
        self.validation_items = self._held_out(instance, defaults)
        held = {it.path for it in self.validation_items}
        self.instance_count = sum(it.path not in held for it in instance)
        # as training reads them (trigger in front); the held-out images' too, for the validation loss
        self.instance_captions = {with_trigger(it.caption, self.cfg.trigger)
                                  for it in instance + self.validation_items}
        return subsets

    def _held_out(self, instance: list, defaults: Subset) -> list:
        from ..data import holdout

        cfg = self.cfg
        if cfg.validation_data is not None:
            return holdout.folder(Path(cfg.validation_data), defaults)
        if cfg.validation_split:
            return holdout.split(instance, cfg.validation_split, cfg.seed, Path(cfg.data))
        return []

    def _class_subset(self) -> Subset | None:
        cfg = self.cfg
        if not cfg.class_prompt:
            return None
        folder = Path(cfg.class_data) if cfg.class_data else self.run_dir / "class_images"
        self.class_prompts = read_class_prompts(cfg.class_prompt)
        return Subset(folder, repeats=1, class_tokens=self.class_prompts[0], flip=cfg.flip, is_reg=True,
                      name=f"reg_{folder.name}")

    def _load(self, components):
        model = self._load_once(components)
        if "unet" in components and not self._precision_final:
            # a model whose size only loading tells (single file, hub id): loaded as bf16 would be, and
            # loaded again in fp32 when it proves too small for bf16 to pay
            if self._choose_precision(self.acc.device, model.unet):
                del model
                gc.collect()
                model = self._load_once(components)
        return model

    def _load_once(self, components):
        from ..models import load_model

        dtype = torch.float32 if "unet" not in components else self.weight_dtype
        fmt = self.cfg.base_precision
        if (fmt == "auto" and "unet" not in components and self._precision_final
                and self.weight_dtype != torch.float32):
            # the encoders-only stage encodes in fp32, but a half-precision run holds its big text encoders
            # (T5-XXL: 19 GB in fp32) in the run's format, as its denoiser
            fmt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.weight_dtype]
        model = load_model(self.cfg.model, dtype=dtype, prediction_type=self.cfg.prediction_type,
                           components=components, text_encoders=self.cfg.text_encoders,
                           allow_pickle=self.cfg.allow_pickle,
                           config_dir=self.cfg.config_dir, base_precision=fmt)
        model.pipe.set_progress_bar_config(disable=True)
        return model

    def _model_tag(self) -> str:
        p = Path(self.cfg.model)
        target = p / "model_index.json" if p.is_dir() else p
        if target.exists():
            st = target.stat()
            return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return str(self.cfg.model)

    def _size_multiple(self) -> int:
        """Pixels every image side must be a multiple of: the VAE's downscale × the denoiser's
        downsampling (64 for SD 1.x/2.x, 32 for SDXL), read from the model's own configs."""
        vae_factor = self.spec.vae_geometry(self.vae_config)[0] if self.vae_config else 1
        config = self.model.denoiser_config
        return vae_factor * (self.spec.denoiser_downsampling(config) if config else 1)

    def _bucket_settings(self) -> BucketSettings:
        """The family's step (64 px, SDXL 32) made a multiple of the model's size multiple, smaller only
        when the resolution itself is that small, never below the size multiple."""
        cfg = self.cfg
        need = self._size_multiple()
        step = cfg.bucket_step
        if step is None:
            step = max(self.spec.bucket_step, need)  # powers of two: a multiple of need
            while step > need and (cfg.resolution % step or cfg.resolution < 2 * step):
                step //= 2
            if cfg.resolution % step:
                raise LoraKitError(f"--resolution {cfg.resolution} must be a multiple of {step} px, which this "
                                   f"model's VAE and UNet downsampling need")
        if cfg.resolution % step:
            raise LoraKitError(f"--resolution {cfg.resolution} must be a multiple of the bucket step {step}")
        return BucketSettings(cfg.resolution, step, cfg.bucket, cfg.min_bucket_side, cfg.max_bucket_side,
                              cfg.max_upscale, cfg.bucket_no_upscale)

    def _require_fits(self) -> None:
        """A batch whose activations cannot fit is refused before any caching or training."""
        from ..fit_check import require_fits, training_bytes

        cfg, config = self.cfg, self.model.denoiser_config
        if config is None:  # no denoiser config to estimate from
            return
        scale = self.spec.vae_geometry(self.vae_config)[0] if self.vae_config else 8
        need = training_bytes(self.spec, config, scale, cfg.resolution, cfg.batch_size, cfg.gradient_checkpointing,
                              self.weight_dtype)
        require_fits(need, self.acc.device, f"a training batch of {cfg.batch_size} at {cfg.resolution} px",
                     "lower --batch-size or --resolution, or add --gradient-checkpointing")

    def _require_text_cache_fits(self) -> None:
        """A text cache that keeps every caption in RAM is refused before any caching or training when the
        captions cannot fit: one caption's entry is encoded (and kept) to measure it, times the captions
        (the instance ones: a lower bound)."""
        from ..fit_check import require_fits

        captions = sorted(self.instance_captions)
        if self.texts.mode != "memory" or self.texts.max_items is not None or not captions:
            return
        entry = self._encode_text(captions[:1])[0]
        need = len(captions) * sum(v.numel() * v.element_size() for v in entry.values())
        require_fits(need, "cpu", f"the text cache of {len(captions)} captions",
                     "keep it on disk with --cache-text disk")

    def _check_divisible(self) -> None:
        """Every bucket side must survive the VAE's and the UNet's downsampling."""
        need = self._size_multiple()
        step = self.data.settings.step
        if step % need:
            raise LoraKitError(f"bucket step {step} px is not a multiple of {need} px, which this model's VAE and "
                               f"UNet downsampling need: set --bucket-step {need} (or a multiple)")

    def setup(self) -> None:
        cfg = self.cfg
        map_large_blocks()
        self.acc = acc = self._accelerator()
        self.rank, self.world = acc.process_index, acc.num_processes
        self.main = acc.is_main_process
        self.resume_dir = None
        if cfg.resume is not None:
            self.resume_dir = state.find_state(Path(cfg.resume))
        subsets = self._subsets()  # may take resolution, batch size… from a dataset TOML
        cfg = self.cfg
        # as asked: the family and the data fill these in later, and a resumed run compares them before that
        self._asked = {"resolution": cfg.resolution, "steps": cfg.steps}
        if self.resume_dir is not None:
            info = state.read_state(self.resume_dir)
            if cfg.train_text_encoder is None:  # the run it continues resolved the family's default
                saved = info.get("config", {}).get("train_text_encoder")
                if isinstance(saved, bool):
                    self.cfg = cfg = cfg.override({"train_text_encoder": saved})
            state.check_compatible(info, self._fingerprint(), self.resume_dir,
                                   steps_may_grow=cfg.scheduler in ("constant", "constant_with_warmup"),
                                   defaults=TrainConfig().fingerprint())
            self.history = LossHistory(**info.get("history", {}))
            self.skipped = list(info.get("skipped_steps", []))
            self.session_id = info.get("session_id") or uuid.uuid4().hex[:12]
            self.started_at = info.get("started_at", time.time())
        else:
            self.session_id, self.started_at = uuid.uuid4().hex[:12], time.time()
        class_subset = self._class_subset()
        if cfg.sample_every and cfg.sample_prompts is not None:
            read_sample_prompts(cfg.sample_prompts, "")  # a malformed line is refused before any loading
        require_writable(cfg.out)
        require_writable(self.run_dir, folder=True)

        # The VAE and text encoders are only needed to fill the caches, unless samples are drawn
        # or the text encoder trains: then load them with the UNet, else first and alone.
        wanted_class = (cfg.num_class_images or self.instance_count) if class_subset else 0
        need_generation = class_subset is not None and count_images(class_subset.dir) < wanted_class
        varying_captions = any(s.shuffle_caption or s.caption_dropout for s in subsets)
        stageable = (cfg.cache_latents != "none" and cfg.cache_text != "none" and cfg.train_text_encoder is not True
                     and not cfg.sample_every and not cfg.evaluate_every and not need_generation
                     and not varying_captions)
        self.model = self._load(("vae", "text_encoders") if stageable else ("unet", "vae", "text_encoders"))
        self.family, self.prediction_type = self.model.family, self.model.prediction_type
        self.spec = self.model.spec
        self.cfg = cfg = cfg.with_family_defaults(self.spec, self.prediction_type == "v_prediction",
                                                  self.model.denoiser_config)
        self._check_clip_skip()
        self.continued = self._continued_file()
        self.data_offset = continuation.steps_done(self.continued)  # the continued file's data order goes on
        if cfg.train_text_encoder is None:  # the family's default, known now that its model is read
            default = self.spec.trains_text_encoder_by_default
            if self.continued is not None and cfg.dim_from_weights:  # the file says which parts it adapts
                default = any(n != "unet" for n in self.continued.parts())
            self.cfg = cfg = cfg.override({"train_text_encoder": default})
        staged = stageable and not cfg.train_text_encoder
        if stageable and not staged:  # the text encoder trains after all: the UNet joins them now
            self._add_denoiser()
        self.objective = self.spec.objective(self.prediction_type)
        if self.objective == "flow_matching" and cfg.loss_type != "l2" and cfg.huber_schedule == "snr":
            raise LoraKitError(f"--loss-type {cfg.loss_type}: --huber-schedule snr needs a noise-prediction model (as "
                               "in sd-scripts); flow-matching models (SD 3.x, Flux.1) take constant or exponential")
        if self.objective == "flow_matching" and cfg.min_snr_gamma:
            raise LoraKitError("--min-snr-gamma is for noise-prediction models; flow-matching models (SD 3.x) weigh "
                               "their loss with --weighting-scheme")
        self.vae_config = dict(self.model.vae.config) if self.model.vae is not None else None
        self._require_fits()
        device = acc.device
        self.conditioner = Conditioner(self.model.pipe, self.family,
                                       cfg.clip_skip if self.spec.clip_skip == "honoured" and cfg.clip_skip != 1
                                       else None)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache"
        self.latents = TensorStore(cfg.cache_latents, cache_dir / "latents")
        # with a text-encoder LoRA the text cache still holds what encoders that never train give (SD3's T5)
        text_mode = "none" if cfg.train_text_encoder and not self.spec.frozen_text_encoders else cfg.cache_text
        # Fixed captions are all cached up front and the encoders then go: the run relies on that cache, so it
        # keeps every entry. Varying ones (shuffle, dropout) keep the encoders; the cache only spares re-encoding.
        self.texts = TensorStore(text_mode, cache_dir / "text",
                                 max_items=TEXT_MEMO_ITEMS if varying_captions else None)
        self.tag = self._model_tag()
        self._freeze_encoders(device)
        self._require_text_cache_fits()
        if self.main:  # only once the model loaded and the run fits: a refused run leaves nothing behind
            self.run_dir.mkdir(parents=True, exist_ok=True)
            state.remove_partial(self.run_dir)  # what a killed run was writing
            remove_stale_temporaries(Path(cfg.out).parent, Path(cfg.out).name)
            write_text_atomic(self.run_dir / "config.toml", cfg.to_toml())
        if need_generation:
            self.model.pipe.to(device)
            if self.main:
                generate_class_images(self.model.pipe, class_subset.dir, self.class_prompts, wanted_class,
                                      size=cfg.resolution, steps=cfg.class_steps, guidance=cfg.class_guidance,
                                      seed=cfg.seed, progress=cfg.progress)
            acc.wait_for_everyone()
        if class_subset is not None:
            subsets = subsets + [class_subset]
        self.data = TrainingData(subsets, self._bucket_settings(), batch_size=cfg.batch_size, trigger=cfg.trigger,
                                 seed=cfg.seed, validation=self.validation_items)
        if self.data.varies_pixels() and cfg.cache_latents != "none":  # as sd-scripts refuses --cache_latents
            raise LoraKitError("random_crop and color_aug change the image each step: they need --cache-latents none",
                               cfg.data)
        self._steps_from_epochs()
        self._fill_caches()
        if staged:
            self.model.release("vae", *self.spec.text_encoders)
            self._add_denoiser()
        else:
            self._release_unneeded()
        self._check_divisible()
        self._build_training(device)
        from ..models import base_precision
        from ..precision import announce

        announce(self.precision, self.main)
        base_precision.announce(self.model, self.cfg.base_precision, self.weight_dtype, self.main)

    def _check_clip_skip(self) -> None:
        """--clip-skip where the family conditions on a CLIP layer it can choose; a note where it is fixed."""
        cfg = self.cfg
        if cfg.clip_skip is None or cfg.clip_skip == 1:
            return
        if self.spec.clip_skip is None:
            raise LoraKitError(f"--clip-skip {cfg.clip_skip}: {self.spec.label} models have no CLIP layer to choose "
                               "(it applies to SD 1.x and 2.x)")
        if self.spec.clip_skip == "ignored" and self.main:
            print(f"note: --clip-skip {cfg.clip_skip} is ignored: {self.spec.label} always conditions on the "
                  "penultimate CLIP layers (as sd-scripts trains it)", file=sys.stderr)

    def _continued_file(self):
        """The LoRA file --network-weights continues (read and checked against the family), or None."""
        if self.cfg.network_weights is None:
            return None
        from ..formats import load_lora

        return load_lora(self.cfg.network_weights, self.family)

    def _steps_from_epochs(self) -> None:
        """--epochs as kohya counts them: ⌈batches per epoch / processes / accumulation⌉ steps each."""
        cfg = self.cfg
        self.steps_per_epoch = math.ceil(self.data.plan.batches_per_epoch / self.world / cfg.grad_accum)
        if cfg.epochs is None:
            return
        self.cfg = cfg.override({"steps": cfg.epochs * self.steps_per_epoch})
        if self.cfg.warmup_steps > self.cfg.steps:
            raise LoraKitError(f"--warmup-steps {cfg.warmup_steps} is more than the {self.cfg.steps} steps of "
                               f"--epochs {cfg.epochs}")
        if self.main:
            print(f"--epochs {cfg.epochs}: {self.steps_per_epoch} steps an epoch, {self.cfg.steps} steps",
                  file=sys.stderr)

    def _freeze_encoders(self, device) -> None:
        """The VAE and text encoders frozen on the device. A method of its own: a loop variable left in
        `setup`'s frame would keep the last encoder (T5-XXL) alive after its release."""
        for name in ("vae", *self.spec.text_encoders):
            module = getattr(self.model.pipe, name, None)
            if module is not None:
                cast_module(module.requires_grad_(False), device)

    def _add_denoiser(self) -> None:
        unet_model = self._load(("unet",))
        self.model.pipe.register_modules(**{self.spec.denoiser: unet_model.unet})

    def _release_unneeded(self) -> None:
        """Free the VAE / text encoders once the caches make them useless for the rest of the run."""
        cfg = self.cfg
        if cfg.sample_every or cfg.evaluate_every:
            return
        if cfg.cache_latents != "none":
            self.model.release("vae")
        if self.texts.enabled and self.data.fixed_captions() is not None:
            self.model.release(*(self.spec.text_encoders if not cfg.train_text_encoder
                            else self.spec.frozen_text_encoders))

    def _build_training(self, device) -> None:
        cfg, acc = self.cfg, self.acc
        pipe = self.model.pipe
        unet = cast_module(self.model.unet.requires_grad_(False), device, self.weight_dtype)
        if not cfg.sdpa and self.spec.classic_attention:
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        if cfg.gradient_checkpointing or cfg.blocks_to_swap:  # a swapped block's weights must not wait for backward
            unet.enable_gradient_checkpointing()
        if cfg.blocks_to_swap:
            from ..block_swap import apply as swap_blocks

            swap_blocks(unet, cfg.blocks_to_swap, device)
        # encoders that never train (SD3's T5) get no LoRA; None keeps the others' kohya prefixes
        tes = [None if name in self.spec.frozen_text_encoders else getattr(pipe, name, None)
               for name in self.spec.text_encoders]
        for te in tes:
            if te is not None:
                cast_module(te, device, self.weight_dtype)
                if cfg.train_text_encoder and cfg.gradient_checkpointing:
                    te.gradient_checkpointing_enable()
                    te.train()  # transformers checkpoints only in train mode; CLIP has no dropout
        from ..lora.targets import ModelParts

        parts = ModelParts(self.family, unet, tes if cfg.train_text_encoder else [], dict(unet.config))
        torch.manual_seed(mix_seed(cfg.seed, 0x1417))
        spec = cfg.network_spec()
        dropouts = dict(dropout=spec.get("dropout", 0.0), rank_dropout=spec.get("rank_dropout", 0.0),
                        module_dropout=spec.get("module_dropout", 0.0))
        if self.continued is not None and cfg.dim_from_weights:
            self.network = continuation.from_file(parts, self.continued, spec, **dropouts)
        else:
            self.network = LoRANetwork.create(parts, rank=cfg.rank, alpha=cfg.alpha, preset=cfg.preset,
                                              conv_rank=spec.get("conv_dim"), conv_alpha=spec.get("conv_alpha"),
                                              unet=cfg.train_unet, text_encoder=cfg.train_text_encoder,
                                              init=cfg.init, spec=spec, **dropouts)
            if self.continued is not None:
                continuation.load_factors(self.network, parts, self.continued, spec)
        if self.continued is not None and self.main and self.resume_dir is None:
            print(continuation.describe(self.continued, self.data_offset), file=sys.stderr)
        if len(self.network) == 0:
            raise LoraKitError(f"the preset {cfg.preset!r} selects no layers of this model")
        self.network.to(device).apply()
        self.network.train()
        groups = []
        for part, params in self.network.parameters_by_part().items():
            lr = cfg.lr if part == "unet" else (cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.lr)
            groups.append({"params": params, "lr": lr, "name": part})
        optimizer = build_optimizer(cfg.optimizer, groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    betas=cfg.betas, eps=cfg.eps)
        scheduler = build_scheduler(cfg.scheduler, optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                    cycles=cfg.scheduler_cycles, power=cfg.scheduler_power)
        denoiser = Denoiser(self.network, unet, self.conditioner, self.spec, self.weight_dtype)
        self.denoiser = denoiser  # unwrapped, for the base's own predictions (prior_target base)
        self.model_wrapped, self.optimizer, self.scheduler = acc.prepare(denoiser, optimizer, scheduler)
        self.params = [p for g in groups for p in g["params"]]
        # Giving freed pages back to the OS costs their page faults on the next step (see memory.py): worth it
        # only where the user asked for memory over speed (checkpointing) on a real model in host memory.
        self.trim_memory = (acc.device.type == "cpu" and cfg.gradient_checkpointing
                            and sum(p.numel() for p in unet.parameters()) > 100_000_000)
        self.flow = None
        if self.objective == "flow_matching":
            from .flow_matching import FlowMatching

            self.flow = FlowMatching.from_config(pipe.scheduler.config, scheme=cfg.weighting_scheme)
        else:
            from diffusers import DDPMScheduler

            self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config,
                                                             prediction_type=self.prediction_type)
            self.num_timesteps = self.noise_scheduler.config.num_train_timesteps
        if self.resume_dir is not None:
            acc.load_state(str(self.resume_dir))
            self.step = self.resumed_from = state.read_state(self.resume_dir)["step"]
        if cfg.tensorboard:
            acc.init_trackers("lorakit", config={k: v for k, v in cfg.to_dict().items()
                                                 if isinstance(v, (int, float, str, bool))})

    def _fingerprint(self) -> dict:
        from accelerate.state import PartialState

        fp = self.cfg.fingerprint()
        fp.update(getattr(self, "_asked", {}))
        fp["num_processes"] = PartialState().num_processes
        return fp

    # --- caches --------------------------------------------------------------------------------
    def _latent_key(self, item, placement, flip: bool) -> str:
        st = item.path.stat()
        return cache_key(item.path.resolve(), st.st_size, st.st_mtime_ns, placement, flip, self.tag)

    def _fill_caches(self) -> None:
        from ..progress import track

        show = self.cfg.progress and self.main
        if self.latents.enabled:
            todo = [v for v in self.data.variants() if self._latent_key(*v) not in self.latents]
            vae = self.model.vae
            if vae is not None and todo:
                vae_dtype = vae.dtype
                cast_module(vae, dtype=torch.float32)  # encode in fp32: SDXL's VAE overflows in fp16
            for item, placement, flip in track(todo, "caching latents", disable=not show or not todo):
                lat = encode_pixels(vae, pixels(item, placement, flip)[None].to(self.acc.device), self.spec)[0]
                self.latents.put(self._latent_key(item, placement, flip), {"latents": lat})
            if vae is not None and todo:
                cast_module(vae, dtype=vae_dtype)
        captions = self.data.fixed_captions()
        if self.texts.enabled and captions is not None:
            todo = [c for c in captions if self._text_key(c) not in self.texts]
            for k in track(range(0, len(todo), 16), "caching text", disable=not show or not todo):
                self._encode_text(todo[k:k + 16])

    def _text_key(self, caption: str) -> str:
        skip = self.conditioner.clip_skip
        return cache_key(caption, self.tag, self.family) if skip is None else \
            cache_key(caption, self.tag, self.family, f"clip_skip={skip}")

    def _text_outputs(self, encoded: dict) -> set[str]:
        """The conditioning keys a step reads from the text cache, each tensor once: the whole conditioning
        when no text encoder trains; only what the frozen encoders give (the T5 sequence, which SD3's `hidden`
        contains and Flux's `hidden` is) when one does, the rest being encoded anew with gradients."""
        frozen = set(self.spec.frozen_outputs)
        return frozen if self.cfg.train_text_encoder else {k for k in encoded if k not in frozen}

    def _encode_text(self, captions: list[str]) -> list[dict]:
        enc = self.conditioner.encode(captions)
        keep = self._text_outputs(enc)
        out = []
        for i, c in enumerate(captions):
            entry = {k: v[i].float() for k, v in enc.items() if v is not None and k in keep}
            if self.texts.enabled:
                self.texts.put(self._text_key(c), entry)
            out.append(entry)
        return out

    def _text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        entries: list[dict | None] = [self.texts.get(self._text_key(c)) for c in captions]
        missing = [c for c, e in zip(captions, entries) if e is None]
        if missing:
            if self.conditioner.encoders[0] is None:
                raise RuntimeError("text encoder released while captions still need encoding")
            fresh = dict(zip(missing, self._encode_text(missing)))
            entries = [e if e is not None else fresh[c] for c, e in zip(captions, entries)]
        dev = self.acc.device
        return {k: torch.stack([e[k] for e in entries]).to(dev) for k in entries[0]}

    def _latents(self, samples: list[Sample]) -> torch.Tensor:
        if self.latents.enabled:
            got = [self.latents.get(self._latent_key(s.item, s.placement, s.flip)) for s in samples]
            if all(g is not None for g in got):
                return torch.stack([g["latents"] for g in got]).to(self.acc.device)
        px = torch.stack([pixels(s) for s in samples]).to(self.acc.device)
        return encode_pixels(self.model.vae, px, self.spec)

    # --- one step ------------------------------------------------------------------------------
    def _job(self, samples: list[Sample], micro: int, salt: int) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        latents = self._latents(samples).float()
        g = torch.Generator("cpu").manual_seed(mix_seed(cfg.seed, micro, self.rank, salt, 0x7015E))
        noise = losses.noise_like(latents, g, cfg.noise_offset)
        if self.flow is not None:
            u = self.flow.draw(len(samples), g)
        else:
            u = torch.randint(0, self.num_timesteps, (len(samples),), generator=g)
        return self.noised_job(samples, latents, noise, u)

    def noised_job(self, samples: list[Sample], latents: torch.Tensor, noise: torch.Tensor,
                   u: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor | None]:
        """The denoiser's inputs, target and loss weights for `samples` noised with `noise` at `u`: the
        timestep indices (noise-prediction models) or the points in [0, 1) of the flow-matching schedule."""
        cfg = self.cfg
        weights = None
        if self.flow is not None:
            mu = self.spec.timestep_shift(self.model.pipe.scheduler.config, *latents.shape[-2:])
            t, sigmas = self.flow.at(u, mu)
            t = t.to(latents.device)
            noisy = self.flow.noisy(latents, noise, sigmas)
            tgt = self.flow.target(latents, noise)
            weights = self.flow.weights(sigmas).to(latents.device)
        else:
            t = u.to(latents.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
            tgt = losses.target(self.noise_scheduler, self.prediction_type, latents, noise, t)
        job = {"noisy": noisy, "t": t}
        captions = [s.caption for s in samples]
        if cfg.train_text_encoder:
            job["ids"] = self.conditioner.tokenize(captions)
            if self.spec.frozen_text_encoders:  # their part of the conditioning comes from the cache
                cached = self._text(captions)
                job["cond"] = {k: cached[k] for k in self.spec.frozen_outputs}
        else:
            job["cond"] = self._text(captions)
        job.update({k: v.to(latents.device) for k, v in self.spec.extra_inputs(samples).items()})
        if cfg.guidance_scale is not None and "guidance" in job:
            job["guidance"] = torch.full_like(job["guidance"], float(cfg.guidance_scale))
        if cfg.min_snr_gamma:
            weights = losses.min_snr_weights(self.noise_scheduler, t, cfg.min_snr_gamma, self.prediction_type)
        return job, tgt, weights

    def micro_step(self, micro: int) -> float:
        """Forward, loss and backward of one micro-batch; the optimizer steps on the last of an accumulation."""
        cfg, acc = self.cfg, self.acc
        _, inst, reg = self.data.batch(micro, self.rank, self.world)
        jobs = [self._job(inst, micro, 0)]
        if reg:
            jobs.append(self._job(reg, micro, 1))
            if cfg.prior_target == "base":
                jobs[1] = (jobs[1][0], self._base_prediction(jobs[1][0]), jobs[1][2])
        torch.manual_seed(mix_seed(cfg.seed, micro, self.rank, 0xD0))  # LoRA dropout draws
        with acc.accumulate(self.model_wrapped):
            preds = self.model_wrapped([j for j, _, _ in jobs])
            loss = self._loss(preds[0], *jobs[0])
            if reg:
                loss = loss + cfg.prior_weight * self._loss(preds[1], *jobs[1])
            penalty = losses.weight_penalty(self.params, cfg.l1_penalty, cfg.l2_penalty)
            if penalty is not None:
                loss = loss + penalty
            value = acc.reduce(loss.detach().float(), "mean")  # the same on every process
            if not torch.isfinite(value):
                if cfg.nan_policy == "stop":
                    raise self._nan_error(value.item())
                self._bad_step = True
            if self.trim_memory:
                release_free_memory()
            acc.backward(loss)  # also when skipping: DDP expects every forward's backward; the grads are dropped
            if acc.sync_gradients:
                if not self._bad_step:
                    if cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.optimizer.step()
                self.scheduler.step()  # a skipped step still counts: the schedule follows the step number
                self.optimizer.zero_grad(set_to_none=True)
        if self.trim_memory:
            release_free_memory()
        return float(value)

    def _loss(self, pred: torch.Tensor, job: dict, tgt: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """--loss-type's loss of one job; Huber's threshold follows the job's timesteps (--huber-schedule)."""
        cfg = self.cfg
        delta = None
        if cfg.loss_type != "l2":
            ac = None if self.flow is not None else self.noise_scheduler.alphas_cumprod
            steps = self.flow.num_train_timesteps if self.flow is not None else self.num_timesteps
            delta = losses.huber_threshold(cfg.huber_schedule, cfg.huber_c, cfg.huber_scale, job["t"],
                                           alphas_cumprod=ac, num_train_timesteps=steps)
        return losses.denoising_loss(pred, tgt, weights, cfg.loss_type, delta)

    @torch.no_grad()
    def _base_prediction(self, job: dict) -> torch.Tensor:
        """The frozen base's prediction for a regularisation job: the prior loss's target when
        prior_target is base.

        DreamBooth's prior loss asks the LoRA to denoise class images back to their own noise, a
        target the base itself misses by its full denoising error, so the signal that says "do
        not change these prompts" is a small difference under a large, noisy loss. Measured on
        the toy world (benchmarks/demo_seeds.py), that let the concept leak into the base shape
        whose prompt embedding is nearest the trigger's (crosses drawn as rings) on some seeds.
        With the base's own prediction as the target (ai-toolkit's "differential output
        preservation" does the same for the class word), the prior loss is exactly zero until the
        LoRA changes what the base does on those prompts, and every gradient it gives is against
        such a change. It costs one forward of the regularisation half of the batch, no backward.
        """
        with self.network.bypassed(), self.acc.autocast():
            return self.denoiser([job])[0].float()

    def _nan_error(self, value: float) -> LoraKitError:
        last = self.last_state()
        if last is None:
            good = "no checkpoint was saved yet (--save-every N saves one every N steps)"
        else:
            lora = self.run_dir / f"lora-{int(last.name.split('-')[1][:6]):06d}.safetensors"
            good = (f"the last good checkpoint is {last}" + (f" (LoRA {lora})" if lora.is_file() else "")
                    + f": continue from it with --resume {self.run_dir} and a lower --lr")
        return LoraKitError(f"the loss became {value} at step {self.step + 1}; stopped: {good}, or use "
                            f"--nan-policy skip to skip such steps")

    def last_state(self) -> Path | None:
        found = state.list_states(self.run_dir)
        return found[-1] if found else None

    def _with_last_state(self, exc: LoraKitError) -> LoraKitError:
        """A failed write, plus where the run can be continued from."""
        last = self.last_state()
        tail = (f"; the last good resume state {last} is intact: free some space, then continue with --resume "
                f"{self.run_dir}") if last else "; no resume state was saved yet"
        return LoraKitError(exc.message + tail, exc.path)

    # --- outputs -------------------------------------------------------------------------------
    def metadata(self, step: int, final: bool) -> dict[str, str]:
        from ..formats.metadata import build_metadata

        step = self.data_offset + step  # a continued file counts the steps of the file it continued
        epoch = (step * self.cfg.grad_accum * self.world) // max(1, self.data.plan.batches_per_epoch)
        training = training_fields(self.cfg, self.data, family=self.family, prediction_type=self.prediction_type,
                                   step=step, epoch=epoch, num_processes=self.world, started_at=self.started_at,
                                   finished_at=time.time() if final else None, session_id=self.session_id,
                                   skipped_steps=self.skipped, mixed_precision=self.precision.mixed_precision)
        out = Path(self.cfg.out)
        base = self.spec.model_lora_metadata(dict(self.model.unet.config))
        return build_metadata(self._unwrapped_network().kohya_modules(), family=self.family, base=base,
                              v_prediction=self.prediction_type == "v_prediction",
                              output_name=self.cfg.output_name or out.stem, comment=self.cfg.comment,
                              tag_frequency=self.data.tag_frequency(), training=training,
                              network_args=network_args(self.cfg), resolution=self.cfg.resolution,
                              trigger_phrase=self.cfg.trigger)

    def _unwrapped_network(self) -> LoRANetwork:
        return self.acc.unwrap_model(self.model_wrapped).network

    def save_lora(self, path: Path, step: int, final: bool, extra: dict[str, str] | None = None) -> dict:
        from ..formats import save_lora

        md = {**self.metadata(step, final), **(extra or {})}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # unset: the family's default layout, kohya for what only it holds (LoHa, LoKr, DoRA, OFT)
        save_lora(path, self._unwrapped_network().kohya_modules(), md, format=self.cfg.save_format,
                  dtype=SAVE_DTYPES[self.cfg.save_dtype], family=self.family)
        return md

    def _thumbnail(self) -> dict[str, str]:
        from ..formats.a1111_files import thumbnail_uri

        return {} if self.last_sample is None else {"modelspec.thumbnail": thumbnail_uri(self.last_sample)}

    def _a1111_files(self) -> None:
        """NAME.json (and NAME.preview.png after samples) beside a LoRA file, for A1111's and Forge's Lora page."""
        from .. import __version__
        from ..formats.a1111_files import write_sidecars

        out = Path(self.cfg.out)
        if out.suffix.lower() == ".safetensors" and out.is_file():
            notes = f"lorakit {__version__}: {self.step} steps on {Path(str(self.cfg.model)).name}"
            write_sidecars(out, self.spec, self.cfg.trigger, self.last_sample, self.cfg.comment or "", notes)

    def _epoch_save_due(self) -> bool:
        every = self.cfg.save_every_epochs * self.steps_per_epoch
        return bool(every) and self.step % every == 0 and self.step < self.cfg.steps and self.main

    def epoch_path(self, epoch: int) -> Path:
        """kohya's name of an epoch's file: OUT's stem + -000004 + OUT's suffix, beside OUT."""
        out = Path(self.cfg.out)
        return out.with_name(f"{out.stem}-{epoch:06d}{out.suffix}")

    def save_epoch(self, epoch: int) -> dict:
        return self.save_lora(self.epoch_path(epoch), self.step, final=False, extra={"ss_epoch": str(epoch)})

    def _state_info(self) -> dict:
        return {"step": self.step, "config": self._fingerprint(), "history": self.history.state(),
                "session_id": self.session_id, "started_at": self.started_at, "skipped_steps": self.skipped}

    def checkpoint(self, with_lora: bool = True) -> None:
        """A resume state (all processes), the LoRA so far and the loss curve (main process)."""
        try:
            state.save(self.acc, self.run_dir, self.step, self._state_info(), self.cfg.keep_states)
            self._saved_step = self.step
            if self.main:
                if with_lora:
                    self.save_lora(self.run_dir / f"lora-{self.step:06d}.safetensors", self.step, final=False)
                if self.history.steps:
                    self.history.plot(self.run_dir / "loss.png")
        except LoraKitError as exc:
            raise self._with_last_state(exc) from None

    def samples(self) -> None:
        cfg = self.cfg
        if not self.main:
            return
        prompts = read_sample_prompts(cfg.sample_prompts, cfg.trigger or self.data.instance[0].caption)
        net = self._unwrapped_network()
        net.eval()
        try:
            images = render_samples(self.model.pipe, prompts, seed=cfg.sample_seed, steps=cfg.sample_steps,
                                    guidance=cfg.sample_guidance, size=cfg.resolution,
                                    clip_skip=self.conditioner.clip_skip)
        finally:
            net.train()
        save_png(image_grid(images), self.run_dir / "samples" / f"step-{self.step:06d}.png")
        self.last_sample = images[0]

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        with self.stops:
            return self._run()

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm

        self.setup()
        cfg, acc = self.cfg, self.acc
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.progress and self.main))
        self.stops.armed = True
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                micro0 = (self.data_offset + self.step) * cfg.grad_accum
                self._bad_step = False
                loss = sum(self.micro_step(micro0 + k) for k in range(cfg.grad_accum)) / cfg.grad_accum
                self.step += 1
                self.step_times.append(time.perf_counter() - t0)
                if self._bad_step:
                    self.skipped.append(self.step)
                    if self.main:
                        bar.write(f"step {self.step}: the loss is {loss}, step skipped "
                                  f"({len(self.skipped)} skipped so far)", file=sys.stderr)
                else:
                    self.history.add(self.step, loss)
                lr = self.scheduler.get_last_lr()[0]
                if cfg.tensorboard:
                    acc.log({"loss": loss, "lr": lr, "skipped_steps": len(self.skipped)}, step=self.step)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
                if self.on_step is not None:
                    self.on_step(self.step, loss)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.checkpoint()
                if self._epoch_save_due():
                    self._write(self.save_epoch, self.step // self.steps_per_epoch)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._write(self.samples)
                if cfg.evaluate_every and self.step % cfg.evaluate_every == 0 and self.step < cfg.steps:
                    self._write(evaluate_run, self)
                signum = self._stop_signal()
                if signum:
                    bar.close()
                    self._stop_for_signal(signum)
        except KeyboardInterrupt:  # raised by on_step (the web UI's Stop button): at a step boundary
            bar.close()
            if self.world == 1 and self.step > 0:
                self.checkpoint(with_lora=False)
                print(f"interrupted at step {self.step}; continue with --resume {self.run_dir}", file=sys.stderr)
            raise
        bar.close()
        if self._saved_step != self.step:
            self.checkpoint(with_lora=False)
        md = {}
        if self.main:
            md = self._write(self.save_lora, Path(cfg.out), self.step, final=True, extra=self._thumbnail())
            self._write(self._a1111_files)
        if cfg.evaluate or cfg.evaluate_every:
            self.stops.notice = "stopping the evaluation; the LoRA is saved"
            self._write(evaluate_run, self)
            signum = self._stop_signal()
            if signum:
                raise Interrupted(f"{signal_name(signum)}: stopped during the evaluation at step {self.step}; the "
                                  f"LoRA {cfg.out} is complete", EXIT_CODES[signum])
        if cfg.tensorboard:
            acc.end_training()
        acc.wait_for_everyone()
        return TrainResult(Path(cfg.out), self.run_dir, self.step, list(self.history.losses),
                           self._unwrapped_network(), self.model, md, self.step_times)

    def _write(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoraKitError as exc:
            raise self._with_last_state(exc) from None

    def _stop_signal(self) -> int:
        """The signal that asked this run to stop (0: none); in DDP every process agrees on it."""
        signum = self.stops.signum or 0
        if self.world > 1:
            flag = torch.tensor([signum], device=self.acc.device)
            signum = int(self.acc.reduce(flag, "max").item())
        return signum

    def _stop_for_signal(self, signum: int) -> None:
        if self._saved_step != self.step:
            self.checkpoint(with_lora=False)
        where = state.state_dir(self.run_dir, self.step)
        raise Interrupted(f"{signal_name(signum)}: stopped at step {self.step} of {self.cfg.steps}; the resume "
                          f"state is {where}", EXIT_CODES[signum], run_dir=self.run_dir, state=where)
