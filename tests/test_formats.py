"""kohya files: round trip, metadata, sshs hashes (recomputed here from A1111's/kohya's recipe),
inspect and convert through the CLI, and every bad input as a one-line error with exit code 2."""

import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from lorakit.cli import main
from lorakit.errors import LoraKitError
from lorakit.formats import (build_metadata, detect_family, detect_format, file_hashes, inspect_lora, load_lora,
                             load_network, save_lora)
from lorakit.formats.detect import family_candidates
from lorakit.lora import LoRANetwork

from conftest import parts_of


def _random_net(parts, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0, seed=0):
    net = LoRANetwork.create(parts, rank=rank, alpha=alpha, preset="full", conv_rank=conv_rank,
                             conv_alpha=conv_alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def _big_modules(n=3, rank=64, width=2048):
    """Enough bytes (> 1.1 MiB) for the legacy hash to read real data at 0x100000."""
    g = torch.Generator().manual_seed(5)
    return {f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn{i % 2 + 1}_to_q{'' if i < 2 else 'x'}":
            {"lora_down.weight": torch.randn(rank, width, generator=g),
             "lora_up.weight": torch.randn(320, rank, generator=g), "alpha": torch.tensor(8.0)}
            for i in range(n)}


# A1111 modules/hashes.py addnet_hash_safetensors and kohya's addnet_hash_legacy, written out again
def _a1111_model_hash(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(n + 8)
        return hashlib.sha256(f.read()).hexdigest()


def _kohya_legacy_hash(tensors, metadata):
    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    return hashlib.sha256(data[0x100000:0x100000 + 0x10000]).hexdigest()[:8]


def test_kohya_round_trip_tensors_and_metadata(tiny_sd1, tmp_path):
    parts = parts_of(tiny_sd1, "sd1")
    net = _random_net(parts)
    modules = net.kohya_modules()
    path = tmp_path / "dog.safetensors"
    md = build_metadata(modules, family="sd1", comment="a test", tag_frequency={"5_dog": {"dog": 12, "sks": 12}},
                        training={"learning_rate": 1e-4, "ss_steps": 300, "seed": 42})
    save_lora(path, modules, md, dtype=torch.float32)
    lf = load_lora(path)
    assert lf.format == "kohya" and lf.family == "sd1" and len(lf) == len(modules) == 129
    assert lf.parts() == {"unet": 117, "te": 12}
    for name, tensors in modules.items():
        assert set(lf.modules[name]) == {"lora_down.weight", "lora_up.weight", "alpha"}
        for sub, t in tensors.items():
            assert torch.equal(lf.modules[name][sub], t.float()), (name, sub)
    raw = load_file(str(path))
    assert raw[f"{name}.alpha"].dim() == 0 and raw[f"{name}.alpha"].dtype == torch.float32
    m = lf.metadata
    assert m["ss_network_module"] == "networks.lora"
    assert (m["ss_network_dim"], m["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(m["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    assert (m["ss_base_model_version"], m["ss_v2"]) == ("sd_v1", "False")
    assert m["ss_output_name"] == "dog" and m["ss_training_comment"] == "a test"
    assert json.loads(m["ss_tag_frequency"]) == {"5_dog": {"dog": 12, "sks": 12}}
    assert (m["ss_learning_rate"], m["ss_steps"], m["ss_seed"]) == ("0.0001", "300", "42")
    assert m["modelspec.sai_model_spec"] == "1.0.0"
    assert m["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert m["modelspec.implementation"] == "diffusers"
    assert m["modelspec.resolution"] == "512x512" and m["modelspec.prediction_type"] == "epsilon"
    assert m["modelspec.title"] == "dog" and len(m["modelspec.date"]) == 19

    # fp16 (the default) keeps alpha exact in fp32 and the factors as their fp16 rounding
    save_lora(tmp_path / "half.safetensors", modules, md)
    half = load_lora(tmp_path / "half.safetensors")
    assert half.dtype == torch.float16
    assert torch.equal(half.modules[name]["lora_up.weight"], modules[name]["lora_up.weight"].half())
    assert half.alphas()[name] == 2.0 and half.ranks()[name] == 4


@pytest.mark.parametrize("family,version,arch,impl,res", [
    ("sd2", "sd_v2", "stable-diffusion-v2-512/lora", "diffusers", "512x512"),
    ("sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models",
     "1024x1024")])
def test_metadata_per_family(family, version, arch, impl, res):
    mods = _big_modules(1, rank=2, width=8)
    md = build_metadata(mods, family=family)
    assert (md["ss_base_model_version"], md["modelspec.architecture"], md["modelspec.implementation"],
            md["modelspec.resolution"]) == (version, arch, impl, res)
    v = build_metadata(mods, family="sd2", v_prediction=True)
    assert (v["ss_base_model_version"], v["modelspec.architecture"], v["modelspec.prediction_type"],
            v["ss_v2"]) == ("sd_v2_v", "stable-diffusion-v2-768-v/lora", "v", "True")


def test_sshs_hashes_match_a1111_and_survive_metadata_edits(tmp_path):
    modules = _big_modules()
    path = tmp_path / "big.safetensors"
    save_lora(path, modules, {"ss_training_comment": "x"}, family="sd1", dtype=torch.float32)
    assert path.stat().st_size > 0x110000
    tensors = load_file(str(path))
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        stored = json.loads(f.read(n))["__metadata__"]
    assert stored["sshs_model_hash"] == _a1111_model_hash(path)
    assert stored["sshs_legacy_hash"] == _kohya_legacy_hash(tensors, stored)
    assert stored["sshs_legacy_hash"] != hashlib.sha256(b"").hexdigest()[:8]  # it did hash real bytes
    assert file_hashes(path) == {k: stored[k] for k in ("sshs_model_hash", "sshs_legacy_hash")}

    # an editor rewrites the file with other metadata: the data bytes, hence the model hash, stay
    edited = dict(stored, **{"modelspec.title": "renamed", "modelspec.author": "someone"})
    save_file(tensors, str(path), metadata=edited)
    assert _a1111_model_hash(path) == stored["sshs_model_hash"]
    assert file_hashes(path) == {k: stored[k] for k in ("sshs_model_hash", "sshs_legacy_hash")}
    report = inspect_lora(path)
    assert report["hashes"]["all_match"] is True
    assert report["metadata"]["modelspec.title"] == "renamed"
    # even an ss_ edit keeps the model hash (kohya's legacy hash covers ss_ keys, so it moves)
    save_file(tensors, str(path), metadata=dict(stored, ss_training_comment="changed comment, longer"))
    assert file_hashes(path)["sshs_model_hash"] == stored["sshs_model_hash"]
    # a changed tensor is seen
    tensors[next(k for k in tensors if k.endswith("lora_down.weight"))][0, 0] += 1
    save_file(tensors, str(path), metadata=stored)
    assert inspect_lora(path)["hashes"]["match"]["sshs_model_hash"] is False


def test_save_recomputes_network_fields_and_keeps_the_rest(tmp_path):
    modules = _big_modules(2, rank=3, width=8)
    stale = {"ss_network_dim": "128", "ss_network_alpha": "64.0", "ss_learning_rate": "0.001",
             "ss_output_name": "kept", "sshs_model_hash": "stale", "ss_network_args": '{"preset": "full"}'}
    save_lora(tmp_path / "x.safetensors", modules, stale)
    md = load_lora(tmp_path / "x.safetensors").metadata
    assert (md["ss_network_dim"], md["ss_network_alpha"], md["ss_learning_rate"]) == ("3", "8.0", "0.001")
    assert md["ss_output_name"] == "kept" and json.loads(md["ss_network_args"]) == {"preset": "full"}
    assert md["sshs_model_hash"] == _a1111_model_hash(tmp_path / "x.safetensors")


def test_detect_format_and_family():
    assert detect_format(["lora_unet_a.lora_down.weight"], {}) == "kohya"
    assert detect_format(["lora_unet_a.hada_w1_a"], {}) == "lycoris"
    assert detect_format(["unet.a.lora_A.weight"], {}) == "diffusers"
    assert detect_format(["unet.a.processor.to_q_lora.down.weight"], {}) == "diffusers"
    assert detect_format(["base_model.model.a.lora_A.weight"], {}) == "peft"
    assert detect_format(["model.diffusion_model.out.2.weight"], {}) == "checkpoint"

    def lora(in_f):
        return {"lora_down.weight": torch.zeros(4, in_f), "lora_up.weight": torch.zeros(320, 4)}

    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert detect_family({k: lora(768)}) == "sd1"
    assert detect_family({k: lora(1024)}) == "sd2"
    assert detect_family({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": lora(2048)}) == "sdxl"
    te2 = {"lora_te2_text_model_encoder_layers_0_mlp_fc1": lora(8)}  # SDXL's and SD3's CLIP-G alike
    assert detect_family(te2) is None and family_candidates(te2) == ("sdxl", "sd3")
    assert detect_family({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": lora(1024)}) == "sd2"
    assert detect_family({k: lora(32)}) is None  # a tiny model: undecidable
    assert family_candidates({k: lora(32)}) == ("sd1", "sd2")  # SDXL's first down block has no attention
    assert detect_family({k: lora(768)}, {"ss_base_model_version": "sdxl_base_v1-0"}) == "sdxl"  # metadata first
    assert detect_family({k: lora(32)}, {"modelspec.architecture": "stable-diffusion-v2-768-v/lora"}) == "sd2"


def test_old_and_peft_style_diffusers_keys(tmp_path):
    g = torch.Generator().manual_seed(1)

    def r(*s):
        return torch.randn(*s, generator=g)

    blk = "down_blocks.0.attentions.0.transformer_blocks.0"
    state = {
        f"unet.{blk}.attn1.processor.to_q_lora.down.weight": r(4, 320),
        f"unet.{blk}.attn1.processor.to_q_lora.up.weight": r(320, 4),
        f"unet.{blk}.attn2.processor.to_out_lora.down.weight": r(4, 320),
        f"unet.{blk}.attn2.processor.to_out_lora.up.weight": r(320, 4),
        f"unet.{blk}.ff.net.2.lora.down.weight": r(2, 1280),
        f"unet.{blk}.ff.net.2.lora.up.weight": r(320, 2),
        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj.lora_linear_layer.down.weight": r(4, 768),
        "text_encoder.text_model.encoder.layers.3.self_attn.q_proj.lora_linear_layer.up.weight": r(768, 4),
        "text_encoder.text_model.encoder.layers.3.self_attn.to_v_lora.down.weight": r(4, 768),
        "text_encoder.text_model.encoder.layers.3.self_attn.to_v_lora.up.weight": r(768, 4),
    }
    save_file(state, str(tmp_path / "old.safetensors"))
    lf = load_lora(tmp_path / "old.safetensors")
    assert lf.format == "diffusers" and lf.family == "sd1"  # the text encoder is 768 wide
    pre = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    assert set(lf.modules) == {pre + "attn1_to_q", pre + "attn2_to_out_0", pre + "ff_net_2",
                               "lora_te_text_model_encoder_layers_3_self_attn_q_proj",
                               "lora_te_text_model_encoder_layers_3_self_attn_v_proj"}
    assert torch.equal(lf.modules[pre + "ff_net_2"]["lora_down.weight"], state[f"unet.{blk}.ff.net.2.lora.down.weight"])
    assert lf.alphas()[pre + "ff_net_2"] == 2.0  # no alpha anywhere: alpha = rank

    # PEFT keys, alphas from diffusers' metadata (alpha_pattern) and from `.alpha` keys
    peft = {f"unet.{blk}.attn2.to_k.lora_A.weight": r(4, 768), f"unet.{blk}.attn2.to_k.lora_B.weight": r(320, 4),
            f"unet.{blk}.attn2.to_v.lora_A.weight": r(8, 768), f"unet.{blk}.attn2.to_v.lora_B.weight": r(320, 8),
            "text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight": r(4, 768),
            "text_encoder.encoder.layers.0.mlp.fc1.lora_B.weight": r(3072, 4),
            "text_encoder.encoder.layers.0.mlp.fc1.alpha": torch.tensor(3.0)}
    meta = {"lora_adapter_metadata": json.dumps({
        "unet.r": 4, "unet.lora_alpha": 2, "unet.rank_pattern": {f"{blk}.attn2.to_v": 8},
        "unet.alpha_pattern": {f"{blk}.attn2.to_v": 16}, "unet.target_modules": ["to_k", "to_v"]})}
    save_file(peft, str(tmp_path / "peft.safetensors"), metadata=meta)
    lf = load_lora(tmp_path / "peft.safetensors")
    assert lf.family == "sd1"  # attn2.to_k reads 768-wide context
    assert lf.alphas() == {pre + "attn2_to_k": 2.0, pre + "attn2_to_v": 16.0,
                           "lora_te_text_model_encoder_layers_0_mlp_fc1": 3.0}


# ---------------------------------------------------------------------------------------------
# CLI: inspect, convert, and every bad input → exit code 2 with one line naming the file

def test_cli_inspect_json_and_table(tiny_sd1, tmp_path, capsys):
    net = _random_net(parts_of(tiny_sd1, "sd1"))
    path = tmp_path / "a.safetensors"
    save_lora(path, net.kohya_modules(), family="sd1")
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["family"], report["modules"]) == ("kohya", "sd1", 129)
    assert report["parts"] == {"unet": 117, "te": 12} and report["conv_modules"] == 26
    assert report["ranks"] == {"min": 2, "max": 4, "values": [2, 4]}
    assert report["alphas"] == {"min": 1.0, "max": 2.0, "values": [1.0, 2.0]}
    assert report["dtype"] == "float16" and report["file_size"] == path.stat().st_size
    assert report["hashes"]["all_match"] is True
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sd1" in out and "ss_network_dim" in out and "matches" in out


def test_cli_convert_round_trip(tiny_sd1, tmp_path, capsys):
    net = _random_net(parts_of(tiny_sd1, "sd1"))
    src = tmp_path / "a.safetensors"
    save_lora(src, net.kohya_modules(), {"ss_learning_rate": "0.0002"}, dtype=torch.float32)
    assert main(["convert", str(src), "--to", "diffusers", "--out", str(tmp_path / "d.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "d.safetensors"), "--to", "peft", "--out", str(tmp_path / "p")]) == 0
    assert main(["convert", str(tmp_path / "p"), "--to", "kohya", "--out", str(tmp_path / "k.safetensors"),
                 "--dtype", "bf16"]) == 0
    a, d, p, k = (load_lora(tmp_path / x) for x in ("a.safetensors", "d.safetensors", "p", "k.safetensors"))
    assert (d.format, p.format, k.format, k.dtype) == ("diffusers", "peft", "kohya", torch.bfloat16)
    def folded_up(t):  # diffusers/PEFT carry alpha/r inside lora_up, alpha = rank (see peft_common.folded)
        return t["lora_up.weight"] * (float(t["alpha"]) / t["lora_down.weight"].shape[0])

    for other in (d, p):
        assert set(other.modules) == set(a.modules)
        for name, t in a.modules.items():
            o = other.modules[name]
            assert torch.equal(o["lora_down.weight"], t["lora_down.weight"]), name
            assert torch.equal(o["lora_up.weight"], folded_up(t)), name  # scales 1/2: exact
            assert float(o["alpha"]) == t["lora_down.weight"].shape[0]
    assert k.metadata["ss_learning_rate"] == "0.0002"  # metadata travels through the conversions
    assert "lora_adapter_metadata" in d.metadata and "lora_adapter_metadata" not in k.metadata
    assert main(["inspect", str(tmp_path / "p"), "--json"]) == 0
    capsys.readouterr()
    for name, t in a.modules.items():
        assert torch.equal(k.modules[name]["lora_up.weight"], folded_up(t).bfloat16())


def _write_header(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def _bad_files(tmp):
    """name → (path, words the error must contain)."""
    d = torch.zeros(4, 8)
    u = torch.zeros(16, 4)
    good = {"lora_unet_x_to_q.lora_down.weight": d, "lora_unet_x_to_q.lora_up.weight": u,
            "lora_unet_x_to_q.alpha": torch.tensor(4.0)}
    cases = {}
    p = tmp / "text.safetensors"
    p.write_text("this is just some text, not tensors at all\n" * 3)
    cases["not_safetensors"] = (p, "not a safetensors file")
    p = tmp / "empty.safetensors"
    p.write_bytes(b"")
    cases["empty"] = (p, "empty file")
    blob = save(good)
    p = tmp / "truncated.safetensors"
    p.write_bytes(blob[: len(blob) - 40])
    cases["truncated"] = (p, "truncated")
    p = tmp / "short_header.safetensors"
    p.write_bytes(blob[:30])
    cases["header_cut"] = (p, "truncated")
    p = tmp / "corrupt.safetensors"
    _write_header(p, b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, oops', b"\0" * 4)
    cases["corrupt_header"] = (p, "corrupt")
    p = tmp / "unknown.safetensors"
    save_file({**good, "lora_unet_x_to_q.hada_w9": d.clone(), "bundle_emb.x": d.clone()}, str(p))
    cases["unknown_keys"] = (p, "unknown key(s): bundle_emb.x, lora_unet_x_to_q.hada_w9")
    p = tmp / "partner.safetensors"
    save_file({"lora_unet_x_to_q.lora_down.weight": d, "lora_unet_x_to_q.alpha": torch.tensor(1.0)}, str(p))
    cases["missing_partner"] = (p, "has lora_down.weight but no lora_up.weight")
    p = tmp / "shape.safetensors"
    save_file({"lora_unet_x_to_q.lora_down.weight": d, "lora_unet_x_to_q.lora_up.weight": torch.zeros(16, 3)}, str(p))
    cases["shape_mismatch"] = (p, "lora_up (16, 3) does not match lora_down (4, 8)")
    p = tmp / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(2)}, str(p))
    cases["checkpoint"] = (p, "not a LoRA")
    p = tmp / "diffusers_partner.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": d}, str(p))
    cases["diffusers_partner"] = (p, "no lora_up partner")
    p = tmp / "lora.ckpt"
    torch.save(good, p)
    cases["pickle"] = (p, "pickles that can run code")
    p = tmp / "folder"
    p.mkdir()
    cases["folder"] = (p, "not a PEFT adapter")
    cases["missing"] = (tmp / "nope.safetensors", "no such file")
    return cases


CASES = ["not_safetensors", "empty", "truncated", "header_cut", "corrupt_header", "unknown_keys",
         "missing_partner", "shape_mismatch", "checkpoint", "diffusers_partner", "pickle", "folder", "missing"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    path, words = _bad_files(tmp_path)[case]
    for argv in (["inspect", str(path)], ["convert", str(path), "--to", "diffusers", "--out", str(tmp_path / "o")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("error: ") and str(path) in err, err
        assert words in err, err
    with pytest.raises(LoraKitError):
        load_lora(path)


def test_pickle_only_when_allowed(tmp_path):
    path, _ = _bad_files(tmp_path)["pickle"]
    lf = load_lora(path, allow_pickle=True)
    assert lf.ranks() == {"lora_unet_x_to_q": 4}


def test_unwritable_output_and_bad_options(tmp_path, capsys):
    src = tmp_path / "a.safetensors"
    save_lora(src, _big_modules(1, rank=2, width=8))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for fmt in ("kohya", "diffusers", "peft"):
        out = blocker / ("sub" if fmt == "peft" else "sub.safetensors")
        capsys.readouterr()
        assert main(["convert", str(src), "--to", fmt, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(out) in err and "cannot write" in err, err
    assert main(["convert", str(src), "--to", "onnx", "--out", str(tmp_path / "x")]) == 2
    assert main(["convert", str(src), "--to", "kohya", "--out", str(src)]) == 2
    assert main(["convert", str(src), "--to", "kohya", "--out", str(tmp_path / "y"), "--dtype", "fp8"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "file"]  # no stray temp files


def test_lycoris_to_diffusers_is_refused(tmp_path, capsys):
    loha = {"lora_unet_x_to_q": {"hada_w1_a": torch.zeros(16, 2), "hada_w1_b": torch.zeros(2, 8),
                                 "hada_w2_a": torch.zeros(16, 2), "hada_w2_b": torch.zeros(2, 8),
                                 "alpha": torch.tensor(1.0)}}
    save_lora(tmp_path / "loha.safetensors", loha)
    assert load_lora(tmp_path / "loha.safetensors").format == "lycoris"
    assert main(["convert", str(tmp_path / "loha.safetensors"), "--to", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "is LoHa: peft files hold plain LoRA only" in capsys.readouterr().err


def test_load_network_checks_family_and_names(tiny_sd1, tmp_path):
    parts = parts_of(tiny_sd1, "sd1")
    net = _random_net(parts)
    modules = net.kohya_modules()
    save_lora(tmp_path / "xl.safetensors", modules, {"ss_base_model_version": "sdxl_base_v1-0"})
    with pytest.raises(LoraKitError, match="this LoRA is for SDXL, the model is SD1"):
        load_network(parts, tmp_path / "xl.safetensors")
    extra = dict(modules, lora_unet_down_blocks_9_attentions_0_proj_in=modules[next(iter(modules))])
    save_lora(tmp_path / "extra.safetensors", extra)
    with pytest.raises(LoraKitError, match=r"1 of 130 modules are not in the model: lora_unet_down_blocks_9"):
        load_network(parts, tmp_path / "extra.safetensors")
    save_lora(tmp_path / "ok.safetensors", modules, dtype=torch.float32)
    loaded = load_network(parts, tmp_path / "ok.safetensors", multiplier=0.5)
    assert len(loaded) == 129 and loaded.multiplier == 0.5


def test_save_refuses_what_it_could_not_read_back(tmp_path):
    good = {"lora_down.weight": torch.zeros(2, 8), "lora_up.weight": torch.zeros(8, 2)}
    with pytest.raises(LoraKitError, match="not a kohya name"):
        save_lora(tmp_path / "a.safetensors", {"unet_down_blocks_0": good})
    with pytest.raises(LoraKitError, match="rank mismatch"):
        save_lora(tmp_path / "a.safetensors", {"lora_unet_x": dict(good, **{"lora_up.weight": torch.zeros(8, 3)})})
    with pytest.raises(LoraKitError, match="no modules"):
        save_lora(tmp_path / "a.safetensors", {})
    assert not list(tmp_path.iterdir())


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        save_lora(tmp_path / "a.safetensors", _big_modules(1, rank=2, width=8))
        save_lora(tmp_path / "p", _big_modules(1, rank=2, width=8), format="peft")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o755
