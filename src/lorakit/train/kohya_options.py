"""sd-scripts' training options under their own names: each one lorakit has becomes lorakit's
option; each one it has not is refused with what to use instead, never guessed.

Read from kohya-ss/sd-scripts at commit 48d368fa557731ad0488c07304dfeba8c07910eb:
train_network.py `setup_parser()` (and sdxl_/flux_/sd3_train_network.py's, which extend it),
library/train_util.py `add_sd_models_arguments`, `add_dataset_arguments`,
`add_training_arguments`, `add_optimizer_arguments`, `add_dit_training_arguments`,
library/flux_train_utils.py `add_flux_train_arguments`, library/sd3_train_utils.py
`add_sd3_training_arguments`, and `train_util.read_config_from_file` for `--config_file`.

Where sd-scripts' default differs from lorakit's and changes what is trained, a run that uses an
sd-scripts spelling or config file gets sd-scripts' default (`KOHYA_DEFAULTS`).
"""

from __future__ import annotations

import ast
import difflib
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from ..errors import LoraKitError

SD_SCRIPTS = "kohya-ss/sd-scripts@48d368fa557731ad0488c07304dfeba8c07910eb"


@dataclass(frozen=True)
class Kohya:
    """How sd-scripts' argparse reads an option (`kind`), and the lorakit option it sets."""

    kind: str  # flag (store_true), str, int, float, int_or_float, list (nargs=*), float_list
    option: str | None = None  # lorakit option it sets as is; None: a rule in `translate` reads it


def _opt(kind, option=None):
    return Kohya(kind, option)


# sd-scripts dest → how lorakit takes it
TABLE: dict[str, Kohya] = {
    # model
    "pretrained_model_name_or_path": _opt("str", "model"),
    "v_parameterization": _opt("flag"),  # → prediction_type v_prediction
    "v2": _opt("flag"),  # lorakit reads SD 2.x from the model itself
    "model_type": _opt("str"),  # flux or chroma: lorakit reads it from the model itself
    # data
    "train_data_dir": _opt("str", "data"),
    "dataset_config": _opt("str", "data"),
    "shuffle_caption": _opt("flag", "shuffle_caption"),
    "caption_extension": _opt("str", "caption_ext"),
    "caption_extention": _opt("str", "caption_ext"),  # sd-scripts' old misspelling, still accepted there
    "keep_tokens": _opt("int", "keep_tokens"),
    "flip_aug": _opt("flag", "flip"),
    "caption_dropout_rate": _opt("float", "caption_dropout"),
    "resolution": _opt("str"),  # "W,H" or "N"
    "enable_bucket": _opt("flag", "bucket"),
    "bucket_no_upscale": _opt("flag", "bucket_no_upscale"),
    "min_bucket_reso": _opt("int", "min_bucket_side"),
    "max_bucket_reso": _opt("int", "max_bucket_side"),
    "bucket_reso_steps": _opt("int", "bucket_step"),
    "cache_latents": _opt("flag"),
    "cache_latents_to_disk": _opt("flag"),
    "cache_text_encoder_outputs": _opt("flag"),
    "cache_text_encoder_outputs_to_disk": _opt("flag"),
    "train_batch_size": _opt("int", "batch_size"),
    "validation_split": _opt("float", "validation_split"),
    "prior_loss_weight": _opt("float", "prior_weight"),
    "clip_skip": _opt("int", "clip_skip"),
    "max_token_length": _opt("int"),  # 75 (None) only
    # network
    "network_module": _opt("str"),
    "network_args": _opt("list"),
    "network_dim": _opt("int", "rank"),
    "network_alpha": _opt("float", "alpha"),
    "network_dropout": _opt("float", "dropout"),
    "network_weights": _opt("str", "network_weights"),
    "dim_from_weights": _opt("flag", "dim_from_weights"),
    "network_train_unet_only": _opt("flag"),
    "network_train_text_encoder_only": _opt("flag"),
    # optimizer
    "optimizer_type": _opt("str"),
    "use_8bit_adam": _opt("flag"),
    "use_lion_optimizer": _opt("flag"),
    "optimizer_args": _opt("list"),
    "learning_rate": _opt("float"),
    "unet_lr": _opt("float"),
    "text_encoder_lr": _opt("float_list"),
    "max_grad_norm": _opt("float", "max_grad_norm"),
    "lr_scheduler": _opt("str"),
    "lr_warmup_steps": _opt("int_or_float"),
    "lr_scheduler_num_cycles": _opt("int", "scheduler_cycles"),
    "lr_scheduler_power": _opt("float", "scheduler_power"),
    # loss
    "noise_offset": _opt("float", "noise_offset"),
    "min_snr_gamma": _opt("float", "min_snr_gamma"),
    "loss_type": _opt("str", "loss_type"),
    "huber_c": _opt("float", "huber_c"),
    "huber_schedule": _opt("str", "huber_schedule"),
    "weighting_scheme": _opt("str", "weighting_scheme"),
    "guidance_scale": _opt("float", "guidance_scale"),
    "timestep_sampling": _opt("str"),
    "sigmoid_scale": _opt("float"),
    "discrete_flow_shift": _opt("float"),
    "model_prediction_type": _opt("str"),
    # run
    "max_train_steps": _opt("int", "steps"),
    "max_train_epochs": _opt("int", "epochs"),
    "gradient_accumulation_steps": _opt("int", "grad_accum"),
    "mixed_precision": _opt("str", "mixed_precision"),
    "fp8_base": _opt("flag"),
    "gradient_checkpointing": _opt("flag", "gradient_checkpointing"),
    "blocks_to_swap": _opt("int", "blocks_to_swap"),
    "sdpa": _opt("flag"),
    "xformers": _opt("flag"),
    "mem_eff_attn": _opt("flag"),
    "seed": _opt("int", "seed"),
    # output
    "output_dir": _opt("str"),
    "output_name": _opt("str"),
    "save_model_as": _opt("str"),  # safetensors only
    "save_precision": _opt("str"),
    "save_every_n_steps": _opt("int", "save_every"),
    "save_every_n_epochs": _opt("int", "save_every_epochs"),
    "training_comment": _opt("str", "comment"),
    "sample_every_n_steps": _opt("int", "sample_every"),
    "sample_prompts": _opt("str", "sample_prompts"),
    "log_with": _opt("str"),  # tensorboard only
    # read here, not options of a run
    "config_file": _opt("str"),
}

