"""resize / merge / extract through files and the CLI: results, metadata, hashes, one-line errors."""

import copy

import pytest
import torch

from lorakit.ops import algebra as algebra_ops
from lorakit.cli import main
from lorakit.formats import file_hashes, load_lora, save_lora
from lorakit.lora import LoRANetwork, select
from lorakit.lora import functional as LF
from lorakit.models.tiny import tiny_pipeline

from conftest import parts_of


def random_lora(parts, path, rank=8, alpha=4.0, seed=0, conv_rank=None, family="sd1"):
    torch.manual_seed(seed)
    net = LoRANetwork.create(parts, rank=rank, alpha=alpha, conv_rank=conv_rank,
                             preset="full" if conv_rank else "transformer")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    save_lora(path, net.kohya_modules(), {"ss_training_comment": "original"}, family=family, dtype=torch.float32)
    return load_lora(path)


def delta(m):
    down = m["lora_down.weight"].double()
    shape = (m["lora_up.weight"].shape[0], *down.shape[1:])
    return LF.lora_delta(m["lora_up.weight"].double(), down, float(m["alpha"]), shape).reshape(shape[0], -1)


def best(d, k):
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    return u[:, :k] * s[:k] @ vh[:k]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline("sd1")


@pytest.fixture(scope="module")
def files(sd1, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    parts = parts_of(sd1, "sd1")
    a = random_lora(parts, d / "a.safetensors", rank=8, alpha=4, conv_rank=4)
    b = random_lora(parts, d / "b.safetensors", rank=6, alpha=6, seed=1)
    xl = random_lora(parts_of(tiny_pipeline("sdxl"), "sdxl"), d / "xl.safetensors", family="sdxl")
    junk = d / "model.safetensors"
    save_st = __import__("safetensors.torch", fromlist=["save_file"]).save_file
    save_st({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, str(junk))
    g = torch.Generator().manual_seed(5)
    loha = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": {
        k: torch.randn(*shape, generator=g) for k, shape in
        (("hada_w1_a", (32, 2)), ("hada_w1_b", (2, 32)), ("hada_w2_a", (32, 2)), ("hada_w2_b", (2, 32)))}}
    loha_path = save_lora(d / "loha.safetensors", loha, {}, family="sd1")
    oft = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": {
        "oft_blocks": torch.randn(4, 8, 8, generator=g) * 0.1, "alpha": torch.tensor(0.0)}}
    oft_path = save_lora(d / "oft.safetensors", oft, {}, family="sd1")
    return {"a": a, "b": b, "xl": xl, "junk": junk, "dir": d, "loha": loha_path, "oft": oft_path}


