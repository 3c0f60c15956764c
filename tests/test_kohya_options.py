"""sd-scripts' example commands and config files, as its docs print them, through `lorakit train`.

tests/data/kohya_parsed.json holds what sd-scripts' own parser gives for each (argparse dest →
value, written by tests/data/make_kohya_parsed.py from the commit it names). Each is checked two
ways: lorakit reads every option to the same value, and the config lorakit resolves equals, value
by value, what those sd-scripts settings mean (the expectations below are written from sd-scripts'
source, not from lorakit's table).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.train.config import TrainConfig
from lorakit.errors import LoraKitError
from lorakit.train.kohya_options import (KOHYA_DEFAULTS, NO_EFFECT, SD_SCRIPTS_ONLY, TABLE, UNSUPPORTED, apply,
                                         has_option, split_argv, unknown)

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
    """KOHYA_DEFAULTS are sd-scripts' parser defaults (and create_network's dim 4), of the commit the table names."""
    from lorakit.train.kohya_options import SD_SCRIPTS

    assert SD_SCRIPTS == "kohya-ss/sd-scripts@" + DATA["commit"]
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
    taken = set(TABLE) | set(NO_EFFECT)
    assert set(DATA["options"]) == taken | SD_SCRIPTS_ONLY and not taken & SD_SCRIPTS_ONLY
    for dest in SD_SCRIPTS_ONLY:  # each refused in one line that names it and says what to do
        with pytest.raises(LoraKitError) as exc:
            unknown(dest)
        msg = str(exc.value)
        assert msg.startswith(f"sd-scripts' --{dest} is not supported: ") and "\n" not in msg
        assert msg.endswith(UNSUPPORTED.get(dest, "lorakit has no equivalent"))


@pytest.mark.parametrize("argv, says", [
    (["--clip_l", "clip_l.safetensors"], "sd-scripts' --clip_l is not supported: lorakit reads a single-file"),
    (["--reg_data_dir", "reg"], "an `is_reg = true` subset"),
    (["--optimizer_type", "DAdaptAdam"], "--optimizer_type DAdaptAdam: lorakit has AdamW"),
    (["--network_module", "networks.dylora"], "--network_module networks.dylora"),
    (["--resolution", "512,768"], "lorakit trains a square pixel budget"),
    (["--text_encoder_lr1=1e-5"], "unknown option --text_encoder_lr1 (did you mean --text_encoder_lr"),
    (["--timestep_sampling", "shift"], "--timestep_sampling shift"),
    (["--vae", "vae.safetensors"], "sd-scripts' --vae is not supported"),
    (["--deepspeed"], "sd-scripts' --deepspeed is not supported: lorakit has no equivalent"),
    (["--debug_dataset"], "sd-scripts' --debug_dataset is not supported: lorakit has no equivalent"),
    (["--color_aug"], "sd-scripts' --color_aug is not supported: lorakit reads it from a --dataset_config TOML"),
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
    from dataclasses import fields

    from lorakit.train.kohya_table import config_hint as hint

    options = {f.name for f in fields(TrainConfig)}

    def config_hint(key):
        return hint(key, options)

    assert "sd-scripts' name of steps" in config_hint("max_train_steps")
    assert "max_grad_norm" not in config_hint("max_train_steps")
    assert config_hint("max_grad_nrom") == " (did you mean max_grad_norm?)"
    assert config_hint("resolutoin") == " (did you mean resolution?)"
    assert config_hint("zzz") == ""
    with pytest.raises(Exception, match="sd-scripts' name of rank"):
        TrainConfig().override({"network_dim": 8})


def test_alpha_note_once_when_lorakit_default_is_used(capsys):
    from lorakit.train.kohya_options import alpha_note

    lines = []
    alpha_note(TrainConfig(rank=8, alpha=8.0), lines.append)  # chosen: nothing to say
    assert lines == []
    alpha_note(TrainConfig(rank=8), lines.append)
    alpha_note(TrainConfig(rank=8), lines.append)  # said once
    assert len(lines) == 1 and "--alpha is --rank (8)" in lines[0] and "sd-scripts' --network_alpha 1" in lines[0]
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


# --- sd-scripts' dataset TOML (library/config_util.py, docs/config_README-en.md) ---------------------

def _doc_dataset(name: str, image_dir: Path) -> Path:
    """The doc's dataset TOML with its image folders pointed at `image_dir`."""
    import re

    text = DATA["dataset_configs"][name]["toml"]
    text = re.sub(r"image_dir = ['\"][^'\"]*['\"]", f"image_dir = '{image_dir.as_posix()}'", text)
    path = Path("dataset.toml")
    path.write_text(text, encoding="utf-8")
    return path


