"""A LyCORIS module (its parameters, initialisation, ΔW math and dropouts) as a trainable lorakit adapter.

LyCORIS' modules replace their layer's forward; lorakit keeps its own (live.py chooses per call
between the branch and W + ΔW, merging and unmerging are exact, fused layers are gathered), so a
module is used only for what is its own: the factors and ΔW. ΔW comes from `get_weight` (LoHa,
LoKr) / `make_weight` (LoCon, DoRA's low-rank part), the paths LyCORIS' forward trains; DoRA's
rescale and OFT's rotation are LyCORIS' functional ops applied to the weight the adapter lands on
(on a fused SD 3.x/Flux layer, the whole named layer gathered from its pieces). The module's state
dict is the file: `hada_*`, `lokr_*`, `lora_*` + `dora_scale`, `oft_blocks`, with `alpha`.
"""

from __future__ import annotations

import logging
import weakref
from typing import Callable

import torch
from torch import Tensor, nn

from .. import quantized
from ..errors import LoraKitError
from . import compose
from .algos import NetworkSpec

_COMMON = ("dropout", "rank_dropout", "module_dropout", "rank_dropout_scale")


def dense_weight(target) -> Tensor:
    """The named layer's weight in fp32 (gathered from its pieces, dequantized): what DoRA's magnitude starts from."""
    sites = target.sites()
    return compose.gather(sites, [quantized.dequantize(m.weight, torch.float32) for m, _ in sites])


def check_layer(spec: NetworkSpec, target, rank: int) -> None:
    """Refuse a layer the algorithm cannot adapt, naming it (before any parameter is made)."""
    m = target.module
    if isinstance(m, nn.Conv2d) and m.groups != 1:
        raise LoraKitError(f"--network {spec.algo} cannot adapt {target.name}: a grouped convolution")
    if spec.algo == "oft":
        from lycoris.functional.general import factorization

        rows = quantized.logical_shape(m.weight)[0]
        block = factorization(rows, rank)[0]
        if block < 2:
            raise LoraKitError(f"--network oft cannot adapt {target.name}: its {rows} output rows split into no "
                               f"blocks of 2 to {rank} rows (OFT turns each block; give another --rank)")


def _shell(target_module: nn.Module, weight: Tensor | None) -> nn.Module:
    """A bias-free stand-in of the named layer for LyCORIS' constructor: its shape and geometry, and
    its weight only where the module reads it (DoRA's initial magnitude); meta otherwise."""
    device = "meta" if weight is None else "cpu"
    if isinstance(target_module, nn.Linear):
        layer = nn.Linear(target_module.in_features, target_module.out_features, bias=False, device=device)
    else:
        m = target_module
        layer = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                          m.groups, bias=False, device=device)
    if weight is not None:
        layer.weight = nn.Parameter(weight.detach().to("cpu", torch.float32).reshape(layer.weight.shape),
                                    requires_grad=False)
    return layer


class LycorisAdapter(nn.Module):
    """One LyCORIS module on one named layer; `delta_weight(W)` is its ΔW (fp32, differentiable)."""

    def __init__(self, spec: NetworkSpec, target_module: nn.Module, rank: int, alpha: float | None,
                 layer_weight: Callable[[], Tensor] | None = None, *, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0):
        super().__init__()
        from lycoris.logging import logger
        from lycoris.modules import DiagOFTModule, LoConModule, LohaModule, LokrModule

        logger.setLevel(max(logger.level, logging.WARNING))  # its per-layer notices of block sizes

        algo = spec.lycoris_algo
        self.algo = algo
        self.dora = spec.dora and algo != "oft"
        self.depends_on_weight = self.dora or algo == "oft"
        self.kind = "conv" if isinstance(target_module, nn.Conv2d) else "linear"
        self.shape = tuple(quantized.logical_shape(target_module.weight))
        self.multiplier = 1.0
        self.module_dropout = module_dropout
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        weight = layer_weight() if self.dora else None
        org = _shell(target_module, weight)
        common = dict(rank_dropout=rank_dropout, module_dropout=0.0,
                      rank_dropout_scale=bool(spec.get("rank_dropout_scale")))
        if algo == "oft":
            self.module = DiagOFTModule("", org, lora_dim=rank, constraint=float(spec.get("constraint", 0.0)),
                                        **common)
        else:
            cls = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}[algo]
            extra = {k: spec.get(k) for k in ("factor", "decompose_both", "full_matrix", "unbalanced_factorization")
                     if algo == "lokr" and spec.get(k) is not None}
            self.module = cls("", org, lora_dim=rank, alpha=alpha, use_tucker=bool(spec.get("use_tucker")),
                              weight_decompose=self.dora, wd_on_out=False, rs_lora=bool(spec.get("rs_lora")),
                              bypass_mode=False, **common, **extra)
        # the stand-in served the constructor only: no reference to it (nor to its weight) is kept
        self.module.org_module = [None]
        self.module.org_forward = None
        self._call = None

    @property
    def rank(self) -> int:
        return int(self.module.lora_dim) if self.algo != "oft" else int(self.module.block_size)

    def _low_rank_delta(self) -> Tensor:
        """ΔW of the factors, alpha/rank applied, LyCORIS' rank dropout in training (no DoRA, no multiplier)."""
        m = self.module
        if self.algo == "locon":
            return (m.make_weight(device=m.lora_down.weight.device) * m.scale).reshape(self.shape)
        return (m.get_weight(self.shape) * m.scalar).reshape(self.shape)

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        """ΔW in fp32, without the multiplier; DoRA's and OFT's from `base_weight`, the weight it lands on."""
        if self.depends_on_weight and base_weight is None:
            raise ValueError(f"a {'DoRA' if self.dora else 'OFT'} ΔW depends on the weight it lands on: pass it")
        if self.algo == "oft":
            from lycoris.functional.diag_oft import diff_weight

            m = self.module
            w = base_weight.to(m.oft_blocks.device, torch.float32)
            return diff_weight(w, m.oft_blocks.float(), None, constraint=m.constraint).float()
        delta = self._low_rank_delta().float()
        if self.dora:
            from lycoris.functional.general import weight_decompose

            w = base_weight.to(delta.device, torch.float32)
            delta = weight_decompose(w + delta, self.module.dora_scale.float(), 1, False) - w
        return delta

    def call_delta(self, x: Tensor, pieces: int, layer_weight: Callable[[], Tensor | None]) -> Tensor | None:
        """ΔW for one call of the named layer, or None when module dropout skips it. The pieces of a fused
        layer (called one after another on the same input) share one ΔW and one draw of each dropout,
        as the fused layer does; the input is held by a weak reference only."""
        call = self._call
        if call is None or call[0]() is not x or call[2] >= pieces:
            skip = self.training and self.module_dropout and bool(torch.rand(()) < self.module_dropout)
            call = [weakref.ref(x), None if skip else self.delta_weight(layer_weight()), 0]
            self._call = call
        call[2] += 1
        delta = call[1]
        if call[2] >= pieces:
            self._call = None
        return delta

    def kohya_tensors(self) -> dict[str, Tensor]:
        """The module's tensors as A1111, ComfyUI and LyCORIS read them (LyCORIS' own state dict)."""
        out = dict(self.module.state_dict())  # LyCORIS' own (its `custom_state_dict` where it has one)
        out["alpha"] = out["alpha"].detach().float().reshape(())
        return out
