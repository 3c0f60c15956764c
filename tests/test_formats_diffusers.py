"""Interoperability with the reference loaders: a lorakit kohya file loaded by diffusers'
`load_lora_weights` + `fuse_lora`, and its diffusers and PEFT conversions (loaded by lorakit, by
diffusers and by PEFT), all give the weights lorakit's own merge gives, layer by layer."""

import copy
import json

import pytest
import torch

from lorakit.formats import load_lora, load_network, save_lora
from lorakit.lora import LoRANetwork
from lorakit.models.tiny import tiny_pipeline

from conftest import parts_of

TOL = 1e-5  # relative to the LoRA delta of each layer
COUNTS = {"sd1": 129, "sdxl": 201}  # every Linear/Conv2d of preset `full` with conv rank (tiny models)


class Setup:
    """A tiny pipeline, a random LoRA on every adaptable layer (rank 4 / alpha 2, kxk convs
    rank 2 / alpha 1, text encoders alpha 3: patterns are needed in PEFT configs), its kohya file,
    and the per-layer ΔW lorakit's merge applies."""

    def __init__(self, family, tmp):
        self.family = family
        self.pipe = tiny_pipeline(family)
        parts = parts_of(self.pipe, family)
        net = LoRANetwork.create(parts, rank=4, alpha=2.0, preset="full", conv_rank=2, conv_alpha=1.0)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        modules = net.kohya_modules()
        for name in modules:
            if name.startswith("lora_te"):
                modules[name]["alpha"] = torch.tensor(3.0)
        self.tmp = tmp
        self.kohya = tmp / "lora.safetensors"
        save_lora(self.kohya, modules, dtype=torch.float32, family=family)  # as the trainer does
        loaded = load_network(parts, self.kohya)
        self.w0 = {n: t.module.weight.detach().clone() for n, t in loaded.targets.items()}
        loaded.merge()
        self.delta = {n: t.module.weight.detach() - self.w0[n] for n, t in loaded.targets.items()}
        loaded.unmerge()
        assert len(self.delta) == COUNTS[family]
        assert min(d.norm() for d in self.delta.values()) > 1e-3

    def parts(self, pipe=None):
        return parts_of(pipe or self.pipe, self.family)

    def check(self, pipe) -> float:
        """Worst relative error of each layer's change against lorakit's ΔW; fails above TOL."""
        index = self.parts(pipe).index()
        worst = 0.0
        for name, delta in self.delta.items():
            got = index[name].module.weight.detach() - self.w0[name]
            err = float((got - delta).norm() / delta.norm())
            assert err <= TOL, (name, err)
            worst = max(worst, err)
        return worst

    def lorakit_merge(self, path):
        pipe = copy.deepcopy(self.pipe)
        net = load_network(self.parts(pipe), path).merge()
        assert len(net) == COUNTS[self.family]
        return self.check(pipe)

    def diffusers_merge(self, path):
        pipe = copy.deepcopy(self.pipe)
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora(lora_scale=1.0)
        pipe.unload_lora_weights()
        return self.check(pipe)

    def peft_merge(self, folder):
        from peft import PeftModel

        pipe = copy.deepcopy(self.pipe)
        subs = ["unet", "text_encoder"] + (["text_encoder_2"] if self.family == "sdxl" else [])
        for sub in subs:
            merged = PeftModel.from_pretrained(getattr(pipe, sub), str(folder / sub)).merge_and_unload()
            setattr(pipe, sub, merged)
        return self.check(pipe)


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def setup(request, tmp_path_factory):
    return Setup(request.param, tmp_path_factory.mktemp(request.param))


def test_diffusers_loads_lorakit_kohya_file(setup):
    assert setup.diffusers_merge(setup.kohya) <= TOL


