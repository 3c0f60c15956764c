"""Every training option in one dataclass: defaults here, a TOML file over them, CLI flags on top.

The TOML may be flat or grouped in tables named after the sections below (`[network]`,
`[optimizer]` …); `--print-config` writes the resolved config in that grouped form, so its
output is a valid config file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

from ..errors import LoraKitError
from ..pickles import PICKLE_HELP

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ModelSource(str):
    """An option naming a model by a local folder or file, or by a hub id (`org/name`): a path when
    it is one. Its own type, so that what reads paths (the UI's guard, TOML-relative paths) finds
    these options among the others by their type, as it finds `Path` options."""


def opt(default, help: str, section: str, *, resume_may_change: bool = False, cli: bool = True):
    return field(default=default, metadata=dict(help=help, section=section, resume=resume_may_change, cli=cli))


MODEL_MISSING = ("no base model: give --model (a diffusers folder, a .safetensors file or a hub id; "
                 "--model toy trains the built-in toy model)")
# models.base_precision.CHOICES (spelt here: this module imports no torch)
BASE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp8", "int8", "nf4")
SECTIONS = ("model", "data", "prior", "network", "optimizer", "loss", "run", "output")


@dataclass
class TrainConfig:
    # model
    model: Optional[ModelSource] = opt(None, "base model (required): diffusers folder, single .safetensors, hub id, "
                                       "or 'toy' (the built-in 2 M-parameter toy)", "model")
    text_encoders: Optional[Path] = opt(None, "SD 3.x / Flux.1 single file without text encoders: a folder holding "
                                        "them (SD3: text_encoder, text_encoder_2, text_encoder_3, tokenizer_3; "
                                        "Flux: vae, text_encoder, text_encoder_2, tokenizer_2)", "model",
                                        resume_may_change=True)
    config_dir: Optional[Path] = opt(None, "diffusers config folder for a single file whose architecture differs "
                                     "from the shipped configs", "model", resume_may_change=True)
    prediction_type: Optional[str] = opt(None, "epsilon or v_prediction (default: from the model)", "model")
    allow_pickle: bool = opt(False, PICKLE_HELP, "model", resume_may_change=True)
    clip_skip: Optional[int] = opt(None, "condition on the N-th last CLIP layer (2: the penultimate), its output "
                                   "through the final layer norm, as kohya and A1111 (SD 1.x/2.x; SDXL already "
                                   "uses the penultimate layer and ignores it, as sd-scripts does)", "model")
    # data
    data: Optional[Path] = opt(None, "image folder (captions alongside, N_name repeat folders) or dataset TOML", "data")
    trigger: Optional[str] = opt(None, "trigger word prepended to every caption", "data")
    caption_ext: Optional[str] = opt(None, "caption extension (default: .txt, then .caption)", "data")
    keep_tokens: int = opt(0, "caption tags kept in front when shuffling (after the trigger)", "data")
    shuffle_caption: bool = opt(False, "shuffle comma-separated caption tags each step", "data")
    caption_dropout: float = opt(0.0, "probability of training a sample with an empty caption", "data")
    flip: bool = opt(False, "random horizontal flip", "data")
    repeats: int = opt(1, "repeats of images placed directly in --data (N_name folders set their own)", "data")
    resolution: Optional[int] = opt(None, "training resolution: buckets have area ≤ resolution² (default: the "
                                    "family's: 512 SD 1.x/2.x, 768 SD 2.x v, 1024 SDXL, SD 3.x, Flux.1)", "data")
    bucket: bool = opt(True, "aspect-ratio bucketing (off: centre-crop everything square)", "data")
    bucket_step: Optional[int] = opt(None, "bucket side step in pixels (default 64; SDXL 32)", "data")
    min_bucket_side: Optional[int] = opt(None, "smallest bucket side (default resolution/2)", "data")
    max_bucket_side: Optional[int] = opt(None, "largest bucket side (default 2×resolution)", "data")
    max_upscale: float = opt(2.0, "refuse images that must be enlarged more than this", "data")
    bucket_no_upscale: bool = opt(False, "sd-scripts' bucket_no_upscale: an image smaller than the resolution trains "
                                  "in its own bucket (its size rounded down to the bucket step), never enlarged",
                                  "data")
    batch_size: int = opt(1, "images per step per process", "data")
    validation_split: float = opt(0.0, "share of the instance images held out of training for validation (chosen "
                                  "by --seed; 0: none)", "data")
    validation_data: Optional[Path] = opt(None, "a folder of held-out images (captions alongside) for validation, "
                                          "instead of --validation-split", "data")
    cache_latents: str = opt("memory", "VAE latents cache: memory, disk or none", "data", resume_may_change=True)
    cache_text: str = opt("memory", "text-embedding cache: memory, disk or none (off when the text encoder trains)",
                          "data", resume_may_change=True)
    cache_dir: Optional[Path] = opt(None, "where the disk caches live (default RUN_DIR/cache)", "data",
                                    resume_may_change=True)
    # prior preservation
    class_prompt: Optional[str] = opt(None, "DreamBooth class prompt, e.g. 'a dog', or a .txt file of prompts "
                                       "(enables prior preservation)", "prior")
    class_data: Optional[Path] = opt(None, "folder of class images (missing ones are generated)", "prior")
    prior_weight: float = opt(1.0, "weight of the prior-preservation loss", "prior")
    prior_target: str = opt("base", "what the prior loss pulls regularisation/class images toward: base (the frozen "
                            "base model's own prediction on the same noisy latent: 'change nothing here') or image "
                            "(DreamBooth's and kohya's: the image's own noise)", "prior")
    num_class_images: int = opt(0, "class images wanted (0: as many as training images); missing ones are generated",
                                "prior")
    class_steps: int = opt(25, "sampling steps when generating class images", "prior")
    class_guidance: float = opt(7.5, "guidance scale when generating class images", "prior")
    # network
    network: str = opt("lora", "adapter trained: lora, locon (LoRA + 3×3 convs), loha, lokr, dora, oft (the last four "
                       "through LyCORIS; written in the layout A1111 and ComfyUI load)", "network")
    network_args: list = opt((), "algorithm options KEY=VALUE, as LyCORIS names them (factor, decompose_both, "
                             "full_matrix, use_tucker, conv_dim, conv_alpha, dora_wd, rank_dropout, module_dropout, "
                             "rs_lora, constraint …); repeat the flag or quote several", "network")
    rank: int = opt(16, "LoRA rank", "network")
    network_weights: Optional[Path] = opt(None, "continue from this LoRA file: its factors are the starting point "
                                          "(the optimizer and LR schedule start afresh, as kohya's "
                                          "--network_weights; the data order continues after its ss_steps)",
                                          "network")
    dim_from_weights: bool = opt(False, "take rank, alpha and the adapted modules from --network-weights",
                                 "network")
    alpha: Optional[float] = opt(None, "LoRA alpha (default: rank, i.e. scale 1)", "network")
    preset: str = opt("transformer", "target preset: attn, cross-attn, attn-mlp, transformer, full (SD 3.x, "
                      "Flux.1: attn = attention, attn-mlp = + MLP, transformer = every linear of the blocks)", "network")
    conv_rank: Optional[int] = opt(None, "rank of 3×3 convolutions (preset full; default: none adapted)", "network")
    conv_alpha: Optional[float] = opt(None, "alpha of 3×3 convolutions (default: conv rank)", "network")
    train_unet: bool = opt(True, "train the UNet LoRA", "network")
    train_text_encoder: Optional[bool] = opt(None, "train a text-encoder LoRA too (default: yes for SD 1.x, 2.x "
                                             "and XL, as kohya does; no for SD 3.x and Flux.1)", "network")
    init: str = opt("kaiming", "LoRA down init: kaiming (kohya) or gaussian (PEFT)", "network")
    dropout: float = opt(0.0, "dropout on the LoRA hidden activations", "network")
    rank_dropout: float = opt(0.0, "drop whole ranks (kohya's rank_dropout)", "network")
    module_dropout: float = opt(0.0, "skip a whole module for a step (kohya's module_dropout)", "network")
    # optimizer
    optimizer: str = opt("adamw", "adamw, adamw8bit, lion, prodigy or adafactor", "optimizer")
    lr: float = opt(1e-4, "learning rate (UNet LoRA; Prodigy: use 1.0)", "optimizer")
    text_encoder_lr: Optional[float] = opt(None, "text-encoder LoRA learning rate (default: lr)", "optimizer")
    weight_decay: float = opt(1e-2, "weight decay", "optimizer")
    betas: list = opt((0.9, 0.999), "optimizer betas", "optimizer", cli=False)
    eps: float = opt(1e-8, "optimizer epsilon", "optimizer")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)", "optimizer")
    scheduler: str = opt("constant", "LR schedule: constant, constant_with_warmup, linear, cosine, "
                         "cosine_with_restarts, polynomial", "optimizer")
    warmup_steps: int = opt(0, "LR warmup steps", "optimizer")
    scheduler_cycles: int = opt(1, "cycles of cosine_with_restarts", "optimizer")
    scheduler_power: float = opt(1.0, "power of the polynomial schedule", "optimizer")
    # loss
    min_snr_gamma: Optional[float] = opt(None, "min-SNR loss weighting gamma (5 is usual; off by default)", "loss")
    weighting_scheme: str = opt("logit_normal", "flow-matching models (SD 3.x, Flux.1): timestep density and loss weighting "
                                "as diffusers' SD3 scripts: logit_normal, mode, uniform, sigma_sqrt, cosmap, none",
                                "loss")
    guidance_scale: Optional[float] = opt(None, "Flux.1 dev: the value fed to its guidance embedding while training "
                                          "(default 3.5, as diffusers' and sd-scripts' Flux trainers)", "loss")
    loss_type: str = opt("l2", "l2, huber or smooth_l1 (sd-scripts' --loss_type)", "loss")
    huber_c: float = opt(0.1, "Huber / smooth-L1 threshold parameter", "loss")
    huber_schedule: str = opt("snr", "how the threshold varies with the timestep: constant, exponential or snr "
                              "(sd-scripts'; snr needs a noise-prediction model)", "loss")
    huber_scale: float = opt(1.0, "scale of the constant and exponential Huber thresholds", "loss")
    noise_offset: float = opt(0.0, "noise offset (0.05–0.1 helps very dark/bright images)", "loss")
    l1_penalty: float = opt(0.0, "coefficient of Σ|w| over the LoRA weights", "loss")
    l2_penalty: float = opt(0.0, "coefficient of Σw² over the LoRA weights", "loss")
    nan_policy: str = opt("stop", "on a NaN/Inf loss: stop (naming the step and the last good checkpoint) or skip "
                          "that optimizer step (counted in the log and the LoRA metadata)", "loss",
                          resume_may_change=True)
    # run
    steps: int = opt(1000, "optimizer steps", "run")
    epochs: Optional[int] = opt(None, "passes over the data set instead of --steps: steps = epochs × ⌈batches "
                                "per epoch / processes / --grad-accum⌉, as kohya's --max_train_epochs", "run")
    grad_accum: int = opt(1, "gradient accumulation micro-steps per optimizer step", "run")
    mixed_precision: str = opt("auto", "auto, no, fp16 or bf16 (frozen base weights in that dtype, LoRA and optimizer "
                               "in fp32); auto: bf16 on GPUs that have it (else fp16), bf16 on CPUs with AVX512-BF16 "
                               "or AMX when the model is large enough for it to pay, else fp32", "run")
    base_precision: str = opt("auto", "storage of the frozen denoiser and big text encoders (T5): auto (as "
                              "--mixed-precision), fp32, bf16, fp16, or fp8, int8, nf4 (Linear weights quantized "
                              "through torchao, computed in bf16, fp16 on GPUs without it; LoRA and optimizer as "
                              "--mixed-precision says)", "run")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward: less memory, more time", "run")
    memory_budget: Optional[str] = opt(None, "fit the run in this much memory (e.g. 12GB): the cheapest of gradient "
                                       "checkpointing, an fp8/int8/nf4 base, an 8-bit or factored optimizer and "
                                       "block swap that fits; refused when nothing does", "run",
                                       resume_may_change=True)
    blocks_to_swap: int = opt(0, "CUDA: keep N transformer blocks in CPU memory, each copied to the GPU just before "
                              "use (frozen weights only; implies --gradient-checkpointing)", "run",
                              resume_may_change=True)
    sdpa: bool = opt(True, "scaled-dot-product attention (off: the classic attention processor)", "run")
    seed: int = opt(0, "seed of everything random (data order, noise, augmentation)", "run")
    device: Optional[str] = opt(None, "device (default: what accelerate picks)", "run", resume_may_change=True)
    # output
    out: Path = opt(Path("lora.safetensors"), "the LoRA file written at the end", "output", resume_may_change=True)
    run_dir: Optional[Path] = opt(None, "logs, samples, checkpoints and resume states (default: OUT without "
                                  "suffix + '-run')", "output", resume_may_change=True)
    save_every: int = opt(0, "save the LoRA and a resume state every N steps (0: only at the end)", "output",
                          resume_may_change=True)
    save_every_epochs: int = opt(0, "also write OUT's stem + '-000004.safetensors' (kohya's names) beside OUT "
                                 "every N epochs (0: off)", "output", resume_may_change=True)
    keep_states: int = opt(2, "resume states kept (older ones are deleted)", "output", resume_may_change=True)
    save_dtype: str = opt("fp16", "dtype of the saved LoRA: fp16, bf16 or fp32", "output", resume_may_change=True)
    save_format: Optional[str] = opt(None, "LoRA file layout: kohya (default for SD 1.x/2.x/XL and Flux.1), "
                                     "diffusers (default for SD 3.x: loads in diffusers and ComfyUI), comfyui, "
                                     "onetrainer", "output",
                                     resume_may_change=True)
    output_name: Optional[str] = opt(None, "ss_output_name (default: OUT's stem)", "output", resume_may_change=True)
    comment: Optional[str] = opt(None, "ss_training_comment", "output", resume_may_change=True)
    sample_every: int = opt(0, "write sample images every N steps (0: off)", "output", resume_may_change=True)
    sample_prompts: Optional[Path] = opt(None, "text file, one prompt a line (default: the trigger), with kohya's "
                                         "options after it: --n negative --w 512 --h 768 --s 28 --l 7.5 --d 42 "
                                         "--ss sampler", "output", resume_may_change=True)
    sample_steps: Optional[int] = opt(None, "sampling steps for samples (default: the family's)", "output",
                                      resume_may_change=True)
    sample_guidance: Optional[float] = opt(None, "guidance scale for samples (default: the family's: 7.5 SD, "
                                           "5 SD 3.x, 3.5 Flux.1 dev)", "output", resume_may_change=True)
    sample_seed: int = opt(1234, "seed of the sample images", "output", resume_may_change=True)
    evaluate: bool = opt(False, "measure the LoRA at the end (as `lorakit evaluate`): RUN_DIR/evaluate/step-N/"
                         "report.html", "output", resume_may_change=True)
    evaluate_every: int = opt(0, "also measure it every N steps, figures logged to TensorBoard (0: off)", "output",
                              resume_may_change=True)
    evaluate_prompts: Optional[Path] = opt(None, "prompts for the evaluation, one a line (default: the trigger in "
                                           "new contexts, and prompts without it)", "output", resume_may_change=True)
    evaluate_n: int = opt(2, "seeds per prompt in an evaluation", "output", resume_may_change=True)
    clip_model: ModelSource = opt(ModelSource("openai/clip-vit-large-patch14"), "CLIP for the evaluation (folder "
                                  "or hub id, read offline; none: skip)", "output", resume_may_change=True)
    dino_model: ModelSource = opt(ModelSource("facebook/dinov2-small"), "DINOv2 for the evaluation (folder or hub "
                                  "id, read offline; none: skip)", "output", resume_may_change=True)
    keep_best: Optional[str] = opt(None, "write OUT.best.safetensors from the evaluated step that scores best: "
                                   "val-loss, fidelity, drift or combined (fidelity − drift, ties to the later "
                                   "step); needs --evaluate-every", "output")
    progress: bool = opt(True, "tqdm progress bar", "output", resume_may_change=True)
    tensorboard: bool = opt(True, "TensorBoard logs in RUN_DIR/logs", "output", resume_may_change=True)
    resume: Optional[Path] = opt(None, "resume state folder (or a run folder: its latest state)", "run",
                                 resume_may_change=True)

    # derived ----------------------------------------------------------------------------------
    def with_family_defaults(self, family, v_prediction: bool, denoiser_config=None) -> "TrainConfig":
        """The options left unset that the model family decides (resolution, sample steps and
        guidance), filled in with its values (`family.training_defaults`)."""
        found = family.training_defaults(v_prediction, denoiser_config or {})
        return dataclasses.replace(self, **{k: v for k, v in found.items() if getattr(self, k) is None})

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        out = Path(self.out)
        return out.with_name(out.stem + "-run")

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise LoraKitError(msg)

        choices = {"cache_latents": ("memory", "disk", "none"), "cache_text": ("memory", "disk", "none"),
                   "preset": ("attn", "cross-attn", "attn-mlp", "transformer", "full"),
                   "init": ("kaiming", "gaussian"),
                   "weighting_scheme": ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap", "none"),
                   "save_format": (None, "kohya", "diffusers", "comfyui", "onetrainer"),
                   "optimizer": ("adamw", "adamw8bit", "lion", "prodigy", "adafactor"),
                   "prior_target": ("base", "image"),
                   "mixed_precision": ("auto", "no", "fp16", "bf16"),
                   "base_precision": BASE_PRECISIONS, "save_dtype": ("fp16", "bf16", "fp32"),
                   "scheduler": ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                 "polynomial"),
                   "prediction_type": (None, "epsilon", "v_prediction"), "nan_policy": ("stop", "skip"),
                   "keep_best": (None, "val-loss", "fidelity", "drift", "combined"),
                   "loss_type": ("l2", "huber", "smooth_l1"), "huber_schedule": ("constant", "exponential", "snr")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                bad(f"--{_flag(key)} must be one of {', '.join(a for a in allowed if a)}, not {getattr(self, key)!r}")
        if self.blocks_to_swap < 0:
            bad(f"--blocks-to-swap must be ≥ 0, not {self.blocks_to_swap}")
        positive = ("rank", "steps", "batch_size", "grad_accum", "resolution", "repeats", "keep_states", "evaluate_n",
                    "epochs", "clip_skip", "sample_steps")
        for key in positive:
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(f"--{_flag(key)} must be at least 1, not {getattr(self, key)}")
        for key in ("caption_dropout", "dropout", "rank_dropout", "module_dropout"):
            if not 0 <= getattr(self, key) < 1:
                bad(f"--{_flag(key)} must be in [0, 1), not {getattr(self, key)}")
        for key in ("lr", "prior_weight", "noise_offset", "l1_penalty", "l2_penalty", "weight_decay",
                    "max_grad_norm", "max_upscale", "huber_scale"):
            v = getattr(self, key)
            if v is None or not math.isfinite(v) or v < 0:
                bad(f"--{_flag(key)} must be a finite number ≥ 0, not {v}")
        if not 0 < self.huber_c <= 1:
            bad(f"--huber-c must be in (0, 1], not {self.huber_c}")
        if self.save_every_epochs < 0:
            bad(f"--save-every-epochs must be ≥ 0 (0: off), not {self.save_every_epochs}")
        if self.save_every_epochs and self.epochs is None:
            bad("--save-every-epochs needs --epochs (the run's length in epochs)")
        if self.dim_from_weights and self.network_weights is None:
            bad("--dim-from-weights needs --network-weights FILE (the LoRA it reads them from)")
        if self.model is None:
            bad(MODEL_MISSING)
        if self.data is None:
            bad("no training data: give --data DIR (or a dataset .toml), or `data = ...` in the config")
        if not self.train_unet and self.train_text_encoder is not True:
            bad("nothing to train: --no-train-unet needs --train-text-encoder")
        if self.class_data is not None and not self.class_prompt:
            bad("--class-data needs --class-prompt (the prompt the class images show)")
        if self.evaluate_every < 0:
            bad(f"--evaluate-every must be ≥ 0 (0: off), not {self.evaluate_every}")
        if not 0 <= self.validation_split < 1:
            bad(f"--validation-split must be in [0, 1), not {self.validation_split}")
        if self.validation_split and self.validation_data is not None:
            bad("give --validation-split or --validation-data, not both")
        if self.keep_best and not self.evaluate_every:
            bad(f"--keep-best {self.keep_best} needs --evaluate-every N (the steps it chooses among)")
        if self.keep_best == "val-loss" and not (self.validation_split or self.validation_data):
            bad("--keep-best val-loss needs held-out images: --validation-split F or --validation-data DIR")
        if self.epochs is None and self.warmup_steps > self.steps:
            bad(f"--warmup-steps {self.warmup_steps} is more than --steps {self.steps}")
        self.network_spec()
        return self

    def network_spec(self):
        """--network and --network-args checked, with the options they share with flags of their own
        (conv_dim ↔ --conv-rank, the dropouts …) agreeing, and those flags folded in."""
        from ..lora.algos import parse

        spec = parse(self.network, self.network_args)
        flags = {"conv_dim": ("conv_rank", None), "conv_alpha": ("conv_alpha", None), "dropout": ("dropout", 0.0),
                 "rank_dropout": ("rank_dropout", 0.0), "module_dropout": ("module_dropout", 0.0)}
        args = dict(spec.args)
        for key, (flag, unset) in flags.items():
            own = getattr(self, flag)
            if key in args and own != unset and own != args[key]:
                raise LoraKitError(f"--network-args {key}={args[key]} contradicts --{_flag(flag)} {own}")
            if key not in args and own != unset:
                args[key] = own
        if self.network == "oft" and self.alpha is not None:
            raise LoraKitError("--alpha means nothing to --network oft: its bound is --network-args constraint=…")
        if self.network == "oft" and "rank_dropout" in args and args["rank_dropout"]:
            raise LoraKitError("--rank-dropout does not apply to --network oft (it has no ranks)")
        if args.get("use_tucker") and not args.get("conv_dim"):
            raise LoraKitError("--network-args use_tucker decomposes 3×3 convolutions: give conv_dim (or --conv-rank)")
        if self.init != "kaiming" and spec.uses_lycoris:
            raise LoraKitError(f"--init {self.init} is for lorakit's LoRA: --network {self.network} initialises "
                               "as LyCORIS does")
        return type(spec)(spec.algo, args)

    # TOML ------------------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: Path) -> "TrainConfig":
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoraKitError("config file does not exist", path) from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LoraKitError(f"cannot read config ({exc})", path) from None
        flat: dict[str, Any] = {}
        for key, value in doc.items():
            if isinstance(value, dict):
                if key not in SECTIONS:
                    raise LoraKitError(f"unknown table [{key}] (sections: {', '.join(SECTIONS)})", path)
                flat.update(value)
            else:
                flat[key] = value
        cfg = cls().override(flat, source=path)
        # relative paths are the TOML's neighbours; a model option only when one is there (else a hub id)
        for key in PATH_OPTIONS:
            v = getattr(cfg, key)
            if key in flat and v is not None:
                setattr(cfg, key, _next_to(path, v))
        for key in MODEL_OPTIONS:
            v = getattr(cfg, key)
            if key in flat and v != "toy" and not Path(v).is_absolute() and (path.parent / v).exists():
                setattr(cfg, key, ModelSource(path.parent / v))
        return cfg

    def override(self, values: dict[str, Any], source: object = None) -> "TrainConfig":
        """A copy with `values` applied (None values are skipped: a flag the user did not give)."""
        hints = get_type_hints(type(self))
        names = {f.name for f in fields(self)}
        changes = {}
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in names:
                from .kohya_table import config_hint

                raise LoraKitError(f"unknown option {key!r}{config_hint(key, names)}", source)
            if value is None:
                continue
            changes[key] = _coerce(key, value, hints[key], source)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v)
        return out

    def to_toml(self) -> str:
        lines = []
        by_section: dict[str, list] = {s: [] for s in SECTIONS}
        for f in fields(self):
            by_section[f.metadata["section"]].append(f)
        for section in SECTIONS:
            lines.append(f"[{section}]")
            for f in by_section[section]:
                v = self.to_dict()[f.name]
                line = f"{f.name} = {_toml_value(v)}" if v is not None else f"# {f.name} = "
                lines.append(f"{line:<48} # {f.metadata['help']}")
            lines.append("")
        return "\n".join(lines)

    def fingerprint(self) -> dict[str, Any]:
        """The options a resumed run must share with the run it continues."""
        return {f.name: v for f, v in zip(fields(self), self.to_dict().values()) if not f.metadata["resume"]}


def _leaf_types(hint) -> set:
    """The types a hint is made of: Path for Path, Path | None and list[Path]."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return {hint} if not args else set().union(*map(_leaf_types, args))


def options_of_type(kind: type) -> tuple[str, ...]:
    """The options whose values are of `kind` (alone, optional or in a list), from the field types."""
    hints = get_type_hints(TrainConfig)
    return tuple(f.name for f in fields(TrainConfig) if kind in _leaf_types(hints[f.name]))


PATH_OPTIONS = options_of_type(Path)  # every option that names a file or folder
MODEL_OPTIONS = options_of_type(ModelSource)  # every option that names a model: a path, or a hub id


def _next_to(toml: Path, value):
    if isinstance(value, (list, tuple)):
        return tuple(_next_to(toml, v) for v in value)
    return value if Path(value).is_absolute() else toml.parent / value


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def _coerce(key: str, value, hint, source):
    if get_origin(hint) is Optional or (get_origin(hint) is not None and type(None) in get_args(hint)):
        hint = next(a for a in get_args(hint) if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is Path:
            return Path(value)
        if hint is ModelSource:
            return ModelSource(value)
        if hint is list:
            if isinstance(value, dict):  # a TOML table of network_args
                return tuple(f"{k}={v}" for k, v in value.items())
            return tuple([value] if isinstance(value, str) else value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise LoraKitError(f"option {key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}", source) from None
    return value
