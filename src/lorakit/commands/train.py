"""`lorakit train [CONFIG.toml] [--option value ...]`: every TrainConfig field is a flag.

The flags are generated from the dataclass (name, type, help), so the TOML file, the CLI and
`--print-config` can never disagree about which options exist.
"""

from __future__ import annotations

import inspect
from contextvars import ContextVar
from dataclasses import MISSING, fields
from pathlib import Path
from typing import List, Optional, get_args, get_type_hints

import typer
import typer.core

from ..errors import LoraKitError
from ..train.config import MODEL_MISSING, ModelSource, TrainConfig

_SHORT = {"model": ["-m"], "data": ["-d"], "out": ["-o"], "rank": ["-r"]}


def _train(config: Optional[Path] = None, print_config: bool = False, plan: bool = False, kohya=None,
           **flags) -> None:
    cfg = TrainConfig.from_toml(config) if config is not None else TrainConfig()
    if not flags.get("network_args"):  # not given (typer: an empty list) keeps the config's
        flags["network_args"] = None
    if kohya:  # sd-scripts' option names or --config_file: its defaults where they differ
        from ..train.kohya_options import apply

        cfg, notes = apply(cfg, kohya, flags)
        for line in notes:
            typer.echo(f"note: {line}", err=True)
    cfg = cfg.override(flags)
    if print_config:
        typer.echo(family_defaults(cfg).to_toml())
        return
    if cfg.model is None:
        raise LoraKitError(MODEL_MISSING)
    if plan or cfg.memory_budget is not None:  # the options are checked before planning; a plan needs no data
        (cfg if cfg.data is not None else cfg.override({"data": "."})).validate()
    if cfg.blocks_to_swap:
        from ..block_swap import check_model
        from ..models.sketch import sketch

        check_model(cfg.blocks_to_swap, sketch(cfg.model, config_dir=cfg.config_dir, text_encoders=cfg.text_encoders,
                                               allow_pickle=cfg.allow_pickle))
    if cfg.memory_budget is not None or plan:
        from ..memory_budget import budget_train, plan_train

        cfg = family_defaults(cfg)

        if cfg.memory_budget is not None:
            cfg = budget_train(cfg, echo=lambda line: typer.echo(line, err=not plan))
        if plan:
            typer.echo(plan_train(cfg)[0].table())
            return
    from ..errors import Interrupted
    from ..train.loop import run

    if not kohya:  # lorakit's alpha where sd-scripts' differs most: said once, when a run starts
        from ..train.kohya_options import alpha_note

        alpha_note(cfg, lambda line: typer.echo(f"note: {line}", err=True))

    try:
        result = run(cfg)
    except Interrupted as exc:
        if exc.run_dir is not None:
            raise Interrupted(f"{exc}\nresume with: {resume_command(exc.run_dir)}", exc.exit_code,
                              run_dir=exc.run_dir, state=exc.state) from None
        raise
    if result.metadata:
        from ..check import summary

        for line in summary(result.out, model=result.model):
            typer.echo(line)
        typer.echo(str(result.out))


def family_defaults(cfg: TrainConfig) -> TrainConfig:
    """The options the model's family decides (resolution, sample steps, guidance) filled in, read from
    the model's configs without its weights; unchanged when the model cannot be read so (a hub id)."""
    from ..models.sketch import sketch

    if cfg.model is None or None not in (cfg.resolution, cfg.sample_steps, cfg.sample_guidance):
        return cfg
    try:
        sk = sketch(cfg.model, config_dir=cfg.config_dir, text_encoders=cfg.text_encoders,
                    allow_pickle=cfg.allow_pickle, prediction_type=cfg.prediction_type)
    except LoraKitError:
        return cfg
    return cfg.with_family_defaults(sk.family, sk.prediction_type == "v_prediction", sk.denoiser_config)


def resume_command(run_dir) -> str:
    """The command line that started this run, with `--resume RUN_DIR` in place of any earlier --resume."""
    import shlex

    from ..cli import invocation

    args, skip = [], False
    for a in invocation or ["lorakit", "train"]:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            args.append(a)
    return shlex.join([*args, "--resume", str(run_dir)])


def _cli_type(hint):
    args = [a for a in get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    return {list: List[str], ModelSource: str}.get(base, base)


def _signature() -> inspect.Signature:
    hints = get_type_hints(TrainConfig)
    params = [
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=typer.Argument(None, help="a TOML config; flags override its values",
                                                 show_default=False),
                          annotation=Optional[Path]),
        inspect.Parameter("print_config", inspect.Parameter.KEYWORD_ONLY,
                          default=typer.Option(False, "--print-config",
                                               help="print the resolved config as TOML and exit"),
                          annotation=bool),
        inspect.Parameter("plan", inspect.Parameter.KEYWORD_ONLY,
                          default=typer.Option(False, "--plan", help="print the estimated peak memory, part by "
                                               "part, and exit (reads configs and file headers, no weights)"),
                          annotation=bool),
    ]
    for f in fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        t = _cli_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if t is bool else [flag, *_SHORT.get(f.name, [])]
        default = f.default if f.default is not MISSING else None
        shown = f" [config default: {default}]" if default not in (None, "") else ""
        option = typer.Option(None, *decls, help=f.metadata["help"] + shown, show_default=False,
                              rich_help_panel=f.metadata["section"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[t]))
    return inspect.Signature(params)


class KohyaCommand(typer.core.TyperCommand):
    """Takes sd-scripts' spellings (`--network_dim 16`, `--config_file x.toml`) beside lorakit's flags."""

    def parse_args(self, ctx, args):
        from ..train.kohya_options import split_argv

        args, ctx.meta["kohya"] = split_argv(list(args))
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        token = _KOHYA.set(ctx.meta.get("kohya"))
        try:
            return super().invoke(ctx)
        finally:
            _KOHYA.reset(token)


_KOHYA: ContextVar = ContextVar("kohya", default=None)  # the sd-scripts options of the command being run


def train(**kwargs) -> None:
    """Train a LoRA ({families}) from a folder of images; `lorakit train --help` lists every option. sd-scripts'
    option names (`--network_dim 16`, `--config_file kohya.toml`) are read too."""
    config = kwargs.pop("config", None)
    print_config = kwargs.pop("print_config", False)
    plan = kwargs.pop("plan", False)
    _train(config, print_config, plan, kohya=_KOHYA.get(), **kwargs)


train.command_class = KohyaCommand  # the class cli.py registers the command with


def _families() -> str:
    from .. import families

    return ", ".join(f.label for f in families.all())


train.__doc__ = train.__doc__.format(families=_families())  # the help names every registered family

train.__signature__ = _signature()
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