def _images(folder: Path, sizes, caption: str = "") -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (40 * i % 255, 120, 200)).save(folder / f"{i}.png")
        if caption:
            (folder / f"{i}.txt").write_text(caption, encoding="utf-8")
    return folder


def test_doc_dataset_config_with_caption_options_is_read_with_their_meaning(tmp_path):
    from lorakit.data import load_dataset_config

    _images(tmp_path / "img", [(64, 64)], "upper body, looking at viewer, sky;;;cloud;;;day, outdoors")
    dc = load_dataset_config(_doc_dataset("subsets_and_captions", tmp_path / "img"))
    assert dc.options == {"resolution": 1024, "batch_size": 6, "enable_bucket": True, "bucket_no_upscale": True}
    (s,) = dc.subsets
    assert (s.flip, s.color_aug, s.caption_ext, s.keep_tokens_separator, s.shuffle_caption, s.caption_tag_dropout,
            s.secondary_separator, s.enable_wildcard, s.repeats) == (True, False, ".txt", "|||", True, 0.1, ";;;",
                                                                      True, 1)
    assert s.caption_prefix == "1girl, hatsune miku, vocaloid |||"
    assert s.caption_suffix == ", anime screencap ||| masterpiece, rating: general"


def test_doc_caption_options_train_the_captions_the_doc_describes(tmp_path):
    """keep_tokens_separator pins the prefix's tags in front and the suffix's after the second |||;
    the rest is shuffled, each tag dropped with probability 0.1; `sky;;;cloud;;;day` moves and drops
    as one tag and reads `sky,cloud,day` (docs/config_README-en.md)."""
    import random

    from lorakit.data import load_dataset_config, scan
    from lorakit.data.captions import augment

    _images(tmp_path / "img", [(64, 64)], "upper body, looking at viewer, sky;;;cloud;;;day, outdoors")
    (s,) = load_dataset_config(_doc_dataset("subsets_and_captions", tmp_path / "img")).subsets
    (item,) = scan(s)
    flex = ["upper body", "looking at viewer", "sky,cloud,day", "outdoors", "anime screencap"]
    kept = {t: 0 for t in flex}
    orders = set()
    n = 4000
    for i in range(n):
        c = augment(item.caption, random.Random(i), shuffle=s.shuffle_caption, keep_tokens=s.keep_tokens,
                    tag_dropout=s.caption_tag_dropout, keep_tokens_separator=s.keep_tokens_separator,
                    secondary_separator=s.secondary_separator, wildcard=s.enable_wildcard)
        assert c.startswith("1girl, hatsune miku, vocaloid, ") and c.endswith(", masterpiece, rating: general")
        middle = c[len("1girl, hatsune miku, vocaloid, "):-len(", masterpiece, rating: general")]
        tags = [t for t in ([] if not middle else middle.split(", "))]
        assert set(tags) <= set(flex) and len(tags) == len(set(tags))
        for t in tags:
            kept[t] += 1
        orders.add(tuple(tags))
    for t in flex:  # each kept with probability 0.9: 3600 of 4000, binomial sd 19
        assert abs(kept[t] - 0.9 * n) < 5 * math.sqrt(n * 0.9 * 0.1), (t, kept[t])
    assert len([o for o in orders if len(o) == 5]) == 120  # all 5! orders of the full caption occur


def test_keep_tokens_separator_without_shuffle_leaves_the_caption_as_sd_scripts_does():
    """process_caption splits at the separator only when shuffling or dropping tags."""
    import random

    from lorakit.data.captions import augment

    c = augment("a, b ||| c, d", random.Random(0), keep_tokens_separator="|||", secondary_separator=";;;")
    assert c == "a, b ||| c, d"
    assert augment("a;;;b, c", random.Random(0), secondary_separator=";;;") == "a,b, c"


