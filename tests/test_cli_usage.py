"""Usage errors end in click's usage message and exit code 2, whatever click typer carries."""

import subprocess
import sys

import pytest

from lorakit.cli import main


@pytest.mark.parametrize("argv, says", [
    (["merge", "--bogus"], "No such option: --bogus"),
    (["merge"], "Missing option '--lora'"),
])
def test_usage_error_is_a_message_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Usage: lorakit merge" in err
    assert "Traceback" not in err


def test_usage_error_from_the_installed_command():
    run = subprocess.run([sys.executable, "-m", "lorakit", "merge", "--bogus"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "No such option: --bogus" in run.stderr and "Traceback" not in run.stderr


def test_library_warnings_stay_off_the_terminal(tmp_path):
    """diffusers warns that `torch_dtype` is deprecated on every load: nothing a user can act on."""
    run = subprocess.run([sys.executable, "-m", "lorakit", "generate", "--model", "toy", "--prompt", "a red circle",
                          "--steps", "2", "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=300, env=_env_without_warning_options())
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and (tmp_path / "x.png").is_file()


def test_lorakit_own_warnings_still_show(monkeypatch):
    import warnings

    from lorakit import cli

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        cli._silence_library_warnings()
        warnings.warn_explicit("from diffusers", FutureWarning, "x.py", 1, module="diffusers.utils")
        warnings.warn_explicit("from lorakit", UserWarning, "y.py", 1, module="lorakit.train.loop")
    assert [str(w.message) for w in seen] == ["from lorakit"]


def _env_without_warning_options():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}


def _command(name: str):
    import typer

    from lorakit import cli

    cli._register()
    return typer.main.get_command(cli.app).commands[name]


def _option_help(command: str, flag: str) -> str:
    return next(p.help for p in _command(command).params if flag in p.opts)


def test_help_texts_name_every_registered_family_and_format():
    """The help is written from the registry, so a family added there shows everywhere: --family
    of convert and inspect, train's summary, and --to's layouts (with the families that write each)."""
    from lorakit import families
    from lorakit.formats import FORMATS

    for command in ("convert", "inspect"):
        assert all(name in _option_help(command, "--family") for name in families.names()), command
    assert all(f.label in _command("train").help for f in families.all())
    to = _option_help("convert", "--to")
    assert all(fmt in to for fmt in FORMATS)
    writers = {fmt: [f.label for f in families.all() if fmt in f.lora_formats] for fmt in FORMATS}
    assert f"comfyui ({'/'.join(writers['comfyui'])})" in to and "SD3" in writers["comfyui"]


def test_text_encoders_help_is_one_text_for_every_command():
    train = _option_help("train", "--text-encoders")
    assert "SD 3.x" in train and "Flux" in train
    assert _option_help("generate", "--text-encoders") == _option_help("merge", "--text-encoders") == train
