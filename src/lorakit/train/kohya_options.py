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

from .kohya_table import NO_EFFECT, SD_SCRIPTS, SD_SCRIPTS_ONLY, TABLE, UNSUPPORTED, Kohya, _NONE  # noqa: F401

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
    if kohya in ("huber_c", "huber_schedule", "huber_scale"):
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
