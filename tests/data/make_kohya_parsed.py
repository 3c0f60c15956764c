"""Writes kohya_parsed.json: what sd-scripts' own argument parser gives for the example commands and
config files of its docs, for tests/test_kohya_options.py.

sd-scripts cannot be imported without its training stack, so its parsers are rebuilt from its source:
every top-level `add_*_arguments` and `setup_parser` function of the files below is executed, as
written, against stand-in modules, and the parse runs as the scripts' `__main__` does
(`parser.parse_args`, then `train_util.read_config_from_file` for --config_file, then config_util's
TOML load for --dataset_config). Run from a clone of sd-scripts at the commit named in the JSON:

    python tests/data/make_kohya_parsed.py /path/to/sd-scripts > tests/data/kohya_parsed.json
"""

import argparse
import ast
import json
import os
import pathlib
import shlex
import subprocess
import sys
import types

import tomllib

REPO = sys.argv[1] if len(sys.argv) > 1 else "."
FILES = {
    "train_util": "library/train_util.py", "sai_model_spec": "library/sai_model_spec.py",
    "deepspeed_utils": "library/deepspeed_utils.py", "config_util": "library/config_util.py",
    "custom_train_functions": "library/custom_train_functions.py", "sdxl_train_util": "library/sdxl_train_util.py",
    "flux_train_utils": "library/flux_train_utils.py", "sd3_train_utils": "library/sd3_train_utils.py",
    "utils": "library/utils.py", "train_network": "train_network.py", "sdxl_train_network": "sdxl_train_network.py",
    "flux_train_network": "flux_train_network.py", "sd3_train_network": "sd3_train_network.py",
}
SCRIPTS = ("train_network", "sdxl_train_network", "flux_train_network", "sd3_train_network")


def git(*args):
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, check=True).stdout


def source(path):
    return git("show", f"HEAD:{path}")


def load_modules():
    mods = {name: types.ModuleType(name) for name in FILES}
    for name, path in FILES.items():
        tree = ast.parse(source(path))
        keep = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                and ((n.name.startswith("add_") and n.name.endswith("arguments")) or n.name == "setup_parser")]
        ns = mods[name].__dict__
        ns.update(argparse=argparse, Path=pathlib.Path, os=os, **mods)
        exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), ns)
    for mod in mods.values():  # `from library.x import add_..._arguments`
        for other in mods.values():
            for k, v in list(other.__dict__.items()):
                if callable(v) and k.startswith("add_") and k not in mod.__dict__:
                    mod.__dict__[k] = v
    mods["train_network"].__dict__["add_logging_arguments"] = mods["utils"].add_logging_arguments
    return mods