@pytest.mark.parametrize("with_model", [False, True], ids=["by-rule", "from-model"])
def test_diffusers_conversion(setup, with_model):
    out = setup.tmp / f"diffusers-{with_model}.safetensors"
    save_lora(out, load_lora(setup.kohya), format="diffusers", dtype=torch.float32,
              parts=setup.parts() if with_model else None)
    lf = load_lora(out)
    assert (lf.format, lf.family) == ("diffusers", setup.family)
    assert lf.metadata["ss_network_dim"] == "4" and "lora_adapter_metadata" in lf.metadata
    # alpha/r is folded into up (alpha 3 / rank 4 on the text encoders rounds once in fp32)
    assert setup.lorakit_merge(out) <= 1e-6
    assert setup.diffusers_merge(out) <= TOL
    cfg = json.loads(lf.metadata["lora_adapter_metadata"])
    assert cfg["unet.lora_alpha"] == cfg["unet.r"] == 4 and cfg["text_encoder.lora_alpha"] == 4
    assert cfg["unet.alpha_pattern"] == cfg["unet.rank_pattern"] and not cfg["text_encoder.alpha_pattern"]


@pytest.mark.parametrize("with_model", [False, True], ids=["by-rule", "from-model"])
def test_peft_conversion(setup, with_model):
    out = setup.tmp / f"peft-{with_model}"
    save_lora(out, load_lora(setup.kohya), format="peft", dtype=torch.float32,
              parts=setup.parts() if with_model else None)
    lf = load_lora(out)
    assert (lf.format, lf.family) == ("peft", setup.family)
    assert setup.lorakit_merge(out) <= 1e-6  # alpha/r folded into up
    assert setup.peft_merge(out) <= TOL


def test_diffusers_file_strength_does_not_depend_on_its_metadata(setup):
    """ComfyUI reads `lora_A`/`lora_B` without `lora_adapter_metadata` (scale 1): lorakit's
    diffusers file must give lorakit's ΔW as plain B·A."""
    from safetensors.torch import load_file

    out = setup.tmp / "diffusers-folded.safetensors"
    save_lora(out, load_lora(setup.kohya), format="diffusers", dtype=torch.float32)
    state = load_file(str(out))
    index = setup.parts().index()
    checked = 0
    for key in state:
        if not key.endswith(".lora_A.weight") or ".conv" in key or "proj_in" in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        a = state[key]
        if a.dim() != 2:
            continue
        prefix, path = key[: -len(".lora_A.weight")].split(".", 1)
        part = {"unet": "unet", "text_encoder": "te1" if setup.family == "sdxl" else "te",
                "text_encoder_2": "te2"}[prefix]
        name = next(n for n, t in index.items() if t.part == part and t.path in (path, path[len("text_model."):]))
        delta = setup.delta.get(index[name].name)
        if delta is None:
            continue
        assert torch.allclose(b @ a, delta, atol=1e-6, rtol=1e-5), key
        checked += 1
    assert checked > 50


# ---------------------------------------------------------------------------------------------
# files written by the reference libraries themselves, read by lorakit

