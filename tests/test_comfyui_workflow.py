"""The ComfyUI example workflow (examples/comfyui): valid API-format JSON whose nodes take exactly the
inputs ComfyUI's nodes.py declares (tests/data/comfyui_node_inputs.json), linked output to input by type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "comfyui" / "lorakit-lora-api.json"
NODES = json.loads((Path(__file__).parent / "data" / "comfyui_node_inputs.json").read_text())["nodes"]
WIDGETS = {"INT": int, "FLOAT": (int, float), "STRING": str, "COMBO": str}


def _graph() -> dict:
    return json.loads(WORKFLOW.read_text())


def test_lora_loader_takes_lorakits_file_with_comfyuis_inputs():
    graph = _graph()
    (lora,) = [n for n in graph.values() if n["class_type"] == "LoraLoader"]
    assert set(lora["inputs"]) == set(NODES["LoraLoader"]["inputs"]) == {
        "model", "clip", "lora_name", "strength_model", "strength_clip"}
    assert lora["inputs"]["lora_name"].endswith(".safetensors")
    # both of its outputs are used: MODEL by the sampler, CLIP by the text encoders
    used = {tuple(v) for n in graph.values() for v in n["inputs"].values() if isinstance(v, list)}
    node_id = next(k for k, n in graph.items() if n is lora)
    assert {(node_id, 0), (node_id, 1)} <= used


@pytest.mark.parametrize("node_id", sorted(_graph(), key=int))
def test_every_node_has_exactly_its_declared_inputs(node_id):
    graph = _graph()
    node = graph[node_id]
    spec = NODES[node["class_type"]]
    assert set(node["inputs"]) == set(spec["inputs"])
    for name, value in node["inputs"].items():
        want = spec["inputs"][name]
        if want["type"] in WIDGETS:
            assert isinstance(value, WIDGETS[want["type"]]) and not isinstance(value, bool), name
            if "min" in want:
                assert want["min"] <= value <= want["max"], name
        else:  # a link [source node, output index] to an output of that type
            src, index = value
            assert NODES[graph[src]["class_type"]]["returns"][index] == want["type"], name


def test_the_graph_ends_in_a_saved_image():
    graph = _graph()
    assert [n["class_type"] for n in graph.values()].count("SaveImage") == 1
