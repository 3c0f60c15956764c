"""sd-scripts' example commands and config files, as its docs print them, through `lorakit train`.

tests/data/kohya_parsed.json holds what sd-scripts' own parser gives for each (argparse dest →
value, written by tests/data/make_kohya_parsed.py from the commit it names). Each is checked two
ways: lorakit reads every option to the same value, and the config lorakit resolves equals, value
by value, what those sd-scripts settings mean (the expectations below are written from sd-scripts'
source, not from lorakit's table).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.train.config import TrainConfig
from lorakit.train.kohya_options import (KOHYA_DEFAULTS, NO_EFFECT, TABLE, UNSUPPORTED, apply, config_hint,
                                         has_option, split_argv)

DATA = json.loads((Path(__file__).parent / "data" / "kohya_parsed.json").read_text(encoding="utf-8"))
EXAMPLES = {e["name"]: e for e in DATA["examples"]}
# options of the table that come with later lorakit versions: their examples run without them until then
LATER = {k: row.option for k, row in TABLE.items() if row.option and not has_option(row.option)}


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the once-only notes
    monkeypatch.chdir(tmp_path)


def _without_later(argv: list[str]) -> list[str]:
    return [a for a in argv if a.lstrip("-").split("=")[0] not in LATER]


def _resolve(argv: list[str], files: dict[str, str], capsys) -> dict:
    """The config `lorakit train ARGV --print-config` resolves, flat (option → TOML value)."""
    import tomllib

    for name, text in files.items():
        Path(name).write_text(text, encoding="utf-8")
    capsys.readouterr()
    assert main(["train", *argv, "--print-config"]) == 0, capsys.readouterr().err
    return {k: v for table in tomllib.loads(capsys.readouterr().out).values() for k, v in table.items()}


def _expected(p: dict) -> dict:
    """lorakit's settings for sd-scripts' parsed args `p`, read off sd-scripts' source."""
    lr = p["unet_lr"] if p["unet_lr"] is not None else p["learning_rate"]  # train_network: unet_lr or learning_rate
    te_lr = p["text_encoder_lr"][0] if p["text_encoder_lr"] else (p["learning_rate"] if p["unet_lr"] else None)
    optimizer = (p["optimizer_type"] or "AdamW").lower()  # train_util.get_optimizer: lower-cased, "" → AdamW
    kwargs = {}
    for item in p["optimizer_args"] or []:
        k, _, v = item.partition("=")
        kwargs[k] = v
    # the optimizer classes' own weight decay: torch AdamW and bnb AdamW8bit 0.01, transformers Adafactor 0
    decay = float(kwargs.get("weight_decay", {"adamw": 0.01, "adamw8bit": 0.01, "adafactor": 0.0}[optimizer]))
    warmup = p["lr_warmup_steps"]
    e = {
        "model": p["pretrained_model_name_or_path"],
        "data": str(p["dataset_config"] or p["train_data_dir"]),
        "network": "lora",  # networks.lora, networks.lora_flux: kohya's LoRA
        "rank": p["network_dim"] or 4,  # networks/lora.py create_network: None → 4
        "alpha": p["network_alpha"],
        "lr": lr, "text_encoder_lr": te_lr,
        "optimizer": optimizer, "weight_decay": decay,
        "steps": p["max_train_steps"],
        "batch_size": p["train_batch_size"], "grad_accum": p["gradient_accumulation_steps"],
        "scheduler": p["lr_scheduler"], "scheduler_cycles": p["lr_scheduler_num_cycles"],
        "scheduler_power": p["lr_scheduler_power"],
        "warmup_steps": int(warmup * p["max_train_steps"]) if isinstance(warmup, float) else warmup,
        "max_grad_norm": p["max_grad_norm"],
        "mixed_precision": p["mixed_precision"],
        "save_dtype": {None: "fp32", "float": "fp32", "fp16": "fp16", "bf16": "bf16"}[p["save_precision"]],
        # train_network.py: OUTPUT_DIR/OUTPUT_NAME, "last" when unnamed (it has no folder of its own)
        "out": (Path(p["output_dir"] or ".") / f"{p['output_name'] or 'last'}.safetensors"
                if p["output_dir"] or p["output_name"] else Path("lora.safetensors")),
        "gradient_checkpointing": p["gradient_checkpointing"],
        "bucket": p["enable_bucket"], "min_bucket_side": p["min_bucket_reso"],
        "max_bucket_side": p["max_bucket_reso"], "bucket_step": p["bucket_reso_steps"],
        "caption_ext": p["caption_extension"], "shuffle_caption": p["shuffle_caption"],
        "keep_tokens": p["keep_tokens"], "flip": p["flip_aug"], "caption_dropout": p["caption_dropout_rate"],
        "prior_weight": p["prior_loss_weight"], "prior_target": "image",  # DreamBooth's prior loss
        "noise_offset": p["noise_offset"] or 0.0, "min_snr_gamma": p["min_snr_gamma"],
        "cache_latents": "disk" if p["cache_latents_to_disk"] else "memory" if p["cache_latents"] else "none",
        "base_precision": "fp8" if p["fp8_base"] else "auto",
    }
    if p.get("cache_text_encoder_outputs"):
        e["cache_text"] = "disk" if p["cache_text_encoder_outputs_to_disk"] else "memory"
    if p["network_train_unet_only"]:
        e["train_text_encoder"] = False
    if p["seed"] is not None:
        e["seed"] = p["seed"]
    if p.get("blocks_to_swap"):
        e["blocks_to_swap"] = p["blocks_to_swap"]
    if "guidance_scale" in p:  # flux_train_network.py
        e["guidance_scale"] = p["guidance_scale"]
    if p.get("timestep_sampling") == "flux_shift":  # sigmoid(N(0, 1)), shifted by the image size
        e["weighting_scheme"] = "logit_normal"
    elif p.get("weighting_scheme") and "timestep_sampling" not in p:  # sd3_train_network.py
        e["weighting_scheme"] = p["weighting_scheme"]
    for kohya, option in LATER.items():
        e.pop(option, None)
    return e