def _peft_adapted(model, config, seed):
    """`model` with a PEFT LoRA adapter whose A and B are random (not B = 0)."""
    model.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def test_reads_file_saved_by_diffusers(tmp_path):
    """diffusers' own `save_lora_weights` (PEFT keys, lora_adapter_metadata with rank/alpha
    patterns): lorakit's merge equals diffusers' fuse of the same file."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base = tiny_pipeline("sd1")
    pipe = copy.deepcopy(base)
    blk = "down_blocks.0.attentions.0.transformer_blocks.0"
    ucfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"],
                      rank_pattern={f"{blk}.attn1.to_q": 2}, alpha_pattern={f"{blk}.attn2.to_k": 3})
    tcfg = LoraConfig(r=2, lora_alpha=5, init_lora_weights=False, target_modules=["q_proj", "fc1"])
    _peft_adapted(pipe.unet, ucfg, 1)
    _peft_adapted(pipe.text_encoder, tcfg, 2)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"

    lf = load_lora(path, family="sd1")
    assert lf.format == "diffusers"
    pre = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_"
    assert lf.ranks()[pre + "attn1_to_q"] == 2 and lf.alphas()[pre + "attn1_to_q"] == 8.0
    assert lf.alphas()[pre + "attn2_to_k"] == 3.0 and lf.alphas()["lora_te_text_model_encoder_layers_0_mlp_fc1"] == 5.0
    assert lf.parts() == {"unet": 6 * 8 + 6 + 12, "te": 4}  # 8 to_* per block, 6 proj_in, 12 resnet conv1

    reference = copy.deepcopy(base)
    reference.load_lora_weights(str(path))
    reference.fuse_lora()
    reference.unload_lora_weights()
    mine = copy.deepcopy(base)
    load_network(parts_of(mine, "sd1"), lf).merge()
    ref_index, my_index, base_index = (parts_of(p, "sd1").index() for p in (reference, mine, base))
    for name in lf.modules:
        w0 = base_index[name].module.weight.detach()
        expected = ref_index[name].module.weight.detach() - w0
        got = my_index[name].module.weight.detach() - w0
        err = float((got - expected).norm() / expected.norm())
        assert err <= TOL, (name, err)


def test_reads_adapter_saved_by_peft(tmp_path):
    """A PEFT adapter folder from PeftModel.save_pretrained, with rank/alpha patterns and rsLoRA
    scaling (alpha/√r): lorakit's merge equals PEFT's merge_and_unload."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_pipeline("sd1")
    blk = "up_blocks.1.attentions.1.transformer_blocks.0"
    cfg = LoraConfig(r=4, lora_alpha=6, use_rslora=True, init_lora_weights=False,
                     target_modules=["to_q", "to_v", "ff.net.2", "conv2", "time_emb_proj"],
                     rank_pattern={"conv2": 2}, alpha_pattern={f"{blk}.attn2.to_v": 1.5})
    unet = copy.deepcopy(base.unet)
    model = get_peft_model(unet, cfg)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(str(tmp_path / "unet"))
    reference = PeftModel.from_pretrained(copy.deepcopy(base.unet), str(tmp_path / "unet")).merge_and_unload()

    lf = load_lora(tmp_path / "unet")
    assert lf.format == "peft" and lf.parts() == {"unet": 6 * 5 + 12 * 2}  # to_q/to_v x2, ff.net.2; 12 resnets
    name = "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_v"
    assert abs(lf.alphas()[name] - 1.5 * 2.0) < 1e-6  # rsLoRA: scale 1.5/√4 = kohya alpha 3 over rank 4
    mine = copy.deepcopy(base)
    load_network(parts_of(mine, "sd1"), lf).merge()
    ref_w = dict(reference.named_parameters())
    base_w = dict(base.unet.named_parameters())
    for path, p in mine.unet.named_parameters():
        if not path.endswith(".weight"):
            continue
        delta_ref = ref_w[path].detach() - base_w[path].detach()
        delta = p.detach() - base_w[path].detach()
        if delta_ref.norm() == 0:
            assert delta.norm() == 0, path
            continue
        err = float((delta - delta_ref).norm() / delta_ref.norm())
        assert err <= TOL, (path, err)


def test_reads_peft_dora_adapter(tmp_path):
    """PEFT DoRA (one magnitude per output row) read as kohya `dora_scale`: lorakit's merge equals
    PEFT's merge_and_unload on linear and conv layers."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_pipeline("sd1")
    cfg = LoraConfig(r=4, lora_alpha=2, use_dora=True, init_lora_weights=False,
                     target_modules=["attn1.to_k", "ff.net.0.proj", "conv_shortcut", "conv1"])
    model = get_peft_model(copy.deepcopy(base.unet), cfg)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand(p.shape, generator=g))
    model.save_pretrained(str(tmp_path / "unet"))
    reference = PeftModel.from_pretrained(copy.deepcopy(base.unet), str(tmp_path / "unet")).merge_and_unload()

    lf = load_lora(tmp_path / "unet")
    # 6 to_k, 6 ff.net.0.proj, 12 resnet conv1, 7 conv_shortcut
    assert all("dora_scale" in t for t in lf.modules.values()) and len(lf) == 6 + 6 + 12 + 7
    mine = copy.deepcopy(base)
    load_network(parts_of(mine, "sd1"), lf).merge()
    ref_w, base_w = dict(reference.named_parameters()), dict(base.unet.named_parameters())
    changed = 0
    for path, p in mine.unet.named_parameters():
        delta_ref = ref_w[path].detach() - base_w[path].detach()
        if delta_ref.norm() == 0:
            continue
        changed += 1
        err = float((p.detach() - ref_w[path].detach()).norm() / delta_ref.norm())
        assert err <= TOL, (path, err)
    assert changed == len(lf)
