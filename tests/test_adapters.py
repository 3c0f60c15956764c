"""`--network lora|locon|loha|lokr|dora|oft`: the math against LyCORIS' own, the files against what the
loaders read, and the options checked.

The loaders' code was read at these commits (the key lists below come from it):
- ComfyUI (github.com/comfyanonymous/ComfyUI) comfy/weight_adapter/lora.py 6fd406fb14ca663225b88c6f75d7a7f2b997e5a0,
  loha.py 183b377588102d00131247aec399f8b34e1122b4, lokr.py 179c2d35c84beb3d9761fcd146ffcba77273413e,
  oft.py 3684cff31bb470fc106b2c843224e69780266cca, base.py 9c0cf36cd7964978850fd40f8cf76ac2cf9f9e15
  (`weight_decompose`: a per-column magnitude normed over W+ΔW; a per-row one normed over W alone);
- AUTOMATIC1111/stable-diffusion-webui extensions-builtin/Lora/network_oft.py
  3772a82a70769fe1aac884a75bf5a3313fb83328, network_lora.py ea903819cb7e1d9a1b82ff93d5be60c3d7a8c9c6,
  network_hada.py c302b3ab9dd0f151cf8cb87a68002b42e5fc2676, network_lokr.py fe89b098394aab3339078eb992f796a4aa1a32b6,
  network.py (`apply_weight_decompose`: per-column magnitude over W+ΔW, alpha/r applied before it);
- KohakuBlueleaf/LyCORIS f49d30d670591ec8841d241d79aaa8449b30a715 (= lycoris-lora 4.1.3 on PyPI, what runs here).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit.errors import LoraKitError
from lorakit.lora import functional as LF
from lorakit.lora.algos import parse
from lorakit.lora.modules import DeltaModule

lycoris = pytest.importorskip("lycoris")

# sub-keys each loader reads per algorithm (besides `alpha` and `dora_scale`, read for every kind by
# comfy/lora.py and A1111's network.py)
COMFYUI_READS = {
    "lora": {"lora_up.weight", "lora_down.weight", "lora_mid.weight"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
    "oft": {"oft_blocks", "rescale"},
}
A1111_READS = {
    "lora": {"lora_up.weight", "lora_down.weight", "lora_mid.weight"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"},
    "lokr": {"lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2"},
    "oft": {"oft_blocks", "oft_diag"},
}
EVERY_KIND = {"alpha", "dora_scale"}
# what makes each loader pick the algorithm (ComfyUI: the first key its `load` looks for; A1111: create_module)
DETECTED_BY = {"lora": "lora_up.weight", "loha": "hada_w1_a", "lokr": "lokr_w1", "oft": "oft_blocks"}

CASES = [  # (algo, network args, layer)
    ("locon", ["use_tucker=true", "conv_dim=4"], "conv"),
    ("loha", [], "linear"), ("loha", [], "conv"), ("loha", ["use_tucker=true", "conv_dim=4"], "conv"),
    ("lokr", ["factor=4"], "linear"), ("lokr", ["factor=4", "decompose_both=true"], "linear"),
    ("lokr", ["full_matrix=true"], "linear"), ("lokr", ["factor=4"], "conv"),
    ("dora", [], "linear"), ("dora", [], "conv"), ("loha", ["dora_wd=true"], "linear"),
    ("oft", [], "linear"), ("oft", [], "conv"),
]


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(24, 32) if kind == "linear" else nn.Conv2d(8, 16, 3, padding=1)


def _adapter(algo, args, layer, rank=4, alpha=2.0):
    from lorakit.lora.lycoris_adapter import LycorisAdapter

    spec = parse(algo, args)
    a = LycorisAdapter(spec, layer, rank, None if algo == "oft" else alpha, lambda: layer.weight.detach())
    torch.manual_seed(2)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return a.eval()


def _rel(a, b) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _kind(tensors) -> str:
    return LF.module_kind(tensors)


def _lycoris_module(tensors: dict, layer: nn.Module, wd_on_out: bool | None = None):
    """LyCORIS' own module made from the file's tensors, as `create_lycoris_from_weights` makes it."""
    from lycoris.modules import get_module, make_module

    sd = {f"m.{k}": v for k, v in tensors.items()}
    return make_module(*get_module(sd, "m"), "m", layer)


@pytest.mark.parametrize("algo,args,kind", CASES, ids=[f"{a}-{'-'.join(x) or 'plain'}-{k}" for a, x, k in CASES])
def test_delta_weight_matches_lycoris(algo, args, kind):
    """The trained module's ΔW and the ΔW lorakit reads back from its file both equal LyCORIS' own
    computation on the same factors (≤ 1e-6 relative), and so does the layer output LyCORIS applies."""
    layer = _layer(kind)
    w = layer.weight.detach()
    adapter = _adapter(algo, args, layer)
    trained = adapter.delta_weight(w)
    tensors = {k: v.detach().clone() for k, v in adapter.kohya_tensors().items()}
    alpha = float(tensors.pop("alpha"))
    read = DeltaModule(layer, _kind(tensors), tensors, alpha).delta_weight(w)
    m = adapter.module
    if algo in ("loha", "lokr"):  # what LyCORIS' forward applies (its merge_to scales twice: see below)
        ref = (m.get_weight(m.shape) * m.scalar).detach()
        if "dora_scale" in tensors:
            from lycoris.functional.general import weight_decompose

            ref = (weight_decompose(w + ref, m.dora_scale, 1, m.wd_on_out) - w).detach()
    else:
        m.org_module = [layer]
        ref = (m.get_merged_weight(1)[0] - w).detach()
    assert _rel(trained, ref) <= 1e-6
    assert _rel(read, ref) <= 1e-6
    assert ref.norm() > 1e-3 * w.norm()  # a real update, not a zero compared with a zero
    # LyCORIS' forward with its module on the layer gives W·x + ΔW·x
    x = torch.randn(3, 24) if kind == "linear" else torch.randn(2, 8, 6, 6)
    base = layer(x).detach()
    m.org_module, m.org_forward = [layer], layer.forward
    m.multiplier = 1.0
    with torch.no_grad():
        out = m(x)
    ours = base + (nn.functional.linear(x, read) if kind == "linear" else layer._conv_forward(x, read, None))
    assert _rel(out - base, ours - base) <= 1e-5


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_get_diff_weight_scales_twice(algo):
    """Pinned: LyCORIS 4.1.3's `get_diff_weight` (its merge_to) multiplies a LoHa's/LoKr's ΔW by alpha/r
    once more than its forward and the loaders do; lorakit follows the forward. With alpha = rank both agree."""
    layer = nn.Linear(64, 96)  # LoKr's second factor 16×24 > 2·rank: low-rank, so alpha/r counts
    m = _adapter(algo, ["factor=4"] if algo == "lokr" else [], layer, rank=4, alpha=2.0).module
    forward = m.get_weight(m.shape) * m.scalar
    assert _rel(m.get_diff_weight()[0], forward * 0.5) <= 1e-6


@pytest.mark.parametrize("algo,args", [("loha", []), ("lokr", ["factor=4"]), ("dora", []), ("oft", []),
                                       ("lokr", ["decompose_both=true", "factor=4"])])
def test_file_keys_are_the_ones_comfyui_and_a1111_read(algo, args):
    layer = _layer("linear")
    tensors = _adapter(algo, args, layer).kohya_tensors()
    kind = {"dora": "lora"}.get(algo, algo)
    keys = set(tensors)
    assert keys <= COMFYUI_READS[kind] | EVERY_KIND
    assert keys <= A1111_READS[kind] | EVERY_KIND
    assert "alpha" in keys and tensors["alpha"].dim() == 0
    detect = DETECTED_BY[kind]
    assert detect in keys or (kind == "lokr" and "lokr_w1_a" in keys)
    if algo == "dora":  # one magnitude per input column: the form A1111 and ComfyUI norm over W + ΔW
        assert tuple(tensors["dora_scale"].shape) == (1, 24)


def test_lycoris_loader_reads_the_files_but_not_column_dora():
    """create_lycoris_from_weights' module maker takes the LoHa/LoKr/OFT files as they are; for DoRA it
    builds per-row magnitudes and cannot take the per-column form the UI loaders apply (pinned)."""
    layer = _layer("linear")
    for algo, args in (("loha", []), ("lokr", ["factor=4"]), ("oft", [])):
        tensors = {k: v.detach() for k, v in _adapter(algo, args, layer).kohya_tensors().items()}
        m = _lycoris_module(tensors, layer)
        assert type(m).__name__ == {"loha": "LohaModule", "lokr": "LokrModule", "oft": "DiagOFTModule"}[algo]
    tensors = {k: v.detach() for k, v in _adapter("dora", [], layer).kohya_tensors().items()}
    with pytest.raises(RuntimeError, match="shape"):
        _lycoris_module(tensors, layer)


def test_oft_delta_against_lycoris_with_a_bound():
    """lorakit's reader applies OFT's bound as LyCORIS and A1111 do: ‖Q‖ ≤ alpha·rows."""
    from lycoris.functional.diag_oft import diff_weight

    torch.manual_seed(3)
    w = torch.randn(32, 24)
    blocks = torch.randn(8, 4, 4)
    for alpha in (0.0, 0.01):
        ours = LF.oft_delta(w, blocks, alpha)
        ref = diff_weight(w, blocks, None, constraint=alpha * 32)
        assert _rel(ours, ref) <= 1e-6
    assert _rel(LF.oft_delta(w, blocks, 0.01), LF.oft_delta(w, blocks, 0.0)) > 0.1  # the bound bites


# --- options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo,args,message", [
    ("lycoris", [], "not an adapter lorakit trains"),
    ("loha", ["factor=4"], "factor does not apply to --network loha"),
    ("lokr", ["bogus=1"], "bogus: unknown"),
    ("lokr", ["factor=four"], "not an integer"),
    ("lokr", ["decompose_both=maybe"], "not true or false"),
    ("loha", ["train_norm=true"], "train_norm: not supported"),
    ("dora", ["wd_on_out=true"], "wd_on_out: not supported"),
    ("oft", ["conv_alpha=2"], "conv_alpha does not apply to --network oft"),
    ("loha", ["rank_dropout=1.5"], "must be in"),
    ("loha", ["factor"], "expected KEY=VALUE"),
])
def test_bad_network_args(algo, args, message):
    with pytest.raises(LoraKitError, match=message) as e:
        parse(algo, args)
    assert "\n" not in str(e.value)


def test_network_args_forms():
    spec = parse("lokr", ["factor=8 decompose_both=true", "use_tucker=1", "conv_dim=4"])
    assert dict(spec.args) == {"factor": 8, "decompose_both": True, "use_tucker": True, "conv_dim": 4}
    assert spec.uses_lycoris and not parse("locon", ["conv_dim=4"]).uses_lycoris
    assert parse("locon", ["use_tucker=true", "conv_dim=4"]).uses_lycoris  # Tucker: LyCORIS' LoCon
    assert parse("dora", []).dora and parse("loha", {"dora_wd": "true"}).dora


def test_dropouts_mean_what_lycoris_means():
    """rank_dropout drops whole rows of ΔW (LyCORIS' definition for its algos), module_dropout skips the
    module for a call, dropout drops entries of ΔW·x; none of them acts outside training."""
    from lorakit.lora.lycoris_adapter import LycorisAdapter

    layer = _layer("linear")
    w = layer.weight.detach()
    a = LycorisAdapter(parse("loha", []), layer, 4, 2.0, lambda: w, rank_dropout=0.5, module_dropout=0.5,
                       dropout=0.5)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    full = a.eval().delta_weight(w)
    torch.manual_seed(0)
    a.train()
    dropped = a.delta_weight(w)
    kept = [torch.equal(d, f) for d, f in zip(dropped, full)]
    zero = [bool((d == 0).all()) for d in dropped]
    assert all(k or z for k, z in zip(kept, zero)) and 0 < sum(zero) < len(zero)
    x = torch.randn(5, 24)
    skipped = sum(a.call_delta(x, 1, lambda: None) is None for _ in range(200))
    assert 60 < skipped < 140  # p = 0.5 of 200 calls
    h = a.drop(torch.ones(1000))
    assert set(h.unique().tolist()) == {0.0, 2.0}
    a.eval()
    assert all(a.call_delta(x, 1, lambda: None) is not None for _ in range(20))


def test_toml_and_print_config_round_trip(tmp_path):
    from lorakit.train.config import TrainConfig

    toml = tmp_path / "c.toml"
    toml.write_text('[network]\nnetwork = "lokr"\nnetwork_args = ["factor=8", "decompose_both=true"]\n'
                    'conv_rank = 4\n')
    cfg = TrainConfig.from_toml(toml)
    spec = cfg.network_spec()
    assert spec.algo == "lokr" and dict(spec.args) == {"factor": 8, "decompose_both": True, "conv_dim": 4}
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(again).network_spec() == spec
    table = tmp_path / "t.toml"
    table.write_text('[network]\nnetwork = "loha"\nnetwork_args = { use_tucker = true, conv_dim = 2 }\n')
    assert dict(TrainConfig.from_toml(table).network_spec().args) == {"use_tucker": True, "conv_dim": 2}
