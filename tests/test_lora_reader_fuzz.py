"""The LoRA reader against files from strangers: hypothesis writes broken, hostile and odd
safetensors files, and every one must end in a LoRA that merges to the hand-computed result or in
a one-line LoraKitError naming the file; never another exception, a hang or a wrong merge.

Bounded (max_examples, deadline) and derandomized, so it runs in seconds and the same in CI.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from lorakit.errors import LoraKitError
from lorakit.formats import load_lora, load_network
from lorakit.lora import LoRANetwork

from conftest import parts_of

FUZZ = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

DTYPES = ["F16", "F32", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "XYZ", "", 7]


@pytest.fixture(scope="module")
def tiny_parts():
    from lorakit.models.tiny import tiny_pipeline

    return parts_of(tiny_pipeline("sd1"), "sd1")


@pytest.fixture(scope="module")
def valid(tiny_parts):
    """Two real kohya modules of the tiny SD1 model: a template the strategies break."""
    net = LoRANetwork.create(tiny_parts, rank=2, alpha=1.0, preset="attn")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    modules = dict(list(net.kohya_modules().items())[:2])
    tensors = {f"{n}.{k}": v.detach().float().contiguous() for n, m in modules.items() for k, v in m.items()}
    return tensors


def _file(tmp_path, data: bytes):
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(data)
    return p


def _raw(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _check(path, parts):
    """The property: a LoraKitError of one line naming the file, or a LoRA that merges exactly."""
    try:
        lf = load_lora(path)
        net = load_network(parts, lf)
    except LoraKitError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 600, text
        assert str(path) in text or exc.path is None or str(path) == exc.path, text
        return None
    return _assert_exact_merge(net, lf, parts)


def _assert_exact_merge(net, lf, parts):
    index = parts.index()
    before = {}
    for name in lf.modules:
        layer = index[name].module
        before[name] = layer.weight.detach().clone()
    net.merge()
    try:
        for name, t in lf.modules.items():
            layer = index[name].module
            down = t["lora_down.weight"].float().flatten(1)
            up = t["lora_up.weight"].float().flatten(1)
            rank = down.shape[0]
            alpha = float(t["alpha"]) if "alpha" in t else rank
            want = before[name] + (alpha / rank) * (up @ down).reshape(before[name].shape)
            assert torch.isfinite(layer.weight).all()
            torch.testing.assert_close(layer.weight.detach(), want, rtol=1e-4, atol=1e-5)
    finally:
        net.unmerge()
        net.remove()
    return True


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_files(tmp_path, tiny_parts, valid, cut):
    blob = save(valid)
    path = _file(tmp_path, blob[: cut % len(blob)])
    assert _check(path, tiny_parts) is None


@FUZZ
@given(data=st.data())
def test_garbage_in_the_header(tmp_path, tiny_parts, valid, data):
    blob = bytearray(save(valid))
    (n,) = struct.unpack("<Q", blob[:8])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, 8 + n - 1))
        blob[i] = data.draw(st.integers(0, 255))
    path = _file(tmp_path, bytes(blob))
    _check(path, tiny_parts)  # a flip inside a value may leave a valid LoRA: then it must merge exactly


@FUZZ
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.integers(2**20, 2**40), st.sampled_from([0, 1, 2**63])))
def test_header_length_beyond_the_file(tmp_path, tiny_parts, valid, length):
    blob = save(valid)
    (n,) = struct.unpack("<Q", blob[:8])
    if length == n:
        return
    path = _file(tmp_path, struct.pack("<Q", length) + blob[8:])
    assert _check(path, tiny_parts) is None


@pytest.mark.parametrize("header", [
    b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # a nesting bomb for the JSON parser
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], '
    b'"data_offsets": [0, 4]}}',  # one name twice
    b'{"__metadata__": {"x": "' + b"y" * 1000 + b'"}}',  # metadata and no tensors
])
def test_hostile_headers(tmp_path, tiny_parts, header):
    path = _file(tmp_path, struct.pack("<Q", len(header)) + header + b"\0" * 4)
    assert _check(path, tiny_parts) is None


@FUZZ
@given(junk=st.binary(min_size=0, max_size=400))
def test_random_bytes(tmp_path, tiny_parts, junk):
    assert _check(_file(tmp_path, junk), tiny_parts) is None


@FUZZ
@given(data=st.data())
def test_declared_dtypes_shapes_and_offsets(tmp_path, tiny_parts, valid, data):
    """Each entry's dtype, shape or offsets rewritten: sizes far beyond the file, negative or
    huge dimensions, dtypes that do not exist or are not floating point."""
    blob = save(valid)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    body = blob[8 + n:]
    key = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    what = data.draw(st.sampled_from(["dtype", "shape", "offsets"]))
    if what == "dtype":
        header[key]["dtype"] = data.draw(st.sampled_from(DTYPES))
    elif what == "shape":
        header[key]["shape"] = data.draw(st.lists(st.one_of(st.integers(-3, 40), st.just(2**40), st.just(2**62)),
                                                  max_size=5))
    else:
        header[key]["data_offsets"] = data.draw(st.lists(st.one_of(st.integers(-5, len(body) + 64),
                                                                   st.just(2**50)), min_size=0, max_size=3))
    path = _file(tmp_path, _raw(header, body))
    _check(path, tiny_parts)


@FUZZ
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                            max_size=2)),
       as_metadata=st.booleans())
def test_metadata_values_that_are_not_strings(tmp_path, tiny_parts, valid, value, as_metadata):
    blob = save(valid, {"ss_network_dim": "2"})
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    if as_metadata:
        header["__metadata__"]["ss_network_alpha"] = value
    else:
        header["__metadata__"] = value
    path = _file(tmp_path, _raw(header, blob[8 + n:]))
    merged = _check(path, tiny_parts)
    if as_metadata or value not in (None, {}):  # no metadata at all (null or {}) is a valid file
        assert merged is None


def _tensors_strategy(valid):
    names = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in valid})

    @st.composite
    def build(draw):
        out = dict(valid)
        name = draw(st.sampled_from(names))
        down, up = out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"]
        case = draw(st.sampled_from(["alpha_shape", "alpha_value", "rank_mismatch", "rank_zero", "dtype",
                                     "nan", "extra_dim", "transpose"]))
        if case == "alpha_shape":
            out[f"{name}.alpha"] = torch.ones(draw(st.lists(st.integers(0, 3), min_size=1, max_size=3)))
            if out[f"{name}.alpha"].numel() == 1:  # a [1] or [1, 1] alpha is a scalar in every loader
                return out, True
        elif case == "alpha_value":
            v = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
            out[f"{name}.alpha"] = torch.tensor(v)
        elif case == "rank_mismatch":
            r = draw(st.integers(1, 5).filter(lambda r: r != down.shape[0]))
            out[f"{name}.lora_up.weight"] = torch.randn(up.shape[0], r)
        elif case == "rank_zero":
            out[f"{name}.lora_down.weight"] = torch.zeros(0, down.shape[1])
            out[f"{name}.lora_up.weight"] = torch.zeros(up.shape[0], 0)
        elif case == "dtype":
            dt = draw(st.sampled_from([torch.int64, torch.int8, torch.uint8, torch.bool, torch.float64,
                                       torch.bfloat16, torch.float16]))
            key = draw(st.sampled_from([f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"]))
            out[key] = out[key].to(dt)
            if dt.is_floating_point:
                return out, True  # any float dtype is fine: it merges in fp32
        elif case == "nan":
            key = draw(st.sampled_from([f"{name}.lora_down.weight", f"{name}.lora_up.weight"]))
            t = out[key].clone()
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
            out[key] = t
        elif case == "extra_dim":
            out[f"{name}.lora_down.weight"] = down.reshape(*down.shape, 1)
        else:
            out[f"{name}.lora_down.weight"] = down.t().contiguous()
            out[f"{name}.lora_up.weight"] = up.t().contiguous()
        return out, False
    return build()


@FUZZ
@given(data=st.data())
def test_wrong_tensors_in_a_well_formed_file(tmp_path, tiny_parts, valid, data):
    """Well-formed safetensors, wrong LoRA: alpha not a scalar or not finite, ranks that do not
    match, rank 0, integer tensors, NaN/Inf, extra dimensions, transposed factors."""
    tensors, may_load = data.draw(_tensors_strategy(valid))
    path = tmp_path / "t.safetensors"
    path.write_bytes(save({k: v.contiguous() for k, v in tensors.items()}))
    merged = _check(path, tiny_parts)
    if not may_load:
        assert merged is None


def test_one_layer_under_two_spellings_is_refused(tmp_path, tiny_parts, valid):
    """kohya names and diffusers names for the same layer in one file: applying both would double it,
    applying one would drop the other."""
    name = sorted(k for k in valid if k.endswith("lora_down.weight"))[0].rsplit(".", 2)[0]
    index = tiny_parts.index()
    target = index[name]
    other = [n for n, t in index.items() if t.name == target.name and n != name and n.startswith("lora_")]
    if other:  # a second kohya spelling the model accepts
        doubled = dict(valid)
        for k in ("lora_down.weight", "lora_up.weight", "alpha"):
            doubled[f"{other[0]}.{k}"] = valid[f"{name}.{k}"].clone()
        path = tmp_path / "twice.safetensors"
        path.write_bytes(save(doubled))
        with pytest.raises(LoraKitError, match="same layer"):
            load_network(tiny_parts, load_lora(path))
    mixed = dict(valid)  # the diffusers spelling of the same module next to the kohya one
    from lorakit.formats.paths import kohya_to_path

    _, path_name = kohya_to_path(name)
    mixed[f"unet.{path_name}.lora.down.weight"] = valid[f"{name}.lora_down.weight"].clone()
    mixed[f"unet.{path_name}.lora.up.weight"] = valid[f"{name}.lora_up.weight"].clone()
    path = tmp_path / "mixed.safetensors"
    path.write_bytes(save(mixed))
    with pytest.raises(LoraKitError) as err:
        load_network(tiny_parts, load_lora(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_template_itself_merges_exactly(tmp_path, tiny_parts, valid):
    """The property can fail: the unbroken file loads and merges to the hand-computed weights."""
    path = tmp_path / "ok.safetensors"
    path.write_bytes(save(valid))
    assert _check(path, tiny_parts) is True
