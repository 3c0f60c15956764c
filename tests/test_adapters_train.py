"""`lorakit train --network …` end to end on tiny models: what it writes loads in LyCORIS and merges
there as lorakit merges it, resumes exactly, merges into a checkpoint, resizes to a plain LoRA, and on
SD 3.x/Flux fused layers lands the same ΔW merged, on the fly and read back."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.cli import main as cli
from lorakit.formats import load_lora, load_network, save_lora
from lorakit.lora import LoRANetwork
from lorakit.lora.algos import parse
from lorakit.train.loop import run
from train_support import config, make_images, one_thread, tiny_model_dir

pytest.importorskip("lycoris")
_threads = pytest.fixture(scope="module", autouse=True)(one_thread)

ALGOS = {"loha": ("conv_dim=4", "use_tucker=true"), "lokr": ("factor=4", "conv_dim=4"), "dora": (),
         "oft": ("conv_dim=4",), "locon": ("conv_dim=4",)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return root, tiny_model_dir(root, "sd1"), make_images(root / "images")


def _train(world, algo, out, **kw):
    root, model, images = world
    args = dict(network=algo, network_args=ALGOS[algo], preset="full", train_text_encoder=False, steps=2, lr=1e-2,
                seed=3)
    args.update(kw)
    return config(model, images, out, **args)


def _unet_out(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    enc = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([500]), enc).sample


def _pipe(model):
    from lorakit.models import load_model

    return load_model(str(model), dtype=torch.float32)


@pytest.mark.parametrize("algo", ["loha", "lokr", "oft", "locon"])
def test_trained_file_loads_in_lycoris_and_merges_there_as_lorakit_merges(world, tmp_path, algo):
    """create_lycoris_from_weights reads every module of the file lorakit trained; its merge_to and
    lorakit's merge give the same UNet (≤ 1e-5 relative; alpha = rank, where LyCORIS' merge scales right)."""
    from lycoris import create_lycoris_from_weights

    cfg = _train(world, algo, tmp_path)
    run(cfg)
    lf = load_lora(cfg.out)
    args = json.loads(lf.metadata["ss_network_args"])
    if algo == "locon":  # kohya's own LoRA with conv_dim: networks.lora, as sd-scripts writes it
        assert lf.metadata["ss_network_module"] == "networks.lora" and args["conv_dim"] == "4"
    else:
        assert lf.metadata["ss_network_module"] == "lycoris.kohya"
        assert args["algo"] == {"oft": "diag-oft"}.get(algo, algo)
    ours = _pipe(world[1])
    base = _unet_out(ours)
    load_network(ours.parts(), cfg.out).merge()
    merged = _unet_out(ours)
    theirs = _pipe(world[1])
    state = {f"{n.replace('lora_unet_', 'lycoris_', 1)}.{k}": v.float() for n, t in lf.modules.items()
             for k, v in t.items()}
    net, _ = create_lycoris_from_weights(1.0, None, theirs.unet, weights_sd=state)
    assert len(net.loras) == len(lf.modules)
    net.merge_to(1.0)
    lyco = _unet_out(theirs)
    assert float((merged - base).norm() / base.norm()) > 1e-4  # the training changed something
    assert float((lyco - merged).norm() / (merged - base).norm()) <= 1e-4


@pytest.mark.parametrize("algo", ["loha", "lokr", "dora", "oft"])
def test_resume_equals_uninterrupted(world, tmp_path, algo):
    common = dict(steps=2, rank_dropout=0.0 if algo == "oft" else 0.2, module_dropout=0.1)
    full = run(_train(world, algo, tmp_path / "a", **common))

    def stop_at_1(step, loss):
        if step == 1:
            raise KeyboardInterrupt

    cfg = _train(world, algo, tmp_path / "b", **common)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_step=stop_at_1)
    resumed = run(cfg.override({"resume": cfg.resolved_run_dir()}))
    assert resumed.losses == full.losses
    a, b = full.network.kohya_state_dict(), resumed.network.kohya_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_merge_and_resize_to_plain_lora(world, tmp_path, capsys):
    """merge into a checkpoint (LoKr, OFT) = merged on the fly; resize turns a LoKr into the best plain
    LoRA of its exact ΔW (at full rank: the same UNet), which inspect shows as lora."""
    model = world[1]
    files = {}
    for algo in ("lokr", "oft"):
        cfg = _train(world, algo, tmp_path / algo, network_args=ALGOS[algo][:1])
        run(cfg)
        files[algo] = cfg.out
        pipe = _pipe(model)
        load_network(pipe.parts(), cfg.out).merge()
        expected = _unet_out(pipe)
        assert cli(["merge", "--model", str(model), "--lora", str(cfg.out), "--out", str(tmp_path / f"{algo}-merged"),
                    "--dtype", "fp32"]) == 0
        got = _unet_out(_pipe(tmp_path / f"{algo}-merged"))
        assert float((got - expected).norm() / expected.norm()) <= 1e-6
    lf = load_lora(files["lokr"])
    from lorakit.lora.algebra import factors

    full_rank = max(factors(t).rank for t in lf.modules.values())  # min(rows, columns) of each exact ΔW
    out = tmp_path / "plain.safetensors"
    assert cli(["resize", str(files["lokr"]), "--rank", str(full_rank), "--out", str(out), "--dtype", "fp32"]) == 0
    capsys.readouterr()
    plain = load_lora(out)
    assert all(set(t) == {"lora_down.weight", "lora_up.weight", "alpha"} for t in plain.modules.values())
    for name in lf.modules:
        assert torch.allclose(_delta(plain, name), _delta(lf, name), atol=1e-6)
    assert cli(["resize", str(files["lokr"]), "--rank", "2", "--out", str(tmp_path / "r2.safetensors")]) == 0
    r2 = load_lora(tmp_path / "r2.safetensors")
    name = max(lf.modules, key=lambda n: _delta(lf, n).norm())
    exact = _delta(lf, name).reshape(_delta(lf, name).shape[0], -1).double()
    s = torch.linalg.svdvals(exact)
    err = (_delta(r2, name).reshape(exact.shape).double() - exact).norm()
    assert abs(float(err) - float(s[2:].norm())) <= 1e-3 * float(s.norm())  # Eckart–Young: the best rank 2
    capsys.readouterr()
    assert cli(["inspect", str(files["lokr"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["network"]["algo"] == "lokr" and info["network"]["args"]["factor"] == "4"
    assert cli(["resize", str(files["oft"]), "--rank", "2", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "OFT modules turn the base weight" in capsys.readouterr().err


def _delta(lf, name):
    from lorakit.lora import functional as LF

    t = {k: v.float() for k, v in lf.modules[name].items()}
    alpha = t.pop("alpha", None)
    kind = LF.module_kind(t)
    from lorakit.lora.algebra import _dense_shape, factors

    if kind == "lora":
        f = factors(lf.modules[name])
        return (f.scale * f.up @ f.down).float()
    shape = _dense_shape(t, kind)
    return LF.module_delta(kind, t, None if alpha is None else float(alpha), shape).reshape(shape[0], -1)


@pytest.mark.parametrize("args,message", [
    (["--network", "lycoris"], "--network 'lycoris' is not an adapter lorakit trains"),
    (["--network", "loha", "--network-args", "factor=4"], "factor does not apply to --network loha"),
    (["--network", "oft", "--rank", "1"], "--network oft cannot adapt"),
    (["--network", "oft", "--alpha", "2"], "--alpha means nothing to --network oft"),
    (["--network", "dora", "--network-args", "conv_dim=4", "--conv-rank", "8"], "contradicts --conv-rank 8"),
])
def test_bad_network_one_line_exit_2(world, tmp_path, capsys, args, message):
    root, model, images = world
    code = cli(["train", "--model", str(model), "--data", str(images), "--out", str(tmp_path / "o.safetensors"),
                "--resolution", "32", "--bucket-step", "8", "--steps", "1", "--no-progress", "--no-tensorboard",
                "--no-train-text-encoder", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err


def test_fused_layers_flux(tmp_path):
    """On Flux's fused qkv/linear1 every algo is one module over the whole named layer (ComfyUI patches
    that fused weight): merged, on the fly and read back from the file it gives the same transformer."""
    from flux_support import flux_parts, tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    parts = flux_parts(pipe)
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, pipe.transformer.config.in_channels, generator=g),
                  encoder_hidden_states=torch.randn(1, 8, pipe.transformer.config.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(1, pipe.transformer.config.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3))
    if pipe.transformer.config.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5])

    def out():
        with torch.no_grad():
            return pipe.transformer(**inputs).sample

    base = out()
    for algo, args in (("loha", []), ("lokr", ["factor=4"]), ("dora", []), ("oft", [])):
        torch.manual_seed(1)
        net = LoRANetwork.create(parts, rank=4, alpha=None if algo == "oft" else 2.0, preset="attn",
                                 text_encoder=False, spec=parse(algo, args))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        fused = [n for n in net.adapters if n.endswith("_qkv")]
        assert fused, "the preset adapts the fused attention"
        net.train().apply()  # the training branch: one ΔW per call of the fused layer, shared by its pieces
        trained = pipe.transformer(**inputs).sample
        trained.square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in net.adapters[fused[0]].parameters() if p.requires_grad)
        net.eval()
        fly = out()
        assert float((trained.detach() - fly).norm()) <= 1e-5 * float(fly.norm())
        net.remove()
        net.merge()
        merged = out()
        net.unmerge()
        path = tmp_path / f"{algo}.safetensors"
        save_lora(path, net.kohya_modules(), {}, family="flux", format="kohya", dtype=torch.float32)
        back = load_network(parts, path)
        assert set(back.adapters) == set(net.adapters)
        back.apply()
        read = out()
        back.remove()
        assert torch.allclose(out(), base, atol=1e-5)  # unmerged: W back within an ulp
        change = float((merged - base).norm())
        assert change > 1e-4 * float(base.norm())
        assert float((fly - merged).norm()) <= 1e-5 * change, algo
        assert float((read - merged).norm()) <= 1e-5 * change, algo


def test_sd3_writes_them_in_the_kohya_layout(tmp_path):
    """SD 3.x's default layout (diffusers) holds plain LoRA only: a LoKr is written with sd-scripts'
    names, fused qkv included, and reads back onto the model as trained."""
    from sd3_support import tiny_sd3_pipeline

    tiny_sd3_pipeline().save_pretrained(tmp_path / "model")
    images = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    cfg = config(tmp_path / "model", images, tmp_path, network="lokr", network_args=("factor=4",), steps=1,
                 lr=1e-2, save_dtype="fp32")
    result = run(cfg)
    lf = load_lora(cfg.out)
    assert any(n.startswith("lora_unet_joint_blocks_") and n.endswith("_attn_qkv") for n in lf.modules)
    assert all({"lokr_w1", "lokr_w2"} & set(t) or "lokr_w1_a" in t for t in lf.modules.values())
    trained = result.network.kohya_modules()
    assert set(trained) == set(lf.modules)
    assert all(torch.equal(trained[n][k].float(), lf.modules[n][k].float()) for n in trained for k in trained[n])