def test_resize_cli_writes_optimal_truncation_with_new_metadata_and_hashes(files, capsys):
    out = files["dir"] / "a4.safetensors"
    assert main(["resize", files["a"].path, "--rank", "3", "--conv-rank", "2", "--out", str(out),
                 "--dtype", "fp32", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in printed and "Frobenius" in printed
    lf = load_lora(out)
    assert set(lf.modules) == set(files["a"].modules)
    for name, m in files["a"].modules.items():
        new = lf.modules[name]
        k = 2 if m["lora_down.weight"].shape[-1] == 3 else 3
        assert new["lora_down.weight"].shape[0] == k
        assert float(new["alpha"]) / k == pytest.approx(float(m["alpha"]) / m["lora_down.weight"].shape[0])
        assert rel(delta(new), best(delta(m), k)) <= 1e-5
    md = lf.metadata
    assert md["ss_network_dim"] == "3" and md["ss_network_alpha"] == "1.5"
    assert "resized from rank 8" in md["ss_training_comment"] and "original" in md["ss_training_comment"]
    assert md["sshs_model_hash"] == file_hashes(out)["sshs_model_hash"]
    assert md["sshs_model_hash"] != files["a"].metadata["sshs_model_hash"]


def test_resize_dynamic_api(files):
    res = algebra_ops.resize(files["b"].path, dynamic="sv_fro:0.5")
    assert res.path is None and all(1 <= r <= 6 for r in res.ranks().values())
    assert all(i.fro_retained >= 0.5 for i in res.infos.values())
    out = files["dir"] / "dynamic.safetensors"
    res = algebra_ops.resize(files["b"].path, dynamic="sv_fro:0.5", out=out)
    md = load_lora(out).metadata
    assert len(set(res.ranks().values())) > 1
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("Dynamic", "Dynamic")  # as kohya writes them


def test_merge_concat_is_exact_and_projection_optimal(files, capsys):
    a, b = files["a"], files["b"]
    out = files["dir"] / "ab.safetensors"
    assert main(["merge", "--lora", f"{a.path}:0.7", "--lora", f"{b.path}:-0.4", "--out", str(out),
                 "--dtype", "fp32"]) == 0
    lf = load_lora(out)
    assert set(lf.modules) == set(a.modules) | set(b.modules)  # a's convs are carried over
    for name, m in lf.modules.items():
        want = 0.7 * delta(a.modules[name])
        if name in b.modules:
            want = want - 0.4 * delta(b.modules[name])
            assert m["lora_down.weight"].shape[0] == 14
        assert rel(delta(m), want) <= 1e-6
    assert "merged by lorakit (exact)" in lf.metadata["ss_training_comment"]
    proj = algebra_ops.merge_loras([(a.path, 0.7), (b.path, -0.4)], rank=5)
    name = next(n for n in b.modules)
    want = best(0.7 * delta(a.modules[name]) - 0.4 * delta(b.modules[name]), 5)
    assert rel(delta(proj.modules[name]), want) <= 1e-5


@pytest.mark.parametrize("args, message", [
    (["resize", "{a}", "--rank", "9", "--out", "{o}"], "above the file's rank 8"),
    (["resize", "{a}", "--rank", "0", "--out", "{o}"], "at least 1"),
    (["resize", "{a}", "--dynamic", "sv_fro:2", "--out", "{o}"], "share in (0, 1]"),
    (["resize", "{a}", "--out", "{o}"], "give --rank, --dynamic"),
    (["resize", "{junk}", "--rank", "2", "--out", "{o}"], "not a LoRA"),
    (["resize", "{dir}/missing.safetensors", "--rank", "2", "--out", "{o}"], "no such file"),
    (["merge", "--lora", "{a}", "--lora", "{xl}", "--out", "{o}"], "different model families"),
    (["merge", "--lora", "{a}", "--lora", "{junk}", "--out", "{o}"], "not a LoRA"),
    (["merge", "--lora", "{a}", "--lora", "{b}", "--rank", "0", "--out", "{o}"], "at least 1"),
    (["merge", "--lora", "{a}", "--lora", "{dir}/missing.safetensors", "--out", "{o}"], "no such file"),
    (["resize", "{oft}", "--rank", "1", "--out", "{o}"], "OFT modules turn the base weight"),
    (["merge", "--lora", "{a}", "--lora", "{oft}:0.5", "--out", "{o}"], "OFT modules turn the base weight"),
])
def test_bad_inputs_stop_with_one_line(files, capsys, args, message):
    fill = {"a": files["a"].path, "b": files["b"].path, "xl": files["xl"].path, "junk": str(files["junk"]),
            "loha": str(files["loha"]), "oft": str(files["oft"]),
            "dir": str(files["dir"]), "o": str(files["dir"] / "bad.safetensors")}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (files["dir"] / "bad.safetensors").exists()


@pytest.fixture(scope="module")
def models(sd1, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    tuned = copy.deepcopy(sd1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in select(parts_of(tuned, "sd1"), "transformer", text_encoder=False):
            w = t.module.weight
            a = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g) * 0.01
            w.add_(a.reshape(w.shape))
    sd1.save_pretrained(d / "base")
    tuned.save_pretrained(d / "tuned")
    tiny_pipeline("sd2").save_pretrained(d / "other")
    return d


def test_extract_cli_reports_errors_per_part(models, capsys):
    out = models / "x.safetensors"
    assert main(["extract", "--base", str(models / "base"), "--tuned", str(models / "tuned"), "--rank", "2",
                 "--out", str(out), "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "unet:" in printed and "te: same as the base" in printed
    lf = load_lora(out)
    assert lf.family == "sd1" and all(n.startswith("lora_unet_") for n in lf.modules)
    assert lf.metadata["ss_network_dim"] == "2" and "extracted by lorakit" in lf.metadata["ss_training_comment"]
    assert lf.metadata["sshs_model_hash"] == file_hashes(out)["sshs_model_hash"]


@pytest.mark.parametrize("tuned, extra, message", [
    ("other", [], "one architecture"),
    ("missing", [], "no such file"),
    ("tuned", ["--rank", "0"], "at least 1"),
    ("tuned", ["--rank", "2", "--targets", "everything"], "unknown target preset"),
])
def test_extract_bad_inputs(models, capsys, tuned, extra, message):
    args = ["extract", "--base", str(models / "base"), "--tuned", str(models / tuned), "--out",
            str(models / "bad.safetensors")]
    assert main(args + (extra or ["--rank", "2"])) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]  # (model loading may draw progress bars above it)


def test_lora_plus_loha_merge_is_the_exact_weighted_sum(files, tmp_path):
    """A LoHa joins a LoRA+LoRA merge through its exact ΔW (a plain LoRA comes out)."""
    from lorakit.formats import load_lora
    from lorakit.lora.algebra import factors

    out = tmp_path / "m.safetensors"
    assert main(["merge", "--lora", files["a"].path, "--lora", f"{files['loha']}:0.5", "--out", str(out),
                 "--dtype", "fp32"]) == 0
    merged, a, loha = load_lora(out), files["a"], load_lora(files["loha"])
    name = next(iter(loha.modules))
    t = {k: v.double() for k, v in loha.modules[name].items()}
    want = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * 0.5
    fa = factors(a.modules[name])
    want = want + fa.scale * fa.up @ fa.down
    fm = factors(merged.modules[name])
    got = fm.scale * fm.up @ fm.down
    assert float((got - want).norm() / want.norm()) <= 1e-5
