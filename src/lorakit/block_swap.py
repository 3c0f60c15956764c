"""`--blocks-to-swap N`: N of the denoiser's transformer blocks live in CPU memory and are copied to the
GPU just before each runs, the copy of the next one overlapping the current one's compute.

Built on diffusers' group offloading (`diffusers.hooks.apply_group_offloading`, block level, one block per
group, `use_stream=True`): with a stream it keeps a pinned CPU copy of each block's tensors, copies host to
device on a side stream and "offloads" by pointing the parameters back at that copy, so nothing is ever
copied back: right for frozen weights. lorakit's LoRA factors are not the blocks' parameters (lora/live.py
holds them beside the layer), so they stay on the GPU with their gradients and optimizer state.

Why not `enable_group_offload` on the whole model: it offloads every block and the rest of the model too,
and only N should move (sd-scripts' `--blocks_to_swap`: the last N). So the N blocks are gathered under one
holder module and offloaded there; diffusers' prefetch order is learnt from a first forward of the module
it was applied to, which the holder never has, so the chain is set here from the blocks' order, which is
the order they run in (diffusers' GroupOffloadingHook.next_group / onload_self, as its lazy prefetch hook
sets them). In a training step the backward pass recomputes each swapped block (gradient checkpointing,
which block swap turns on: otherwise autograd would keep every block's GPU weights alive until backward
and nothing would be saved); a block asked for out of the forward order is onloaded synchronously by
diffusers' own fallback.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .errors import LoraKitError


def transformer_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The blocks, in the order they run: children of the denoiser's top-level ModuleLists whose class the
    model declares a repeated transformer block (diffusers' `_repeated_blocks` / `_no_split_modules`)."""
    declared = set(getattr(denoiser, "_repeated_blocks", None) or []) | set(
        getattr(denoiser, "_no_split_modules", None) or [])
    out = []
    for child in denoiser.children():
        if isinstance(child, nn.ModuleList):
            out += [b for b in child if type(b).__name__ in declared and "Transformer" in type(b).__name__]
    return out


def swapped_blocks(denoiser: nn.Module, n: int) -> list[nn.Module]:
    """The last `n` blocks (sd-scripts swaps from the end); LoraKitError when the model has none."""
    blocks = transformer_blocks(denoiser)
    if not blocks:
        raise LoraKitError(f"--blocks-to-swap: this model's {type(denoiser).__name__} has no transformer blocks to "
                           f"swap (SD 3.x and Flux.1 have; leave it 0)")
    if n > len(blocks):
        raise LoraKitError(f"--blocks-to-swap {n}: the model has {len(blocks)} transformer blocks")
    return blocks[len(blocks) - n:]


def check_model(n: int, sketch) -> None:
    """Refuse, before any weight is read, block swap on a model without transformer blocks (from the
    family's count in the model's config) or with fewer than `n`."""
    count = sketch.family.block_count(sketch.denoiser_config)
    if not count:
        raise LoraKitError(f"--blocks-to-swap: a {sketch.family.label} model has no transformer blocks to swap "
                           f"(SD 3.x and Flux.1 have; leave it 0)")
    if n > count:
        raise LoraKitError(f"--blocks-to-swap {n}: the model has {count} transformer blocks")


class _Holder(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def apply(denoiser: nn.Module, n: int, device: str | torch.device) -> int:
    """Swap the last `n` blocks between CPU memory and the CUDA `device`; on another device say in one line
    that there is nothing to do. Returns how many blocks swap."""
    if n <= 0:
        return 0
    blocks = swapped_blocks(denoiser, n)
    device = torch.device(device)
    if device.type != "cuda":
        print(f"--blocks-to-swap {n}: nothing to do on {device.type} (the weights already live in its memory)",
              file=sys.stderr)
        return 0
    hook_blocks(blocks, device, use_stream=True)
    return len(blocks)


def hook_blocks(blocks: list[nn.Module], device: str | torch.device, use_stream: bool) -> nn.Module:
    """diffusers' block-level group offloading on these blocks alone (one group each), chained to prefetch
    in their order; returns the holder they were gathered under."""
    from diffusers.hooks import apply_group_offloading

    holder = _Holder(blocks)
    apply_group_offloading(holder, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1, use_stream=use_stream)
    chain(blocks)
    return holder


def chain(blocks: list[nn.Module]) -> None:
    """Each block's hook prefetches the next block; every block after the first waits for its prefetch."""
    hooks = [_hook(b) for b in blocks]
    for current, following in zip(hooks, hooks[1:]):
        current.next_group = following.group
        following.group.onload_self = False


def _hook(block: nn.Module):
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING
    from diffusers.hooks.hooks import HookRegistry

    return HookRegistry.check_if_exists_or_initialize(block).get_hook(_GROUP_OFFLOADING)