def test_wildcards_draw_each_choice_and_keep_escaped_braces():
    import random

    from lorakit.data.captions import augment

    seen = {}
    for i in range(2000):
        c = augment("1girl, {simple|white} background", random.Random(i), wildcard=True)
        seen[c] = seen.get(c, 0) + 1
    assert set(seen) == {"1girl, simple background", "1girl, white background"}
    assert abs(seen["1girl, simple background"] - 1000) < 5 * math.sqrt(500)
    assert augment("1girl, {{retro style}}", random.Random(0), wildcard=True) == "1girl, {retro style}"
    lines = {augment("a cat\na dog", random.Random(i), wildcard=True) for i in range(50)}
    assert lines == {"a cat", "a dog"}  # one line of several, drawn
    assert augment("sks, {a|a} cat", random.Random(0), trigger="sks", wildcard=True) == "sks, a cat"


def test_wildcard_caption_file_keeps_its_lines_each_with_the_trigger(tmp_path):
    from lorakit.data import BucketSettings, Subset, TrainingData

    _images(tmp_path / "img", [(64, 64)], "a {red|blue} cat\n\na dog\n")
    data = TrainingData([Subset(tmp_path / "img", enable_wildcard=True)], BucketSettings(64, 32), trigger="sks")
    assert data.instance[0].caption == "sks, a {red|blue} cat\nsks, a dog"
    got = {data.batch(i)[1][0].caption for i in range(80)}
    assert got == {"sks, a red cat", "sks, a blue cat", "sks, a dog"}
    assert data.fixed_captions() is None  # drawn each step: no text cache


def test_caption_prefix_and_suffix_join_with_one_space(tmp_path):
    from lorakit.data import Subset, scan

    _images(tmp_path / "img", [(64, 64)], "a cat")
    (item,) = scan(Subset(tmp_path / "img", caption_prefix="photo,", caption_suffix=", 4k"))
    assert item.caption == "photo, a cat , 4k"  # process_caption: prefix + " " + caption + " " + suffix
    (item,) = scan(Subset(tmp_path / "img", class_tokens="sks dog", caption_ext=".none", caption_prefix="a"))
    assert item.caption == "a sks dog"  # a class-token caption gets them too