# accepted and reported once: they change how fast or where things go, not what is trained
NO_EFFECT: dict[str, tuple[str, str]] = {
    "max_data_loader_n_workers": ("int", "lorakit reads images without DataLoader workers"),
    "persistent_data_loader_workers": ("flag", "lorakit reads images without DataLoader workers"),
    "vae_batch_size": ("int", "lorakit encodes latents one image at a time"),
    "text_encoder_batch_size": ("int", "lorakit encodes captions in training batches"),
    "lowram": ("flag", "lorakit places weights itself"),
    "highvram": ("flag", "lorakit places weights itself"),
    "skip_cache_check": ("flag", "lorakit's cache is keyed by content"),
    "cache_info": ("flag", "lorakit's cache is keyed by content"),
    "disable_mmap_load_safetensors": ("flag", "lorakit reads safetensors as it sees fit"),
    "logging_dir": ("str", "lorakit logs to RUN_DIR/logs (--run-dir)"),
    "log_prefix": ("str", "lorakit logs to RUN_DIR/logs (--run-dir)"),
    "log_config": ("flag", "the resolved config is in RUN_DIR"),
    "console_log_level": ("str", "lorakit prints what it does"),
    "console_log_file": ("str", "lorakit prints what it does"),
    "console_log_simple": ("flag", "lorakit prints what it does"),
    "no_half_vae": ("flag", "lorakit runs the VAE in fp32 for latents"),
}

_ENCODERS = ("lorakit reads a single-file model's text encoders and VAE from one diffusers folder: "
             "--text-encoders DIR")
