"""The benchmark scripts' --quick modes run (tiny models, in one process), so the scripts cannot rot."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "HERE", tmp_path, raising=False)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_step_quick(monkeypatch, tmp_path):
    data = _script("train_step", monkeypatch, tmp_path).main(["--quick", "--work", str(tmp_path / "w")])
    rows = data["per_step"]["64"]
    assert set(rows) == {"lorakit_step:auto", "reference_step:bf16", "reference_step:fp32", "floor:bf16", "floor:fp32"}
    assert all(v["s_per_step"] > 0 for v in rows.values())
    assert "precision: fp32 (UNet" in rows["lorakit_step:auto"]["precision"] or "without" in \
        rows["lorakit_step:auto"]["precision"]  # the tiny model is far below the bf16 threshold
    assert data["end_to_end"]["lorakit_e2e"]["seconds"] > 0 and "goals at 64 px" in data["table"]
    assert (tmp_path / "results" / "train_step_quick.json").is_file()


def test_generate_quick(monkeypatch, tmp_path):
    data = _script("generate", monkeypatch, tmp_path).main(["--quick", "--work", str(tmp_path / "w")])
    res = data["results"]
    assert set(res) == {"lorakit:merged", "lorakit:fly", "diffusers:fp32", "diffusers:bf16"}
    assert res["diffusers:bf16"]["dtype"] == "torch.bfloat16" and res["lorakit:merged"]["dtype"] == "torch.float32"
    assert "on the fly / merged" in data["table"]


def test_live_layer_quick(monkeypatch, tmp_path):
    data = _script("live_layer", monkeypatch, tmp_path).main(["--quick"])
    res = data["results"]
    assert [r["tokens"] for r in res.values()] == [2048, 512]
    assert [r["chosen"] for r in res.values()] == ["effective weight", "branch"]  # the cost rule's two sides
    assert all(r["base"] > 0 and r["branch"] > 0 and r["weight"] > 0 for r in res.values())
    assert (tmp_path / "results" / "live_layer_quick.json").is_file()


def test_precision_crossover_quick(monkeypatch, tmp_path):
    data = _script("precision_crossover", monkeypatch, tmp_path).main(["--quick"])
    assert [r["size"] for r in data["rows"]] == ["toy", "w32"]
    assert data["rows"][0]["parameters"] == 2_181_252  # the toy UNet
    assert all(r["s_fp32"] > 0 and r["s_bf16"] > 0 for r in data["rows"])


def test_gpu_smoke_on_cpu(monkeypatch, tmp_path):
    data = _script("gpu", monkeypatch, tmp_path).main(["--quick", "--work", str(tmp_path / "w")])
    assert len(data["results"]) == 8  # reference and lorakit × fp16, bf16 × checkpointing off, on
    assert all(v["s_per_step"] > 0 for v in data["results"].values())


def test_gpu_refuses_without_cuda(monkeypatch, tmp_path, capsys):
    import torch

    gpu = _script("gpu", monkeypatch, tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        gpu.main([])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]


def test_lora_effect_quick(monkeypatch, tmp_path):
    data = _script("lora_effect", monkeypatch, tmp_path).main(["--quick"])
    res = data["results"]
    assert list(res) == ["fp32", "bf16", "fp16", "bf16 weights, fp32 arithmetic", "bf16, adapted layers in fp32"]
    assert res["fp32"]["call fly 1.0"] == 0.0 and res["fp32"]["image merged 0.3"] == 0.0  # the reference
    assert res["bf16"]["call merged 0.3"] > 10 * res["bf16 weights, fp32 arithmetic"]["call fly 0.3"]
    assert all(r["s_per_call_single"] > 0 for r in res.values())
    assert (tmp_path / "results" / "lora_effect_quick.json").is_file()