@pytest.mark.parametrize("size, resized, bucket", [
    ((300, 200), (300, 200), (256, 192)),  # under the budget: its own size, rounded down to the step
    ((2000, 1000), (640, 320), (640, 320)),  # over it: scaled to 512², the ratio kept closest (by hand)
    ((100, 700), (100, 700), (64, 640)),
])
def test_bucket_no_upscale_places_as_sd_scripts_select_bucket(tmp_path, size, resized, bucket):
    from lorakit.data.buckets import no_upscale_placement

    p = no_upscale_placement(tmp_path / "x.png", *size, 512, 64)
    assert (p.resized, p.bucket) == (resized, bucket)
    assert p.crop == ((resized[1] - bucket[1]) // 2, (resized[0] - bucket[0]) // 2)


def test_bucket_no_upscale_in_training_data(tmp_path):
    from lorakit.data import BucketSettings, Subset, TrainingData

    _images(tmp_path / "img", [(300, 200), (90, 90)])
    data = TrainingData([Subset(tmp_path / "img")], BucketSettings(512, 64, no_upscale=True))
    assert sorted(p.bucket for p in data.placements.values()) == [(64, 64), (256, 192)]
    # lorakit's own buckets would enlarge the 90×90 image 5.7× (refused above --max-upscale 2)
    with pytest.raises(Exception, match="too small"):
        TrainingData([Subset(tmp_path / "img")], BucketSettings(512, 64))


def test_random_crop_draws_the_offset_each_step_and_crops_there(tmp_path):
    import numpy as np
    from PIL import Image

    from lorakit.data import BucketSettings, Subset, TrainingData, pixels

    folder = tmp_path / "img"
    folder.mkdir()
    arr = np.random.default_rng(0).integers(0, 256, (64, 160, 3), dtype=np.uint8)
    Image.fromarray(arr).save(folder / "0.png")
    data = TrainingData([Subset(folder, random_crop=True)], BucketSettings(64, 32, enable=False))
    assert data.varies_pixels()
    offsets = set()
    for step in range(60):
        (s,) = data.batch(step)[1]
        top, left = s.offset
        assert top == 0 and 0 <= left <= 96
        offsets.add(left)
        want = arr[:, left:left + 64].astype(np.float32) / 127.5 - 1.0
        assert np.allclose(pixels(s).permute(1, 2, 0).numpy(), want, atol=1e-6)
        assert s.crop == (0, left)  # the SDXL crop condition is where the crop really is
    assert len(offsets) > 30  # uniform over 97 offsets: 60 draws hit ~45 distinct ones
    still = TrainingData([Subset(folder)], BucketSettings(64, 32, enable=False))
    assert {still.batch(i)[1][0].offset for i in range(5)} == {None} and not still.varies_pixels()


def test_color_aug_draws_and_applies_as_sd_scripts_aug_helper():
    import random

    import numpy as np
    from PIL import Image

    from lorakit.data.dataset import apply_color_aug, draw_color_aug

    n = 6000
    kinds = [draw_color_aug(random.Random(i)) for i in range(n)]
    none = sum(k is None for k in kinds)
    hue = [k[1] for k in kinds if k and k[0] == "hue"]
    gamma = [k[1] for k in kinds if k and k[0] == "gamma"]
    assert abs(none / n - 0.67) < 0.02 and abs(len(hue) / n - 0.165) < 0.015 and abs(len(gamma) / n - 0.165) < 0.015
    assert max(map(abs, hue)) <= 8 and 0.95 <= min(gamma) and max(gamma) <= 1.05
    im = Image.fromarray(np.array([[[100, 10, 250]]], dtype=np.uint8))
    # x ** g on the 0–255 values: 100 ** 1.05 = 125.9, 10 ** 1.05 = 11.2, 250 ** 1.05 = 330 → 255
    assert np.asarray(apply_color_aug(im, ("gamma", 1.05))).tolist() == [[[125, 11, 255]]]
    # a hue shift of 60 (OpenCV units: 120°) on the array read as BGR cycles its channels
    pure = Image.fromarray(np.array([[[0, 0, 255]]], dtype=np.uint8))  # RGB blue; as BGR: red
    shifted = np.asarray(apply_color_aug(pure, ("hue", 60.0)))[0, 0]
    assert shifted.argmax() == 1 and shifted[1] > 240 and shifted[0] < 10 and shifted[2] < 10  # as BGR: green


def test_dataset_resolution_pair_and_unknown_keys(tmp_path):
    from lorakit.data import load_dataset_config
    from lorakit.errors import LoraKitError

    _images(tmp_path / "img", [(64, 64)])
    d = tmp_path / "img"
    Path("a.toml").write_text(f"[[datasets]]\nresolution = [768, 768]\n[[datasets.subsets]]\nimage_dir = '{d}'\n")
    assert load_dataset_config(Path("a.toml")).options["resolution"] == 768
    Path("b.toml").write_text(f"[[datasets]]\nresolution = [768, 512]\n[[datasets.subsets]]\nimage_dir = '{d}'\n")
    with pytest.raises(LoraKitError, match="square pixel budget"):
        load_dataset_config(Path("b.toml"))
    # the doc's cascade example trains two datasets at two resolutions; lorakit trains one
    with pytest.raises(LoraKitError, match="datasets disagree on resolution"):
        load_dataset_config(_doc_dataset("cascade", d))
    Path("c.toml").write_text(f"[[datasets.subsets]]\nimage_dir = '{d}'\nmetadata_file = 'md.json'\n")
    with pytest.raises(LoraKitError, match="unknown subset option 'metadata_file'"):
        load_dataset_config(Path("c.toml"))


def test_doc_cascade_keep_tokens(tmp_path):
    """[general] keep_tokens 1, the dataset's 2, a subset's own 3 (docs/config_README-en.md)."""
    from lorakit.data import load_dataset_config

    text = DATA["dataset_configs"]["cascade"]["toml"]
    text = text[:text.index("# This is a fine-tuning dataset")]
    d = _images(tmp_path / "img", [(64, 64)]).as_posix()
    import re

    Path("c.toml").write_text(re.sub(r"image_dir = '[^']*'", f"image_dir = '{d}'", text), encoding="utf-8")
    dc = load_dataset_config(Path("c.toml"))
    assert [(s.keep_tokens, s.class_tokens, s.is_reg, s.shuffle_caption, s.caption_ext) for s in dc.subsets] == [
        (2, "hoge girl", False, True, ".txt"), (3, "fuga boy", False, True, ".txt"), (1, "human", True, True, ".txt")]
    assert dc.options == {"resolution": 512, "batch_size": 4}


# --- a whole run -------------------------------------------------------------------------------------

@pytest.fixture
def _one_thread():
    from train_support import one_thread

    yield from one_thread()


@pytest.mark.slow
def test_sd_scripts_command_trains_a_tiny_model(tmp_path, capsys, _one_thread):
    """docs/train_network.md's command on a tiny SD 1.x with a dataset TOML using sd-scripts' caption and
    image options: the file lands at OUTPUT_DIR/OUTPUT_NAME.safetensors, alpha as given, saved in fp32."""
    from safetensors import safe_open

    from train_support import make_images, tiny_model_dir

    model = tiny_model_dir(tmp_path, "sd1")
    make_images(tmp_path / "img", sizes=((40, 32), (32, 40), (48, 32)))
    Path("ds.toml").write_text(
        "[general]\nflip_aug = true\ncolor_aug = true\nrandom_crop = true\ncaption_extension = '.txt'\n"
        "[[datasets]]\nresolution = [32, 32]\nbatch_size = 1\nenable_bucket = true\nbucket_reso_steps = 8\n"
        "min_bucket_reso = 16\nmax_bucket_reso = 64\nkeep_tokens_separator = '|||'\nshuffle_caption = true\n"
        "caption_tag_dropout_rate = 0.1\nsecondary_separator = ';;;'\nenable_wildcard = true\n"
        "  [[datasets.subsets]]\n  image_dir = 'img'\n  num_repeats = 2\n"
        "  caption_prefix = 'sks ||| {red|blue},'\n  caption_suffix = '||| best;;;quality'\n", encoding="utf-8")
    argv = ["train", f"--pretrained_model_name_or_path={model}", "--dataset_config=ds.toml", "--output_dir=out",
            "--output_name=my_lora", "--save_model_as=safetensors", "--network_module=networks.lora",
            "--network_dim=4", "--network_alpha=2", "--learning_rate=1e-3", "--lr_scheduler=constant",
            "--max_train_steps=3", "--seed=1", "--no-progress", "--no-tensorboard"]
    assert main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "out" / "my_lora.safetensors"
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        alphas = {f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
        ups = [f.get_tensor(k) for k in keys if k.endswith("lora_up.weight")]
        meta = f.metadata()
    assert alphas == {2.0} and {u.dtype for u in ups} == {__import__("torch").float32}
    assert any(u.abs().sum() > 0 for u in ups)  # 3 steps at 1e-3 moved the zero-initialised up weights
    assert meta["ss_output_name"] == "my_lora" and meta["ss_network_dim"] == "4"


def test_config_file_single_values_and_paths(tmp_path):
    """A config file may give a list option one value; its paths are read from the working folder,
    as sd-scripts reads them, or beside the TOML when only there."""
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "ds.toml").write_text("[[datasets.subsets]]\nimage_dir = 'x'\n")
    (sub / "k.toml").write_text("text_encoder_lr = 5e-5\nunet_lr = 1e-4\nnetwork_args = 'conv_dim=4'\n"
                                "dataset_config = 'ds.toml'\n")
    _, k = split_argv(["--config_file", "cfg/k"])  # '.toml' added, as sd-scripts adds it
    cfg, _ = apply(TrainConfig(), k, {})
    assert (cfg.lr, cfg.text_encoder_lr, tuple(cfg.network_args)) == (1e-4, 5e-5, ("conv_dim=4",))
    assert Path(cfg.data).resolve() == (sub / "ds.toml").resolve()


def test_resumed_run_keeps_the_seed_it_drew(tmp_path):
    """sd-scripts draws a seed when none is given; continuing that run must not draw another."""
    state = tmp_path / "run" / "state-000002"
    state.mkdir(parents=True)
    (state / "lorakit_state.json").write_text(json.dumps({"step": 2, "config": {"seed": 987654321}}))
    _, k = split_argv(["--network_dim", "4"])
    cfg, notes = apply(TrainConfig(), k, {"resume": str(tmp_path / "run")})
    assert cfg.seed == 987654321 and not any("seed" in n for n in notes)
    cfg, notes = apply(TrainConfig(), k, {})
    assert any(f"seed {cfg.seed}" in n for n in notes)