_NONE = "lorakit has no equivalent"
_SUBSET = "lorakit reads it from a --dataset_config TOML (general, dataset or subset key of the same name)"
# sd-scripts options lorakit does not have: what to use instead
UNSUPPORTED: dict[str, str] = {
    "clip_l": _ENCODERS, "clip_g": _ENCODERS, "t5xxl": _ENCODERS, "ae": _ENCODERS,
    "vae": "lorakit uses the model's own VAE",
    **{k: _SUBSET for k in ("caption_prefix", "caption_suffix", "keep_tokens_separator", "secondary_separator",
                            "enable_wildcard", "caption_tag_dropout_rate", "color_aug", "random_crop")},
    "reg_data_dir": ("give the regularisation images as an `is_reg = true` subset of a --dataset_config TOML, "
                     "or --class-data DIR with --class-prompt TEXT"),
    "in_json": "lorakit reads captions from files beside the images (no fine-tuning metadata JSON)",
    "resume": "lorakit resumes its own states: --resume RUN_DIR",
    "output_config": "--print-config writes the resolved config",
    "sample_sampler": "training samples use the model's own scheduler; `lorakit generate --sampler` chooses one",
    "sample_every_n_epochs": "--sample-every N (steps)",
    "sample_at_first": _NONE,
    "fp8_base_unet": "--base-precision fp8 stores the denoiser and T5 in fp8 together",
    "full_fp16": "lorakit keeps the LoRA and optimizer in fp32 (--mixed-precision fp16)",
    "full_bf16": "lorakit keeps the LoRA and optimizer in fp32 (--mixed-precision bf16)",
    "t5xxl_max_token_length": "lorakit uses 512 T5 tokens on Flux.1 (sd-scripts' dev default) and 77 on SD 3.x",
    "apply_t5_attn_mask": _NONE,
    "lr_scheduler_type": "--scheduler: constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial",
    "lr_scheduler_args": "--scheduler-cycles and --scheduler-power",
    "training_shift": "lorakit uses the shift of the model's own scheduler config",
    "scale_weight_norms": _NONE,
    "base_weights": "merge first with `lorakit merge`, then train on the merged model",
    "base_weights_multiplier": "merge first with `lorakit merge`, then train on the merged model",
    "log_tracker_name": "lorakit logs to TensorBoard", "log_tracker_config": "lorakit logs to TensorBoard",
    "wandb_run_name": "lorakit logs to TensorBoard", "wandb_api_key": "lorakit logs to TensorBoard",
    "caption_separator": "lorakit separates caption tags with ','",
    "save_state": "every --save-every N steps lorakit saves a resume state beside the LoRA",
    "save_state_on_train_end": "lorakit's final resume state is in RUN_DIR",
    "save_last_n_steps": "--keep-states N", "save_last_n_steps_state": "--keep-states N",
    "save_last_n_epochs": "--keep-states N", "save_last_n_epochs_state": "--keep-states N",
    "validate_every_n_steps": "--evaluate-every N", "validation_seed": "--seed (it chooses the held-out images)",
}


# every other option of sd-scripts' four network trainers (at the commit above): refused, with what
# to use instead where UNSUPPORTED names it, else as having no equivalent
SD_SCRIPTS_ONLY = frozenset("""
    adaptive_noise_scale ae alpha_mask apply_lg_attn_mask apply_t5_attn_mask async_upload base_weights
    base_weights_multiplier caption_dropout_every_n_epochs caption_prefix caption_separator caption_suffix
    caption_tag_dropout_rate clip_g clip_g_dropout_rate clip_l clip_l_dropout_rate color_aug
    conditioning_data_dir controlnet_model_name_or_path cpu_offload_checkpointing dataset_class dataset_repeats
    ddp_gradient_as_bucket_view ddp_static_graph ddp_timeout debiased_estimation_loss debug_dataset deepspeed
    dynamo_backend enable_scaled_pos_embed enable_wildcard face_crop_aug_range fp16_master_weights_and_gradients
    fp8_base_unet full_bf16 full_fp16 fused_backward_pass huber_scale huggingface_path_in_repo
    huggingface_repo_id huggingface_repo_type huggingface_repo_visibility huggingface_token in_json
    initial_epoch initial_step ip_noise_gamma ip_noise_gamma_random_strength keep_tokens_separator
    log_tracker_config log_tracker_name logit_mean logit_std lr_decay_steps lr_scheduler_args
    lr_scheduler_min_lr_ratio lr_scheduler_timescale lr_scheduler_type masked_loss max_timestep
    max_validation_steps metadata_author metadata_description metadata_is_negative_embedding metadata_license
    metadata_merged_from metadata_preprocessor metadata_tags metadata_thumbnail metadata_title
    metadata_trigger_phrase metadata_usage_hint min_timestep mode_scale multires_noise_discount
    multires_noise_iterations no_metadata noise_offset_random_strength offload_optimizer_device
    offload_optimizer_nvme_path offload_param_device offload_param_nvme_path output_config
    pos_emb_random_crop_rate random_crop reg_data_dir resize_interpolation resume resume_from_huggingface
    sample_at_first sample_every_n_epochs sample_sampler save_clip save_last_n_epochs save_last_n_epochs_state
    save_last_n_steps save_last_n_steps_state save_n_epoch_ratio save_state save_state_on_train_end
    save_state_to_huggingface save_t5xxl scale_v_pred_loss_like_noise_pred scale_weight_norms
    secondary_separator skip_until_initial_step split_mode t5_dropout_rate t5xxl t5xxl_device t5xxl_dtype
    t5xxl_max_token_length token_warmup_min token_warmup_step tokenizer_cache_dir torch_compile training_shift
    v_pred_like_loss vae validate_every_n_epochs validate_every_n_steps validation_seed wandb_api_key
    wandb_run_name weighted_captions zero3_init_flag zero3_save_16bit_model zero_stage zero_terminal_snr
""".split())