ACCEPTED = [n for n, e in EXAMPLES.items() if e["parsed"] is not None and n != "flux_components"]


@pytest.mark.parametrize("name", ACCEPTED)
def test_doc_example_reads_as_sd_scripts_parses_it(name):
    """Every option of the example is read to the value sd-scripts' parser gives it."""
    ex = EXAMPLES[name]
    rest, given = split_argv(ex["argv"])
    shared = {"sdpa", "seed", "resolution"}  # a name both share is lorakit's flag, of the same meaning
    assert {a.lstrip("-").split("=")[0] for a in rest if a.startswith("--")} <= shared
    assert given, name
    for dest, value in given.items():
        want = ex["parsed"][dest]
        if dest == "config_file":
            want += ".toml"  # read_config_from_file strips the suffix after reading
        assert value == want, (name, dest)


@pytest.mark.parametrize("name", ACCEPTED)
def test_doc_example_resolves_to_what_sd_scripts_trains(name, capsys):
    ex = EXAMPLES[name]
    p = ex["parsed"]
    got = _resolve(_without_later(ex["argv"]), ex["files"], capsys)
    want = _expected(p)
    want["out"] = str(want["out"])
    assert {k: got.get(k) for k in want} == want
    if p["seed"] is None:  # train_network.py draws one: any 32-bit value, not lorakit's fixed 0
        assert 0 <= got["seed"] <= 2**32


def test_sd_scripts_parses_its_defaults_as_the_table_says():
    """KOHYA_DEFAULTS are sd-scripts' parser defaults (and create_network's dim 4)."""
    o = DATA["options"]
    assert KOHYA_DEFAULTS["alpha"] == o["network_alpha"]["default"] == 1
    assert o["network_dim"]["default"] is None and KOHYA_DEFAULTS["rank"] == 4
    assert KOHYA_DEFAULTS["lr"] == o["learning_rate"]["default"] == 2e-6
    assert KOHYA_DEFAULTS["steps"] == o["max_train_steps"]["default"] == 1600
    assert KOHYA_DEFAULTS["mixed_precision"] == o["mixed_precision"]["default"] == "no"
    assert o["save_precision"]["default"] is None and KOHYA_DEFAULTS["save_dtype"] == "fp32"
    assert KOHYA_DEFAULTS["bucket"] is o["enable_bucket"]["default"] is False
    assert (KOHYA_DEFAULTS["min_bucket_side"], KOHYA_DEFAULTS["max_bucket_side"], KOHYA_DEFAULTS["bucket_step"]) == \
        (o["min_bucket_reso"]["default"], o["max_bucket_reso"]["default"], o["bucket_reso_steps"]["default"]) == \
        (256, 1024, 64)
    assert KOHYA_DEFAULTS["caption_ext"] == o["caption_extension"]["default"] == ".caption"
    assert o["cache_latents"]["default"] is False and KOHYA_DEFAULTS["cache_latents"] == "none"


