"""Block swap's set-up: which blocks get diffusers' group-offloading hooks and how they chain, without a GPU."""

from __future__ import annotations

import pytest
import torch

from lorakit import block_swap
from lorakit.errors import LoraKitError


def _flux():
    from flux_support import tiny_flux_pipeline

    return tiny_flux_pipeline().transformer


def test_blocks_in_running_order():
    tr = _flux()
    blocks = block_swap.transformer_blocks(tr)
    assert blocks == list(tr.transformer_blocks) + list(tr.single_transformer_blocks) and len(blocks) == 4
    assert block_swap.swapped_blocks(tr, 3) == blocks[1:]
    with pytest.raises(LoraKitError, match="has 4 transformer blocks"):
        block_swap.swapped_blocks(tr, 5)


def test_a_unet_has_no_blocks_to_swap(tiny_sd1):
    unet = tiny_sd1.unet
    assert block_swap.transformer_blocks(unet) == []
    with pytest.raises(LoraKitError) as e:
        block_swap.apply(unet, 2, "cpu")
    assert "no transformer blocks" in str(e.value) and "\n" not in str(e.value)


def test_on_cpu_nothing_to_do_in_one_line(capsys):
    tr = _flux()
    assert block_swap.apply(tr, 2, "cpu") == 0
    err = capsys.readouterr().err.strip()
    assert "nothing to do" in err and len(err.splitlines()) == 1
    assert not any(hasattr(m, "_diffusers_hook") for m in tr.modules())


def test_hooks_on_the_swapped_blocks_only_chained_in_order():
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    tr = _flux()
    x = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 5, 32),
             pooled_projections=torch.randn(1, 8), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
             img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))
    with torch.no_grad():
        before = tr(**x).sample
    swapped = block_swap.swapped_blocks(tr, 3)
    block_swap.hook_blocks(swapped, "cpu", use_stream=False)  # CUDA uses the same call with use_stream=True
    hooked = [m for m in tr.modules() if getattr(m, "_diffusers_hook", None) is not None
              and m._diffusers_hook.get_hook(_GROUP_OFFLOADING) is not None]
    assert hooked == swapped  # the first block, the embedders and the root stay as they are
    hooks = [b._diffusers_hook.get_hook(_GROUP_OFFLOADING) for b in swapped]
    assert [h.next_group for h in hooks] == [hooks[1].group, hooks[2].group, None]
    assert [h.group.onload_self for h in hooks] == [True, False, False]
    with torch.no_grad():
        after = tr(**x).sample
    assert torch.equal(before, after)


@pytest.mark.parametrize("command", [["train", "--data", "."], ["generate", "--prompt", "x"]])
def test_cli_refuses_block_swap_on_a_unet_in_one_line(command, capsys):
    from lorakit.cli import main

    rc = main([command[0], "--model", "toy", "--blocks-to-swap", "2", *command[1:]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no transformer blocks" in err and len(err.splitlines()) == 1
