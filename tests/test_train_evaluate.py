"""`lorakit train --evaluate` / `--evaluate-every N`: report folders during and at the end of a run,
the figures in TensorBoard, and a trained LoRA that the evaluations leave untouched."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from lorakit.train.loop import run
from evaluate_support import evaluation_world
from train_support import config, one_thread

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return evaluation_world(tmp_path_factory.mktemp("train-evaluate"))


def test_evaluate_every_n_steps_logs_and_keeps_the_training(setup, tmp_path):
    common = dict(steps=4, trigger="zzt", sample_steps=2, evaluate_n=1, evaluate_prompts=setup["prompts"],
                  clip_model=str(setup["clip"]), dino_model=str(setup["dino"]))
    result = run(config(setup["model"], setup["data"], tmp_path / "with", evaluate_every=2, tensorboard=True,
                        **common))
    folder = result.run_dir / "evaluate"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002", "step-000004"]
    for step in ("step-000002", "step-000004"):
        assert {p.name for p in (folder / step).iterdir()} == {"report.json", "report.html", "grid.png"}
    doc = json.loads((folder / "step-000004" / "report.json").read_text())
    assert doc["notes"] == {} and doc["own"] == [True, False]
    assert [r["strength"] for r in doc["rows"]] == [0.0, 0.5, 1.0]
    last = doc["rows"][-1]
    assert -1 <= last["subject_dino"] <= 1 and -1 <= last["subject_clip"] <= 1 and last["drift_other"] > 0
    assert doc["rows"][0]["drift_other"] == 0.0 and len(doc["data"]) == 4
    assert doc["loras"] == [{"path": str(tmp_path / "with" / "lora.safetensors"), "weight": 1.0, "step": 4}]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next(result.run_dir.rglob("events.out.tfevents*")).parent
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("evaluate/subject_dino")] == [2, 4]
    assert [e.step for e in acc.Scalars("evaluate/drift_other")] == [2, 4]
    assert acc.Scalars("evaluate/drift_other")[-1].value == pytest.approx(last["drift_other"], rel=1e-6)
    assert "evaluate/grid" in acc.Tags()["images"]

    plain = run(config(setup["model"], setup["data"], tmp_path / "without", **common))
    a, b = load_file(result.out), load_file(plain.out)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # evaluating changed nothing


def test_evaluate_at_the_end_brings_back_released_encoders(setup, tmp_path):
    """Without --evaluate-every the VAE and text encoder are let go after caching; the final
    evaluation loads them again. Models skipped with 'none' are named in the notes."""
    result = run(config(setup["model"], setup["data"], tmp_path / "end", steps=2, trigger="zzt", sample_steps=2,
                        evaluate=True, evaluate_n=1, evaluate_prompts=setup["prompts"], clip_model="none",
                        dino_model="none"))
    doc = json.loads((result.run_dir / "evaluate" / "step-000002" / "report.json").read_text())
    assert set(doc["notes"]) == {"clip", "dino"} and "not requested" in doc["notes"]["clip"]
    assert doc["rows"][-1]["drift_other"] > 0 and doc["rows"][-1]["subject_dino"] is None


def test_evaluate_every_must_not_be_negative(setup, tmp_path):
    from lorakit.errors import LoraKitError

    with pytest.raises(LoraKitError, match="--evaluate-every"):
        config(setup["model"], setup["data"], tmp_path, evaluate_every=-1).validate()
