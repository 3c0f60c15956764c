"""`lorakit evaluate`: the strength sweep's numbers against the images computed by hand, and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorakit.cli import main as cli
from lorakit.evaluation.run import evaluate
from lorakit.generate import LoraSpec, generate
from lorakit.models import load_model

from conftest import tiny_model_with_lora

PROMPTS = ["zzt a cat", "a dog on a hill"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny_model_with_lora(tmp_path_factory.mktemp("evaluate"), rank=4, alpha=4, std=0.3, seed=0)


def _diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255.0)


def test_drift_is_the_mean_pixel_change_from_the_base(files):
    model = load_model(str(files / "model"))
    lora = LoraSpec(files / "a.safetensors", 0.8)
    report = evaluate(model, [lora], PROMPTS, strengths=[1, 0.5], trigger="zzt", n=2, seed=3, steps=3,
                      sampler="ddim", progress=False)
    assert report.strengths == [0.0, 0.5, 1.0] and report.seeds == [3, 4]
    by = {r.strength: r for r in report.rows}
    assert by[0.0].drift_trigger == 0.0 and by[0.0].drift_other == 0.0
    assert by[0.0].fidelity_trigger is None  # not the toy model: nothing to score
    # strength 1 is the LoRA at its own weight (0.8): redo that image by hand
    base = generate(model, PROMPTS[1], n=2, seed=3, steps=3, sampler="ddim", progress=False).images
    full = generate(model, PROMPTS[1], loras=[LoraSpec(lora.path, 0.8)], n=2, seed=3, steps=3, sampler="ddim",
                    progress=False).images
    expected = np.mean([_diff(a, b) for a, b in zip(full, base)])
    assert by[1.0].drift_other == pytest.approx(expected, abs=1e-7)
    assert 0 < by[0.5].drift_other < by[1.0].drift_other
    assert 0 < by[0.5].drift_trigger < by[1.0].drift_trigger
    grid = report.grid()
    assert grid.size == (56 + 128 * 2, 28 + 128 * 3)  # 16-px images enlarged 8×, a row per strength


def test_cli_table_json_and_grid(files, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# sweep\nzzt a cat\n\na dog on a hill\n")
    args = ["evaluate", "--model", str(files / "model"), "--lora", f"{files / 'a.safetensors'}:0.8",
            "--prompts", str(prompts), "--trigger", "zzt", "--strengths", "1", "--steps", "2", "--sampler", "ddim"]
    assert cli(args + ["--out", str(tmp_path / "sweep.png")]) == 0
    out = capsys.readouterr().out
    assert "| strength | drift (trigger prompts) | drift (other prompts) |" in out
    assert (tmp_path / "sweep.png").is_file()
    assert cli(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["strength"] for r in report["rows"]] == [0.0, 1.0]
    assert report["prompts"] == PROMPTS


@pytest.mark.parametrize("case", ["missing_lora", "no_prompt", "bad_strengths", "empty_prompt_file"])
def test_bad_input_one_line_exit_2(files, tmp_path, capsys, case):
    args = ["evaluate", "--model", str(files / "model"), "--lora", str(files / "a.safetensors"), "--prompt", "a cat",
            "--steps", "1"]
    if case == "missing_lora":
        args[4] = str(tmp_path / "nope.safetensors")
    elif case == "no_prompt":
        args = args[:5] + args[7:]
    elif case == "bad_strengths":
        args += ["--strengths", "0,half"]
    elif case == "empty_prompt_file":
        (tmp_path / "empty.txt").write_text("\n# nothing\n")
        args += ["--prompts", str(tmp_path / "empty.txt")]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert {"missing_lora": "nope.safetensors", "no_prompt": "at least one prompt", "bad_strengths": "half",
            "empty_prompt_file": "empty.txt"}[case] in err[0]