def test_every_sd_scripts_option_is_taken_or_refused():
    """No option of the four scripts falls through: each is translated, accepted without effect, or
    refused with its own line; the table reads each as sd-scripts' argparse does (flag, list, type)."""
    for dest, spec in DATA["options"].items():
        kind = TABLE[dest].kind if dest in TABLE else NO_EFFECT[dest][0] if dest in NO_EFFECT else None
        if kind is None:
            continue  # refused: checked below
        if spec["kind"] == "Path":
            assert kind == "str", dest
        elif spec["kind"] == "list":
            assert kind in ("list", "float_list"), dest
        else:
            assert kind == spec["kind"], dest
    for dest in UNSUPPORTED:
        assert dest in DATA["options"], dest  # no invented sd-scripts option


@pytest.mark.parametrize("argv, says", [
    (["--clip_l", "clip_l.safetensors"], "sd-scripts' --clip_l is not supported: lorakit reads a single-file"),
    (["--reg_data_dir", "reg"], "an `is_reg = true` subset"),
    (["--optimizer_type", "DAdaptAdam"], "--optimizer_type DAdaptAdam: lorakit has AdamW"),
    (["--network_module", "networks.dylora"], "--network_module networks.dylora"),
    (["--resolution", "512,768"], "lorakit trains a square pixel budget"),
    (["--text_encoder_lr1=1e-5"], "unknown option --text_encoder_lr1 (did you mean --text_encoder_lr"),
    (["--timestep_sampling", "shift"], "--timestep_sampling shift"),
    (["--vae", "vae.safetensors"], "sd-scripts' --vae is not supported"),
    (["--network_dim", "8", "--rank", "4"], "--rank 4 and --network_dim both set rank"),
    (["--config_file", "missing.toml"], "config file does not exist"),
])
def test_unsupported_sd_scripts_option_is_one_line_and_exit_2(argv, says, capsys):
    assert main(["train", "--data", ".", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


def test_sd_scripts_doc_command_its_parser_refuses_is_refused():
    """docs/sdxl_train_network.md prints --text_encoder_lr1/2, which sdxl_train_network.py refuses."""
    ex = EXAMPLES["sdxl_as_documented"]
    assert ex["parsed"] is None
    assert main(["train", *ex["argv"], "--print-config"]) == 2


def test_flux_component_files_name_the_folder_to_use(capsys):
    ex = EXAMPLES["flux_components"]
    assert main(["train", *_without_later(ex["argv"]), "--print-config"]) == 2
    assert "--text-encoders DIR" in capsys.readouterr().err


def test_print_config_is_a_lorakit_config_of_the_same_run(capsys, tmp_path):
    ex = EXAMPLES["sd15_config_file_in_sections"]
    for name, text in ex["files"].items():
        Path(name).write_text(text, encoding="utf-8")
    assert main(["train", *ex["argv"], "--print-config"]) == 0
    (tmp_path / "resolved.toml").write_text(capsys.readouterr().out, encoding="utf-8")
    cfg = TrainConfig.from_toml(tmp_path / "resolved.toml")
    assert (cfg.rank, cfg.alpha, cfg.lr, cfg.steps, cfg.seed, cfg.save_dtype) == (16, 1.0, 1e-4, 100, 42, "fp16")
    assert cfg.out == tmp_path / "out" / "my_lora.safetensors"
    cfg.validate()


def test_learning_rates_as_sd_scripts_splits_them():
    """--unet_lr trains the denoiser; the text encoders keep --learning_rate unless --text_encoder_lr."""
    _, k = split_argv(["--learning_rate", "1e-4", "--unet_lr", "3e-4"])
    cfg, _ = apply(TrainConfig(), k, {})
    assert (cfg.lr, cfg.text_encoder_lr) == (3e-4, 1e-4)
    _, k = split_argv(["--unet_lr", "3e-4", "--text_encoder_lr", "5e-5", "5e-5"])
    cfg, _ = apply(TrainConfig(), k, {})
    assert (cfg.lr, cfg.text_encoder_lr) == (3e-4, 5e-5)
    _, k = split_argv(["--max_train_steps", "200", "--lr_warmup_steps", "0.1"])  # a share of the steps
    cfg, _ = apply(TrainConfig(), k, {})
    assert cfg.warmup_steps == 20


def test_lycoris_module_and_algo_name_lorakit_network():
    _, k = split_argv(["--network_module", "lycoris.kohya", "--network_args", "algo=lokr", "factor=8",
                       "--network_dim", "10000", "--network_alpha", "1"])
    cfg, _ = apply(TrainConfig(), k, {})
    assert (cfg.network, tuple(cfg.network_args), cfg.rank, cfg.alpha) == ("lokr", ("factor=8",), 10000, 1.0)
    _, k = split_argv(["--fp8_base", "--network_train_text_encoder_only"])
    cfg, _ = apply(TrainConfig(), k, {})
    assert (cfg.base_precision, cfg.train_unet, cfg.train_text_encoder) == ("fp8", False, True)


def test_lorakit_toml_names_the_option_a_kohya_key_means():
    assert "sd-scripts' name of steps" in config_hint("max_train_steps")
    assert "max_grad_norm" not in config_hint("max_train_steps")
    assert config_hint("max_grad_nrom") == " (did you mean max_grad_norm?)"
    assert config_hint("resolutoin") == " (did you mean resolution?)"
    assert config_hint("zzz") == ""
    with pytest.raises(Exception, match="sd-scripts' name of rank"):
        TrainConfig().override({"network_dim": 8})


def test_alpha_note_once_when_lorakit_default_is_used(capsys):
    main(["train", "--data", ".", "--print-config"])
    first = capsys.readouterr().err
    main(["train", "--data", ".", "--print-config"])
    second = capsys.readouterr().err
    assert "sd-scripts' --network_alpha 1" in first and "network_alpha" not in second
    main(["train", "--data", ".", "--network_dim", "8", "--print-config"])
    out = capsys.readouterr().out
    assert "alpha = 1.0" in out and "rank = 8" in out  # sd-scripts' alpha where its spelling is used


@pytest.mark.parametrize("kohya, value, option, want", [
    ("max_train_epochs", "4", "epochs", 4), ("save_every_n_epochs", "2", "save_every_epochs", 2),
    ("clip_skip", "2", "clip_skip", 2), ("loss_type", "huber", "loss_type", "huber"),
    ("huber_c", "0.2", "huber_c", 0.2), ("huber_schedule", "constant", "huber_schedule", "constant"),
    ("network_weights", "a.safetensors", "network_weights", "a.safetensors"),
])
def test_options_of_later_lorakit_versions(kohya, value, option, want, capsys):
    """Rows whose lorakit option this version may lack: taken when it has it, else one line naming it."""
    huber = ["--loss_type", "huber"] if kohya.startswith("huber") else []  # they act on a Huber loss
    argv = ["train", "--data", ".", f"--{kohya}", value, *huber, "--print-config"]
    if has_option(option):
        assert main(argv) == 0
        import tomllib

        flat = {k: v for t in tomllib.loads(capsys.readouterr().out).values() for k, v in t.items()}
        assert flat[option] == want
    else:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"needs lorakit's --{option.replace('_', '-')}" in err[0], err


def test_what_lorakit_does_anyway_is_accepted_without_the_option(capsys):
    """sd-scripts' l2 loss and last CLIP layer are lorakit's own: accepted whether or not it has the options."""
    assert main(["train", "--data", ".", "--loss_type", "l2", "--huber_c", "0.3", "--clip_skip", "1",
                 "--print-config"]) == 0