def jsonable(v):
    if isinstance(v, pathlib.PurePath):
        return str(v)
    if isinstance(v, tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def parse(mods, script, argv, files):
    """As the script's __main__: parse_args, then read_config_from_file (keys flat or in any tables)."""
    parser = mods[script].setup_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return None
    if args.config_file:
        doc = tomllib.loads(files[args.config_file])
        flat = {}
        for k, v in doc.items():
            flat.update(v) if isinstance(v, dict) else flat.__setitem__(k, v)
        args = parser.parse_args(argv, namespace=argparse.Namespace(**flat))
        args.config_file = os.path.splitext(args.config_file)[0]
    return {k: jsonable(v) for k, v in sorted(vars(args).items())}


def command(doc, start, stop):
    """The doc's example command between two line numbers, as a shell would split it."""
    lines = source(doc).splitlines()[start - 1:stop]
    text = " ".join(line.rstrip().rstrip("\\").rstrip("^") for line in lines)
    argv = shlex.split(text)
    return argv[argv.index(next(a for a in argv if a.endswith(".py"))) + 1:]


def toml_block(doc, start):
    """The ```toml block that starts at line `start` of the doc."""
    lines = source(doc).splitlines()[start:]
    return "\n".join(lines[:lines.index("```")]) + "\n"


# placeholders of the docs → names the test creates beside it
PLACE = {"<path to Stable Diffusion model>": "model", "<SDXL base model path>": "model",
         "<path to FLUX.1 model>": "model", "<path to SD3 model>": "model",
         "<output directory for training results>": "out", "<output directory>": "out"}


def placed(argv):
    out = []
    for a in argv:
        for k, v in PLACE.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def drop(argv, *names):
    return [a for a in argv if a.split("=")[0] not in names]


def main():
    mods = load_modules()
    commit = git("rev-parse", "HEAD").strip()
    examples = []

    def add(name, script, doc, argv, files=None, note=""):
        examples.append(dict(name=name, script=script + ".py", doc=doc, argv=argv, files=files or {}, note=note,
                             parsed=parse(mods, script, argv, files or {})))

    sd15 = placed(command("docs/train_network.md", 73, 89))
    add("sd15", "train_network", "docs/train_network.md#L73-L89", sd15)
    sdxl = placed(command("docs/sdxl_train_network.md", 73, 93))
    add("sdxl_as_documented", "sdxl_train_network", "docs/sdxl_train_network.md#L73-L93", sdxl,
        note="--text_encoder_lr1/--text_encoder_lr2 are not options of sdxl_train_network.py: its parser refuses them")
    add("sdxl", "sdxl_train_network", "docs/sdxl_train_network.md#L73-L93",
        drop(sdxl, "--text_encoder_lr1", "--text_encoder_lr2"),
        note="the documented command without --text_encoder_lr1/2, which its parser refuses")
    flux = placed(command("docs/flux_train_network.md", 124, 149))
    add("flux", "flux_train_network", "docs/flux_train_network.md#L124-L149", drop(flux, "--clip_l", "--t5xxl", "--ae"),
        note="without --clip_l/--t5xxl/--ae (separate component files; lorakit reads a diffusers folder)")
    add("flux_components", "flux_train_network", "docs/flux_train_network.md#L124-L149", flux,
        note="as documented, with the component files")
    sd3 = placed(command("docs/sd3_train_network.md", 78, 99))
    add("sd3", "sd3_train_network", "docs/sd3_train_network.md#L78-L99", drop(sd3, "--clip_l", "--clip_g", "--t5xxl"),
        note="without --clip_l/--clip_g/--t5xxl (separate component files; lorakit reads a diffusers folder)")
    adafactor = toml_block("docs/train_SDXL-en.md", 64)
    add("sdxl_adafactor_config_file", "sdxl_train_network", "docs/train_SDXL-en.md#L64-L70",
        ["--pretrained_model_name_or_path=model", "--dataset_config=my_sdxl_dataset_config.toml",
         "--config_file=adafactor.toml", "--max_train_steps=500"], files={"adafactor.toml": adafactor},
        note="the doc's TOML as --config_file, with a command line over it")
    sections = "\n".join(["[model]", 'pretrained_model_name_or_path = "model"', "[dataset]",
                          'dataset_config = "my_dataset_config.toml"', "[network]", 'network_module = "networks.lora"',
                          "network_dim = 16", "network_alpha = 1", "[optimizer]", "learning_rate = 1e-4",
                          'optimizer_type = "AdamW8bit"', 'lr_scheduler = "constant"', "[run]",
                          'mixed_precision = "fp16"', "gradient_checkpointing = true", "max_train_steps = 100",
                          "[output]", 'output_dir = "out"', 'output_name = "my_lora"', 'save_precision = "fp16"'])
    add("sd15_config_file_in_sections", "train_network", "docs/train_network.md#L73-L89",
        ["--config_file=sd15.toml", "--seed=42"], files={"sd15.toml": sections + "\n"},
        note="docs/train_network.md's settings written as a sectioned --config_file (read_config_from_file "
             "merges every table)")
    datasets = {"subsets_and_captions": toml_block("docs/config_README-en.md", 332),
                "cascade": toml_block("docs/config_README-en.md", 25)}
    options = {}
    for script in SCRIPTS:
        for a in mods[script].setup_parser()._actions:
            if a.dest == "help":
                continue
            kind = ("flag" if isinstance(a, argparse._StoreTrueAction) else
                    "list" if a.nargs == "*" else getattr(a.type, "__name__", "str"))
            options.setdefault(a.dest, dict(kind=kind, default=jsonable(a.default), scripts=[]))
            options[a.dest]["scripts"].append(script + ".py")
    json.dump(dict(repository="https://github.com/kohya-ss/sd-scripts", commit=commit,
                   files=sorted(set(FILES.values())),
                   method=__doc__.strip().splitlines()[2:7], options=options, examples=examples,
                   dataset_configs={k: dict(doc="docs/config_README-en.md", toml=v) for k, v in datasets.items()}),
              sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


main()
