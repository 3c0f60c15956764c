"""--network-weights: a run that starts from a LoRA file's factors, as kohya's `--network_weights`.

What carries over is the file's weights only: the optimizer state (AdamW's moments) and the LR
schedule start afresh, as in kohya, so 2 + 2 continued steps equal 4 steps whose optimizer is
reset after step 2 (not 4 uninterrupted AdamW steps; `--resume` continues those exactly). The data
order goes on where the file's run stopped: the micro-steps are counted from its `ss_steps`, so
the continued run draws the batches, noise and timesteps that run would have drawn next.

Without --dim-from-weights the network is built from the options (rank, alpha, preset) and the
file's factors are copied in: every module of the file must be one the options train, with the
same rank (kohya's `load_weights` fails on a size mismatch too); modules the file lacks start as
fresh ones. With it, the network is the file's: its modules, ranks and alphas.
"""

from __future__ import annotations

import torch

from ..errors import LoraKitError
from ..lora.modules import LoRAModule


def steps_done(lf) -> int:
    """The optimizer steps the file was trained for (its ss_steps), 0 when it does not say."""
    if lf is None:
        return 0
    try:
        return max(0, int(lf.metadata.get("ss_steps", 0)))
    except (TypeError, ValueError):
        return 0


def describe(lf, offset: int) -> str:
    order = (f"the data order continues after its step {offset}" if offset
             else "its metadata has no ss_steps: the data order starts afresh")
    return (f"continuing {lf.path} ({len(lf)} modules): {order}; the optimizer and the LR schedule start afresh, "
            "as kohya's --network_weights")


def _plain_lora(spec, lf) -> None:
    if spec.uses_lycoris:
        raise LoraKitError(f"--network-weights continues a LoRA (--network lora or locon), not --network {spec.algo}",
                           lf.path)


def _module_tensors(lf, name: str) -> dict:
    tensors = lf.modules[name]
    if "lora_down.weight" not in tensors or "lora_up.weight" not in tensors or len(
            [k for k in tensors if k != "alpha"]) != 2:
        raise LoraKitError(f"module {name} is not a plain LoRA (lora_down/lora_up): only those can be continued",
                           lf.path)
    return tensors


def load_factors(network, parts, lf, spec) -> None:
    """Copy the file's down/up factors and alphas into the matching adapters of a fresh network."""
    _plain_lora(spec, lf)
    index = parts.index()
    for name in lf.modules:
        tensors = _module_tensors(lf, name)
        target = index.get(name)
        adapter = network.adapters[target.name] if target is not None and target.name in network.adapters else None
        if adapter is None:
            raise LoraKitError(f"module {name} is not one this run trains (--preset, --train-unet/--train-text-"
                               "encoder): give the options it was trained with, or --dim-from-weights", lf.path)
        if not isinstance(adapter, LoRAModule):
            raise LoraKitError(f"module {name}: only LoRA modules can be continued", lf.path)
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        if tuple(down.shape) != tuple(adapter.lora_down.weight.shape) or \
                up.numel() != adapter.lora_up.weight.numel():
            raise LoraKitError(f"module {name} has rank {down.shape[0]}, this run {adapter.rank}: give --rank "
                               f"{down.shape[0]} (and --conv-rank for convolutions) or --dim-from-weights", lf.path)
        with torch.no_grad():
            adapter.lora_down.weight.copy_(down.reshape(adapter.lora_down.weight.shape))
            adapter.lora_up.weight.copy_(up.reshape(adapter.lora_up.weight.shape))
            if "alpha" in tensors:
                adapter.alpha.fill_(float(tensors["alpha"]))


def from_file(parts, lf, spec, *, dropout: float = 0.0, rank_dropout: float = 0.0, module_dropout: float = 0.0):
    """The file's own network (its modules, ranks, alphas), trainable, with the run's dropouts."""
    from ..formats import load_network

    _plain_lora(spec, lf)
    for name in lf.modules:
        _module_tensors(lf, name)
    network = load_network(parts, lf)
    for adapter in network.adapters.values():
        for p in adapter.parameters():
            p.data = p.data.float().clone()  # own fp32 copies, trained in place
            p.requires_grad_(True)
        adapter.alpha = adapter.alpha.float()
        adapter.dropout, adapter.rank_dropout, adapter.module_dropout = dropout, rank_dropout, module_dropout
    return network