def kohya_flag(dest: str) -> str:
    return "--" + dest


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _lorakit_options() -> set[str]:
    from .config import TrainConfig

    return {f.name for f in fields(TrainConfig)}


def has_option(name: str) -> bool:
    """Whether this lorakit has the option (some of the table's targets come with later versions)."""
    return name in _lorakit_options()


# --- reading values as sd-scripts' argparse does ------------------------------------------------

def _int_or_float(text: str):
    """train_util.add_optimizer_arguments' int_or_float: '10%' → 0.1, '0.1' → 0.1, '10' → 10."""
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    value = float(text)
    return int(text) if value >= 1 else value


_CONVERT: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "int_or_float": _int_or_float}


def _kind(dest: str) -> str | None:
    if dest in TABLE:
        return TABLE[dest].kind
    if dest in NO_EFFECT:
        return NO_EFFECT[dest][0]
    return None


def is_kohya_token(token: str, value: str | None = None) -> bool:
    """`--network_dim` (an underscore in the name): sd-scripts' spelling, as lorakit's flags have none; and
    sd-scripts' one-word options lorakit lacks (`--xformers`). A name both share is lorakit's, but for
    sd-scripts' `--resolution W,H`."""
    if not token.startswith("--"):
        return False
    name, _, inline = token[2:].partition("=")
    if "_" in name:
        return True
    if name == "resolution":
        return "," in (inline or value or "")
    return name not in _lorakit_flags() and (name in TABLE or name in NO_EFFECT or name in SD_SCRIPTS_ONLY)


