"""ΔW of one adapted layer added into a weight: merging (network.py) and the on-the-fly effective
weight (live.py) both come here, so they round alike."""

from __future__ import annotations

from torch import Tensor, nn

from .modules import LoRAModule


def add_site_delta(weight: Tensor, adapter: nn.Module, base_weight: Tensor, rows: Tensor | None,
                   multiplier: float) -> Tensor:
    """weight (fp32) += m·ΔW of one live layer, in place and returned: a LoRA as one GEMM into the
    weight (no ΔW temporary), any other kind through its full ΔW. Merging and the on-the-fly
    effective weight both come here, so they round alike."""
    if isinstance(adapter, LoRAModule):
        adapter.add_delta_to(weight, multiplier, rows)
    else:
        weight.add_(layer_delta(adapter, base_weight, rows).to(weight.device), alpha=multiplier)
    return weight


def layer_delta(adapter: nn.Module, base_weight: Tensor, rows: Tensor | None) -> Tensor:
    """ΔW for one live layer: the adapter's, or its rows when the layer is a piece of a fused one."""
    if rows is None:
        return adapter.delta_weight(base_weight)
    if "dora_scale" in getattr(adapter, "_names", {}):
        raise ValueError("DoRA on a layer the model holds as several pieces is not supported")
    return adapter.delta_weight()[rows.to(base_weight.device)]
