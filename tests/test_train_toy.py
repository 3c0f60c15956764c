"""Training measured on the toy world: the concept score rises, prior preservation protects the
class, and `lorakit demo` writes its files. The toy base is shipped; every figure is seeded."""

from __future__ import annotations

import json

import pytest

from lorakit.cli import main as cli
from lorakit.formats import load_network
from lorakit.models import load_model
from lorakit.toy import world
from lorakit.toy.evaluate import base_accuracy, concept_fidelity
from lorakit.train.demo import demo_config
from lorakit.train.loop import run
from train_support import one_thread

pytestmark = pytest.mark.slow
_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def base():
    model = load_model("toy")
    model.pipe.set_progress_bar_config(disable=True)
    return model


def _with_lora(model, path, fn):
    net = load_network(model.parts(), path)
    net.apply()
    try:
        return fn(model.pipe)
    finally:
        net.remove()


@pytest.fixture(scope="module")
def concept_lora(tmp_path_factory):
    cfg = demo_config(tmp_path_factory.mktemp("concept"), steps=300, prior=False, progress=False, tensorboard=False)
    run(cfg)
    return cfg.out


def test_training_improves_concept_score(base, concept_lora):
    before = concept_fidelity(base.pipe, n=24).shape
    after = _with_lora(base, concept_lora, lambda p: concept_fidelity(p, n=24).shape)
    print(f"concept fidelity {before:.0%} → {after:.0%}")
    assert before <= 0.05
    assert after >= 0.75


def test_evaluate_scores_the_strength_sweep(concept_lora):
    """`lorakit evaluate` on the toy model: the scorer's fidelity per strength."""
    from lorakit.evaluation.run import evaluate
    from lorakit.generate import LoraSpec

    model = load_model("toy")  # its own copy: generate() sets the sampler on the pipeline
    prompts = ["a red zqx on a white background", "a blue zqx on a black background",
               "a green circle on a white background", "a yellow square on a black background"]
    report = evaluate(model, [LoraSpec(concept_lora, 1.0)], prompts, strengths=[0.5, 1], trigger="zqx", n=6,
                      steps=20, guidance=5.0, sampler="ddim", progress=False)
    print(report.table())
    by = {r.strength: r for r in report.rows}
    assert by[0.0].fidelity_trigger == 0.0 and by[0.0].fidelity_other >= 0.9
    assert by[1.0].fidelity_trigger >= 0.5  # 75 % here (9 of 12); half strength is not enough yet
    assert 0 < by[0.5].drift_trigger < by[1.0].drift_trigger


CIRCLES = [f"a {c} circle on a {b} background" for c in world.COLORS for b in world.BACKGROUNDS]


def test_prior_preservation_protects_the_class(base, tmp_path):
    """The same aggressive run with and without prior preservation on circle prompts (the class the
    ring belongs to): with it, circles stay circles measurably more often."""
    prompts = tmp_path / "circles.txt"
    prompts.write_text("\n".join(CIRCLES) + "\n")
    common = dict(steps=300, progress=False, tensorboard=False, lr=5e-3)
    plain = demo_config(tmp_path / "plain", prior=False, **common)
    kept = demo_config(tmp_path / "prior", class_prompt=str(prompts), class_data=tmp_path / "circle-images",
                       num_class_images=24, prior_weight=1.0, **common)
    run(plain)
    run(kept)
    score = lambda p: base_accuracy(p, prompts=CIRCLES, n=24).shape_and_color  # noqa: E731
    without = _with_lora(base, plain.out, score)
    with_prior = _with_lora(base, kept.out, score)
    reference = score(base.pipe)
    print(f"circle accuracy: base {reference:.0%}, LoRA without prior {without:.0%}, with prior {with_prior:.0%}")
    assert with_prior >= without + 0.3
    assert with_prior >= 0.8 * reference


def test_demo_writes_everything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as `make demo` gives
    out = tmp_path / "out" / "demo"
    code = cli(["demo", "--out", "out/demo", "--steps", "20", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("lora.safetensors", "loss.png", "before.png", "after.png", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for when in ("before", "after"):
        assert {"concept_fidelity", "base_accuracy"} <= set(report[when])
    assert report["steps"] == 20 and "concept fidelity" in captured.out
