"""Interoperability with the reference loaders: a lorakit kohya file loaded by diffusers'
`load_lora_weights` + `fuse_lora`, and its diffusers and PEFT conversions (loaded by lorakit, by
diffusers and by PEFT), all give the weights lorakit's own merge gives, layer by layer."""

import copy

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
    assert setup.lorakit_merge(out) == 0.0  # same tensors, same names: the same merge exactly
    assert setup.diffusers_merge(out) <= TOL


@pytest.mark.parametrize("with_model", [False, True], ids=["by-rule", "from-model"])
def test_peft_conversion(setup, with_model):
    out = setup.tmp / f"peft-{with_model}"
    save_lora(out, load_lora(setup.kohya), format="peft", dtype=torch.float32,
              parts=setup.parts() if with_model else None)
    lf = load_lora(out)
    assert (lf.format, lf.family) == ("peft", setup.family)
    assert setup.lorakit_merge(out) == 0.0
    assert setup.peft_merge(out) <= TOL
