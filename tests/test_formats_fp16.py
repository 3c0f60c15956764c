"""Layout round trips as users run them: an fp16 kohya file whose alpha/rank is 3/8 (not a power of
two, so folding it into `lora_B` rounds), converted to every layout and from each to every other
with dtype fp16. Each module's ΔW must stay what the user's file holds, within one fp16 rounding,
and layouts that carry alpha must carry the file's 3 unchanged, bit for bit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import parts_of  # noqa: E402
from flux_support import flux_parts, tiny_flux_pipeline  # noqa: E402
from sd3_support import sd3_parts, tiny_sd3_pipeline  # noqa: E402

from lorakit.formats import load_lora, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.models.tiny import tiny_pipeline  # noqa: E402

RANK, ALPHA = 8, 3.0
# ΔW error relative to its norm: folding 3/8 into an fp16 up rounds each element once, by at most
# 2^-11 ≈ 4.9e-4 of it (≈ 2.8e-4 measured); rounding twice, or once more coarsely, goes past it
TOL = 5e-4
KEEP_ALPHA = {"kohya", "comfyui", "onetrainer"}  # diffusers and PEFT fold alpha/r into lora_B


def _parts(family):
    if family == "sd3":
        return sd3_parts(tiny_sd3_pipeline(), with_t5=True)
    if family == "flux":
        return flux_parts(tiny_flux_pipeline(), with_t5=True)
    return parts_of(tiny_pipeline(family), family)


def _layouts(family):
    from lorakit import families

    return families.get(family).lora_formats


def user_file(family, path):
    """A trained-looking LoRA saved as users share them: kohya, fp16 (save_lora's default)."""
    parts = _parts(family)
    conv = {} if family == "sd3" else dict(conv_rank=RANK, conv_alpha=ALPHA)
    net = LoRANetwork.create(parts, rank=RANK, alpha=ALPHA, preset="full", **conv)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in net.named_parameters():
            fan_in = p[0].numel()
            std = fan_in ** -0.5 if "lora_down" in name else 1e-2  # kaiming-like down, small trained up
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return save_lora(path, net.kohya_modules(), format="kohya", family=family)


def delta(t) -> torch.Tensor:
    down, up = t["lora_down.weight"].float(), t["lora_up.weight"].float()
    scale = float(t["alpha"]) / down.shape[0] if "alpha" in t else 1.0
    return scale * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1))


def check(source, want, got, keeps_alpha: bool, where):
    """`got` holds the user's LoRA: each module's ΔW within TOL of `want` (the source's ΔW)."""
    assert got.dtype == torch.float16, where
    assert sorted(got.modules) == sorted(source.modules), where
    for name, t in source.modules.items():
        o = got.modules[name]
        if keeps_alpha:  # nothing folded: the user's tensors and alpha, bit for bit
            assert float(o["alpha"]) == ALPHA, (where, name)
            assert torch.equal(o["lora_up.weight"], t["lora_up.weight"]), (where, name)
            assert torch.equal(o["lora_down.weight"], t["lora_down.weight"]), (where, name)
            continue
        # alpha/r moved into up: the same strength at alpha = rank
        assert float(o["alpha"]) == o["lora_down.weight"].shape[0], (where, name)
        err = float((delta(o) - want[name]).norm() / want[name].norm())
        assert err <= TOL, (where, name, err)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_fp16_round_trip_through_every_layout_keeps_delta_and_alpha(family, tmp_path):
    source = load_lora(user_file(family, tmp_path / "user.safetensors"))
    assert source.dtype == torch.float16 and source.format == "kohya"
    assert {float(t["alpha"]) for t in source.modules.values()} == {ALPHA}
    want = {name: delta(t) for name, t in source.modules.items()}
    layouts = _layouts(family)
    for src in layouts:
        first = load_lora(save_lora(tmp_path / f"a-{src}", source, format=src, dtype=torch.float16))
        assert first.format == src
        check(source, want, first, src in KEEP_ALPHA, src)
        for dst in layouts:
            again = load_lora(save_lora(tmp_path / f"b-{src}-{dst}", first, format=dst, dtype=torch.float16))
            check(source, want, again, src in KEEP_ALPHA and dst in KEEP_ALPHA, f"{src}→{dst}")


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_cli_convert_fp16_file_to_diffusers_and_back(family, tmp_path):
    """`lorakit convert` keeps the file's fp16 and its strength both ways."""
    from lorakit.cli import main

    user = user_file(family, tmp_path / "user.safetensors")
    d, k = tmp_path / "d.safetensors", tmp_path / "k.safetensors"
    assert main(["convert", str(user), "--to", "diffusers", "--out", str(d)]) == 0
    assert main(["convert", str(d), "--to", "kohya", "--out", str(k), "--dtype", "fp16"]) == 0
    source = load_lora(user)
    want = {name: delta(t) for name, t in source.modules.items()}
    check(source, want, load_lora(d), False, "cli diffusers")
    check(source, want, load_lora(k), False, "cli diffusers→kohya")


@pytest.mark.parametrize("family", ["sd1", "sd3", "flux"])
@pytest.mark.parametrize("stored,written,tol", [(torch.bfloat16, torch.float16, TOL), (torch.float16, torch.float32, 1e-6)],
                         ids=["bf16-to-fp16", "fp16-to-fp32"])
def test_alpha_is_folded_in_the_precision_written(family, stored, written, tol, tmp_path):
    """Folding alpha/r into `lora_B` rounds once, to the dtype written: a bf16 file converted to
    fp16 diffusers keeps fp16's precision (not bf16's, 4× coarser), one converted to fp32 loses nothing."""
    user = load_lora(user_file(family, tmp_path / "user.safetensors"))
    source = load_lora(save_lora(tmp_path / "stored.safetensors", user, format="kohya", dtype=stored))
    want = {name: delta(t) for name, t in source.modules.items()}
    got = load_lora(save_lora(tmp_path / "d.safetensors", source, format="diffusers", dtype=written))
    assert got.dtype == written
    worst = max(float((delta(got.modules[n]) - want[n]).norm() / want[n].norm()) for n in want)
    assert worst <= tol, worst