def _lorakit_flags() -> set[str]:
    return {n.replace("_", "-") for n in _lorakit_options()}


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(lorakit's own arguments, {sd-scripts dest: value as its argparse gives it})."""
    rest: list[str] = []
    given: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            rest += argv[i - 1:]
            break
        if not is_kohya_token(token, argv[i] if i < len(argv) else None):
            rest.append(token)
            continue
        name, eq, inline = token[2:].partition("=")
        kind = _kind(name)
        if kind is None:
            unknown(name)
        if kind == "flag":
            if eq:
                raise LoraKitError(f"{kohya_flag(name)} takes no value")
            given[name] = True
            continue
        values = [inline] if eq else []
        if not eq:
            while i < len(argv) and not _is_option(argv[i]):
                values.append(argv[i])
                i += 1
                if kind not in ("list", "float_list"):
                    break
        given[name] = _convert(name, kind, values)
    return rest, given


def _is_option(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not token[1].isdigit() and token[1] != "."


def _convert(name: str, kind: str, values: list[str]):
    try:
        if kind == "list":
            return list(values)
        if kind == "float_list":
            return [float(v) for v in values]
        if len(values) != 1:
            raise LoraKitError(f"{kohya_flag(name)} expects one value")
        return _CONVERT[kind](values[0])
    except ValueError:
        raise LoraKitError(f"{kohya_flag(name)}: {' '.join(values)!r} is not a valid {kind}") from None


def unknown(name: str, source: object = None):
    """Raise the one line for an option lorakit does not take under this name."""
    if name in UNSUPPORTED or name in SD_SCRIPTS_ONLY:
        raise LoraKitError(f"sd-scripts' {kohya_flag(name)} is not supported: {UNSUPPORTED.get(name, _NONE)}", source)
    close = suggest(name)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise LoraKitError(f"unknown option {kohya_flag(name)}{hint}", source)


def suggest(name: str) -> list[str]:
    """Close names among lorakit's flags and sd-scripts' options lorakit takes, compared with '-' and '_'
    alike; a true typo finds its option, an unrelated name finds nothing."""
    norm = name.lower().replace("-", "_").lstrip("_")
    candidates = {n: _flag(n) for n in _lorakit_options()}
    candidates.update({n: kohya_flag(n) for n in [*TABLE, *NO_EFFECT]})
    return [candidates[n] for n in difflib.get_close_matches(norm, list(candidates), n=2, cutoff=0.8)]


def config_hint(key: str) -> str:
    """What a lorakit TOML or option dict's unknown key `key` is: sd-scripts' name of a lorakit option,
    or a typo of a lorakit option (difflib over the names, '-' and '_' alike)."""
    row = TABLE.get(key)
    if row is not None and row.option is not None and has_option(row.option):
        return f" (sd-scripts' name of {row.option}; sd-scripts configs are read with --config_file)"
    if key in TABLE or key in SD_SCRIPTS_ONLY or key in NO_EFFECT:
        return " (an sd-scripts option: sd-scripts configs are read with --config_file)"
    close = difflib.get_close_matches(key.lower().replace("-", "_"), sorted(_lorakit_options()), n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


# --- --config_file ------------------------------------------------------------------------------

def read_config_file(path: str, source_args: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts' training TOML (read_config_from_file): keys flat or in any tables, the command line
    over them; '.toml' added when the name lacks it, as sd-scripts does."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    p = Path(path if path.endswith(".toml") else path + ".toml")
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoraKitError("config file does not exist", p) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LoraKitError(f"cannot read config ({exc})", p) from None
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    for key in flat:
        if _kind(key) is None:
            unknown(key, p)
    for key in ("pretrained_model_name_or_path", "train_data_dir", "dataset_config", "sample_prompts", "output_dir",
                "network_weights"):
        v = flat.get(key)
        if isinstance(v, str) and not Path(v).is_absolute() and not Path(v).exists() and (p.parent / v).exists():
            flat[key] = str(p.parent / v)  # sd-scripts reads from the working folder; else beside the TOML
    return {**flat, **source_args}


# --- translation --------------------------------------------------------------------------------

# sd-scripts' defaults that differ from lorakit's and change what is trained (in lorakit's options);
# the README's "Coming from kohya sd-scripts" table lists them
KOHYA_DEFAULTS: dict[str, Any] = {
    "alpha": 1.0,  # --network_alpha 1 (lorakit: alpha = rank)
    "rank": 4,  # --network_dim None → 4 (networks/lora.py create_network)
    "lr": 2e-6,  # --learning_rate
    "steps": 1600,  # --max_train_steps
    "mixed_precision": "no",  # --mixed_precision
    "save_dtype": "fp32",  # --save_precision None: the LoRA's own fp32
    "bucket": False,  # --enable_bucket off
    "min_bucket_side": 256, "max_bucket_side": 1024, "bucket_step": 64,  # --min/max_bucket_reso, bucket_reso_steps
    "caption_ext": ".caption",  # --caption_extension
    "cache_latents": "none",  # latents encoded (and sampled) each step unless --cache_latents
    "prior_target": "image",  # DreamBooth's prior loss: the regularisation image's own noise
}
# the optimizer's own weight decay, which sd-scripts leaves as the class default
KOHYA_WEIGHT_DECAY = {"adamw": 0.01, "adamw8bit": 0.01, "lion": 0.0, "prodigy": 0.0, "adafactor": 0.0}

_OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "lion": "lion", "prodigy": "prodigy",
               "adafactor": "adafactor"}
_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
_LYCORIS_ALGOS = {"lora": "locon", "locon": "locon", "loha": "loha", "lokr": "lokr", "diag-oft": "oft"}
_KOHYA_NETWORKS = ("networks.lora", "networks.lora_flux", "networks.lora_sd3")
_PRECISION = {"float": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class Translation:
    options: dict[str, Any]  # lorakit option → value, sd-scripts' defaults included
    given: set[str]  # the lorakit options the user set through an sd-scripts option
    notes: list[str]  # lines to print (options accepted without effect, a drawn seed)


def translate(args: dict[str, Any], source: object = None) -> Translation:
    """lorakit's options for sd-scripts' `args` (dest → value, as its parser gives them)."""
    out: dict[str, Any] = {}
    notes: list[str] = []
    args = {k: v for k, v in args.items() if v is not None and k != "config_file"}

    def bad(msg):
        raise LoraKitError(msg, source)

    def put(option: str, value, kohya: str):
        if not has_option(option):
            if _what_lorakit_does(kohya, value, args):
                return
            bad(f"{kohya_flag(kohya)} needs lorakit's {_flag(option)}, which this lorakit does not have")
        out[option] = value

    ignored = sorted(k for k in args if k in NO_EFFECT and args[k] not in (False,))
    if ignored:
        notes.append("ignored (no effect on what lorakit trains): " + ", ".join(
            f"{kohya_flag(k)} ({NO_EFFECT[k][1]})" for k in ignored))
    for key, value in args.items():
        row = TABLE.get(key)
        if row is None and key not in NO_EFFECT:
            unknown(key, source)
        if row is not None and row.option is not None:
            if row.kind == "flag" and value is False:
                continue
            put(row.option, value, key)
    if "train_data_dir" in args and "dataset_config" in args:
        bad("give --train_data_dir or --dataset_config, not both")

    # model, data
    if args.get("v_parameterization"):
        out["prediction_type"] = "v_prediction"
    if "resolution" in args:
        out["resolution"] = _resolution(args["resolution"], bad)
    if args.get("max_token_length") not in (None, 75):
        bad(f"--max_token_length {args['max_token_length']}: lorakit reads 75 tokens per text encoder (CLIP's 77)")
    for kohya, option in (("cache_latents", "cache_latents"), ("cache_text_encoder_outputs", "cache_text")):
        if args.get(kohya + "_to_disk"):
            out[option] = "disk"
        elif args.get(kohya):
            out[option] = "memory"
    # network
    _network(args, out, bad)
    if args.get("network_train_unet_only") and args.get("network_train_text_encoder_only"):
        bad("--network_train_unet_only and --network_train_text_encoder_only together train nothing")
    if args.get("network_train_unet_only"):
        out["train_text_encoder"] = False
    if args.get("network_train_text_encoder_only"):
        out.update(train_unet=False, train_text_encoder=True)
    # optimizer
    _optimizer(args, out, bad)
    # loss
    _timesteps(args, out, bad)
    # run
    if args.get("fp8_base"):
        out["base_precision"] = "fp8"
    if args.get("sdpa") or args.get("xformers") or args.get("mem_eff_attn"):
        out["sdpa"] = True  # the same attention, computed by torch
    # output
    if "output_dir" in args or "output_name" in args:
        name = args.get("output_name") or "last"  # train_util.DEFAULT_LAST_OUTPUT_NAME
        out["out"] = str(Path(args.get("output_dir") or ".") / f"{name}.safetensors")
        out["output_name"] = name
    if args.get("save_model_as", "safetensors") != "safetensors":
        bad(f"--save_model_as {args['save_model_as']}: lorakit writes .safetensors only")
    if "save_precision" in args:
        if args["save_precision"] not in _PRECISION:
            bad(f"--save_precision must be float, fp16 or bf16, not {args['save_precision']!r}")
        out["save_dtype"] = _PRECISION[args["save_precision"]]
    if args.get("log_with") not in (None, "tensorboard"):
        bad(f"--log_with {args['log_with']}: lorakit logs to TensorBoard only")

    given = set(out)
    for option, value in KOHYA_DEFAULTS.items():
        out.setdefault(option, value)
    out.setdefault("weight_decay", KOHYA_WEIGHT_DECAY[out.get("optimizer", "adamw")])
    return Translation(out, given, notes)


def _what_lorakit_does(kohya: str, value, args) -> bool:
    """Whether an option lorakit lacks asks for what lorakit does anyway (sd-scripts' l2 loss, the last
    CLIP layer, Huber settings of an l2 loss)."""
    if kohya == "loss_type":
        return value == "l2"
    if kohya in ("huber_c", "huber_schedule"):
        return args.get("loss_type", "l2") == "l2"
    if kohya == "clip_skip":
        return value == 1
    return False


def _resolution(value, bad) -> int:
    """'512', '512,512', 512 or [512, 512] (prepare_dataset_args); lorakit trains a square pixel budget."""
    if isinstance(value, (list, tuple)):
        sides = list(value)
    else:
        sides = str(value).split(",")
    try:
        sides = [int(s) for s in sides]
    except (TypeError, ValueError):
        bad(f"--resolution {value!r}: expected N or W,H")
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2:
        bad(f"--resolution {value!r}: expected N or W,H")
    if sides[0] != sides[1]:
        bad(f"--resolution {sides[0]},{sides[1]}: lorakit trains a square pixel budget (buckets keep each image's "
            f"shape): give one number, e.g. --resolution {int((sides[0] * sides[1]) ** 0.5) // 64 * 64}")
    return sides[0]


def _network(args, out, bad) -> None:
    module = args.get("network_module")
    items = _items(args.get("network_args"))
    if module is None or module in _KOHYA_NETWORKS:
        out["network"] = "lora"
    elif module == "lycoris.kohya":
        from ..lora.algos import split_items

        parsed = split_items(items)
        algo = str(parsed.get("algo", "lora"))
        if algo not in _LYCORIS_ALGOS:
            bad(f"--network_args algo={algo}: lorakit trains LyCORIS' {', '.join(_LYCORIS_ALGOS)}")
        out["network"] = _LYCORIS_ALGOS[algo]
        items = [f"{k}={v}" for k, v in parsed.items() if k != "algo"]
    else:
        bad(f"--network_module {module}: lorakit trains networks.lora (and its _flux, _sd3 forms) or lycoris.kohya")
    if items:
        out["network_args"] = tuple(items)


def _items(value) -> list[str]:
    """A list option's KEY=VALUE items: a config file may give one string for the list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _optimizer(args, out, bad) -> None:
    name = args.get("optimizer_type") or ""
    if args.get("use_8bit_adam"):
        if name or args.get("use_lion_optimizer"):
            bad("--use_8bit_adam with another optimizer choice")
        name = "AdamW8bit"
    elif args.get("use_lion_optimizer"):
        if name:
            bad("--use_lion_optimizer with --optimizer_type")
        name = "Lion"
    key = (name or "AdamW").lower()
    if key not in _OPTIMIZERS:
        bad(f"--optimizer_type {name}: lorakit has AdamW, AdamW8bit, Lion, Prodigy and AdaFactor")
    out["optimizer"] = _OPTIMIZERS[key]
    kwargs = {}
    for item in _items(args.get("optimizer_args")):
        k, eq, v = str(item).partition("=")
        if not eq:
            bad(f"--optimizer_args {item!r}: expected KEY=VALUE")
        try:
            kwargs[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kwargs[k] = v
    # what lorakit's optimizer passes, and the values of the rest that equal what it does
    fixed = {"adafactor": {"relative_step": False, "scale_parameter": False, "warmup_init": False},
             "prodigy": {"decouple": True, "use_bias_correction": False, "safeguard_warmup": False}}.get(key, {})
    if key == "adafactor" and kwargs.get("relative_step", True):
        bad("--optimizer_type AdaFactor: lorakit's Adafactor uses the learning rate given (give --optimizer_args "
            "relative_step=False scale_parameter=False warmup_init=False)")
    for k, v in kwargs.items():
        if k in ("weight_decay", "eps"):
            out[k] = float(v)
        elif k == "betas":
            out["betas"] = tuple(float(b) for b in v)
        elif k in fixed:
            if v != fixed[k]:
                bad(f"--optimizer_args {k}={v}: lorakit's {name} runs with {k}={fixed[k]}")
        else:
            bad(f"--optimizer_args {k}: lorakit passes weight_decay, betas and eps to the optimizer, nothing else")
    lr = args.get("learning_rate")
    unet_lr, te_lr = args.get("unet_lr"), args.get("text_encoder_lr")
    if unet_lr is not None:
        out["lr"] = unet_lr
    elif lr is not None:
        out["lr"] = lr
    if isinstance(te_lr, (int, float)):  # a config file's single value
        te_lr = [te_lr]
    if te_lr:  # one value for every text encoder
        if len(set(te_lr)) > 1:
            bad(f"--text_encoder_lr {' '.join(map(str, te_lr))}: lorakit has one --text-encoder-lr for all encoders")
        out["text_encoder_lr"] = te_lr[0]
    elif unet_lr is not None:  # sd-scripts: the text encoders train at --learning_rate
        out["text_encoder_lr"] = lr if lr is not None else KOHYA_DEFAULTS["lr"]
    if "lr_scheduler" in args:
        if args["lr_scheduler"] not in _SCHEDULERS:
            bad(f"--lr_scheduler {args['lr_scheduler']}: lorakit has {', '.join(_SCHEDULERS)}")
        out["scheduler"] = args["lr_scheduler"]
    if "lr_warmup_steps" in args:
        w = args["lr_warmup_steps"]
        if isinstance(w, float):  # a share of the steps (get_scheduler_fix)
            w = int(w * (out.get("steps") or KOHYA_DEFAULTS["steps"]))
        out["warmup_steps"] = int(w)


def _timesteps(args, out, bad) -> None:
    """sd-scripts' Flux σ sampling, where lorakit's is the same: flux_shift draws σ = sigmoid(N(0, 1)) and
    shifts it by the image size, as lorakit's logit_normal scheme on Flux.1 does."""
    sampling = args.get("timestep_sampling")
    if sampling is not None:
        if sampling != "flux_shift":
            bad(f"--timestep_sampling {sampling}: lorakit draws σ as --weighting-scheme says on the model's own "
                "schedule (sd-scripts' flux_shift is lorakit's logit_normal on Flux.1)")
        if args.get("sigmoid_scale", 1.0) != 1.0:
            bad(f"--sigmoid_scale {args['sigmoid_scale']}: lorakit's logit-normal σ has scale 1")
        if args.get("weighting_scheme", "logit_normal") not in ("logit_normal", "uniform", "none"):
            bad("--timestep_sampling flux_shift with --weighting_scheme: give one of them")
        out["weighting_scheme"] = "logit_normal"
    elif args.get("sigmoid_scale", 1.0) != 1.0:
        bad("--sigmoid_scale needs --timestep_sampling flux_shift")
    if "discrete_flow_shift" in args and sampling != "flux_shift":
        bad("--discrete_flow_shift: lorakit uses the shift of the model's own scheduler config")
    pred = args.get("model_prediction_type")
    if pred == "additive":
        bad("--model_prediction_type additive: lorakit trains the velocity (raw, weighted by --weighting-scheme)")
    if pred == "raw" and out.get("weighting_scheme", "logit_normal") in ("sigma_sqrt", "cosmap"):
        bad(f"--model_prediction_type raw weights no σ: not with --weighting_scheme {out['weighting_scheme']}")


# --- the whole command line -----------------------------------------------------------------------

def apply(cfg, args: dict[str, Any], lorakit_flags: dict[str, Any]):
    """`cfg` (lorakit's defaults or TOML) with sd-scripts' options (and its differing defaults) on top,
    refusing where a lorakit flag given alongside says otherwise; returns (config, notes)."""
    from .config import TrainConfig

    if "config_file" in args:
        args = read_config_file(str(args["config_file"]), args)
    t = translate(args)
    default = TrainConfig()
    for option in t.given:
        flag = lorakit_flags.get(option)
        if flag is not None and flag != ():
            kohya = [kohya_flag(k) for k in args if k in TABLE and TABLE[k].option == option] or ["an sd-scripts option"]
            raise LoraKitError(f"{_flag(option)} {flag} and {kohya[0]} both set {option}: give one")
    # sd-scripts' defaults only where the lorakit TOML left lorakit's
    values = {k: v for k, v in t.options.items() if k in t.given or getattr(cfg, k) == getattr(default, k)}
    if "seed" not in values and lorakit_flags.get("seed") is None and cfg.seed == default.seed:
        resume = lorakit_flags.get("resume") or cfg.resume
        if resume is not None:  # the drawn seed of the run it continues
            from .state import find_state, read_state

            values["seed"] = read_state(find_state(Path(resume))).get("config", {}).get("seed", default.seed)
        else:
            values["seed"] = random.randint(0, 2**32)  # train_network.py: a seed drawn when none is given
            t.notes.append(f"seed {values['seed']} (sd-scripts draws one when --seed is not given)")
    return cfg.override(values), t.notes


# --- lorakit's own default where sd-scripts' differs most ----------------------------------------

def alpha_note(cfg, echo) -> None:
    """Once per user: alpha follows the rank here (scale 1), where sd-scripts' --network_alpha is 1."""
    import os

    if cfg.alpha is not None or cfg.network == "oft":
        return
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "lorakit" / "noted-alpha"
    if state.exists():
        return
    echo(f"--alpha is --rank ({cfg.rank}) unless given: scale 1, where sd-scripts' --network_alpha 1 scales by "
         f"1/{cfg.rank}; give --alpha to choose (said once)")
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.touch()
    except OSError:
        pass
