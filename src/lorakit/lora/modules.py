"""nn.Module wrappers: one adapter for one Linear/Conv2d of the base model.

An adapter never replaces the layer it adapts: on the fly the layer runs with its adapters
(lora/live.py gives the layer instance a forward that adds them), merged the network adds their ΔW
to the layer's weight. `LoRAModule` is the trainable
low-rank branch; `DeltaModule` carries any other kind read from a file (LoHa, LoKr, Tucker,
DoRA, OFT) and applies its full ΔW, as A1111 and ComfyUI do (the trainable LoHa/LoKr/DoRA/OFT
adapters are LyCORIS' modules: lycoris_adapter.py).
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantized import logical_shape
from . import functional as LF


def layer_kind(base: nn.Module) -> str:
    if isinstance(base, nn.Linear):
        return "linear"
    if isinstance(base, nn.Conv2d):
        return "conv"
    raise TypeError(f"LoRA adapts Linear and Conv2d layers, not {type(base).__name__}")


def _conv_args(base: nn.Conv2d) -> dict:
    return dict(stride=base.stride, padding=base.padding, dilation=base.dilation)


def _run_in(layer: nn.Module, x: Tensor) -> Tensor:
    """A bias-free Linear/Conv2d in x's dtype, its weight cast for the call (autograd reaches the
    fp32 master weight through the cast): under bf16/fp16 the branch costs what the frozen layer's
    arithmetic costs, where casting the activations up to fp32 copied every one of them and ran the
    branch's products and their backward in fp32 (20 % of a bf16 SD 1.5 step here). This is what
    autocast does to a layer, without autocast's per-operation dispatch."""
    w = layer.weight if layer.weight.dtype == x.dtype else layer.weight.to(x.dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(x, w)
    return layer._conv_forward(x, w, None)


class LoRAModule(nn.Module):
    """h = W0·x + m·(alpha/r)·up(down(x)); down Kaiming-uniform, up zero (kohya's init)."""

    depends_on_weight = False  # ΔW = (alpha/r)·up·down whatever the weight it lands on

    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, *, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0, init: str | None = "kaiming",
                 device: torch.device | str | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        self.kind = layer_kind(base)
        if self.kind == "linear":
            self.lora_down = nn.Linear(base.in_features, rank, bias=False, device=device)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False, device=device)
        else:
            if base.groups != 1:
                raise ValueError("grouped convolutions are not adapted")
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, bias=False, device=device,
                                       **_conv_args(base))
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False, device=device)
        self.register_buffer("alpha", torch.tensor(float(rank if alpha is None else alpha)))
        self.rank = rank
        self.multiplier = 1.0
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        if init is not None:
            self.reset_parameters(init)

    def reset_parameters(self, init: str = "kaiming") -> None:
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_down.weight, std=1.0 / self.rank)
        else:
            raise ValueError(f"unknown init {init!r} (kaiming or gaussian)")
        nn.init.zeros_(self.lora_up.weight)

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def forward(self, x: Tensor) -> Tensor:
        """The branch alone: m·(alpha/r)·up(down(x)), with kohya's optional dropouts in training."""
        down = self._down(x)
        if down is None:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        h, scale = down
        return _run_in(self.lora_up, h) * (self.multiplier * scale)

    def _down(self, x: Tensor) -> tuple[Tensor, float] | None:
        """down(x) and the scale its up output takes, after kohya's three dropouts (sd-scripts
        networks/lora.py); None when module dropout skips the adapter for this call. `dropout` drops
        single entries of down(x) (torch's dropout, scaled by 1/(1-p)); `rank_dropout` drops whole
        ranks per sample, one (batch, rank) mask shared by every token and pixel, the scale then
        1/(1-p) larger; `module_dropout` skips the whole branch."""
        training = self.training
        if training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return None
        h = _run_in(self.lora_down, x)
        scale = self.scale
        if training and self.dropout:
            h = F.dropout(h, p=self.dropout)
        if training and self.rank_dropout:
            h = h * self._rank_mask(h)
            scale = scale / (1.0 - self.rank_dropout)
        return h, scale

    def _rank_mask(self, h: Tensor) -> Tensor:
        """One keep/drop per (sample, rank), broadcast over tokens (Linear) or pixels (Conv2d)."""
        batch = h.shape[0] if h.dim() > 1 else 1
        keep = (torch.rand((batch, self.rank), device=h.device) > self.rank_dropout).to(h.dtype)
        if h.dim() == 1:
            return keep[0]
        if self.kind == "conv":
            return keep.reshape(batch, self.rank, *[1] * (h.dim() - 2))
        return keep.reshape(batch, *[1] * (h.dim() - 2), self.rank)

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        """ΔW in fp32 (without the multiplier), in the shape of the adapted weight."""
        up, down = self.lora_up.weight.float(), self.lora_down.weight.float()
        shape = (up.shape[0], *down.shape[1:])
        return LF.lora_delta(up, down, float(self.alpha), shape)

    def forward_rows(self, x: Tensor, rows: Tensor, pieces: int) -> Tensor:
        """The branch's output rows `rows` only: the part of a fused layer that one live layer holds.

        The live layers of one fused layer (to_q, to_k, to_v of SD 3.x/Flux `qkv`; `pieces` of them)
        are called one after another on the same input; they share one down(x) and one draw of each
        dropout, as the fused layer kohya trains does, not a down(x) and a mask per piece."""
        down = self._shared_down(x, rows, pieces)
        if down is None:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        h, scale = down
        up = self.lora_up.weight[rows.to(self.lora_up.weight.device)].to(x.dtype)
        return F.linear(h, up) * (self.multiplier * scale)

    def _shared_down(self, x: Tensor, rows: Tensor, pieces: int) -> tuple[Tensor, float] | None:
        """`_down(x)` once per call of the fused layer, kept until every piece has taken it (a piece
        that asks again, or another input, starts a new call). The input is held by a weak
        reference: no activation outlives its forward here."""
        call = self.__dict__.get("_rows_call")
        if call is None or call[0]() is not x or id(rows) in call[2]:
            call = (weakref.ref(x), self._down(x), set())
            self._rows_call = call
        call[2].add(id(rows))
        if len(call[2]) >= pieces:
            del self._rows_call
        return call[1]

    @torch.no_grad()
    def add_delta_to(self, weight: Tensor, multiplier: float, rows: Tensor | None = None) -> None:
        """weight += m·(alpha/r)·up·down as one in-place GEMM (no ΔW temporary) for fp32 weights;
        with `rows`, only those rows of up (the weight is one piece of a fused layer)."""
        up = self.lora_up.weight.reshape(self.lora_up.weight.shape[0], -1)
        if rows is not None:
            up = up[rows.to(up.device)]
        up = up.to(weight.device, torch.float32)
        down = self.lora_down.weight.reshape(self.rank, -1).to(weight.device, torch.float32)
        weight.view(weight.shape[0], -1).addmm_(up, down, alpha=multiplier * self.scale)

    def kohya_tensors(self) -> dict[str, Tensor]:
        return {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight,
                "alpha": self.alpha}

    @classmethod
    def from_tensors(cls, base: nn.Module, down: Tensor, up: Tensor, alpha: float | None) -> "LoRAModule":
        """Wrap loaded tensors as they are: no fresh weights initialised and then overwritten.

        Building the layers through nn.Linear's constructor costs ~0.5 ms each (it initialises
        weights), most of the load time of a 264-module LoRA; loading only needs the shells.
        """
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.kind = layer_kind(base)
        rank = down.shape[0]
        if module.kind == "linear":
            module.lora_down = _linear_shell(down.reshape(rank, -1))
            module.lora_up = _linear_shell(up.reshape(up.shape[0], rank))
        else:
            module.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, bias=False, device="meta",
                                         **_conv_args(base))
            module.lora_up = nn.Conv2d(rank, base.out_channels, 1, bias=False, device="meta")
            module.lora_down.weight = nn.Parameter(down.reshape(module.lora_down.weight.shape), requires_grad=False)
            module.lora_up.weight = nn.Parameter(up.reshape(module.lora_up.weight.shape), requires_grad=False)
        module.register_buffer("alpha", torch.tensor(float(rank if alpha is None else alpha)))
        module.rank = rank
        module.multiplier = 1.0
        module.dropout = module.rank_dropout = module.module_dropout = 0.0
        return module


def _linear_shell(weight: Tensor) -> nn.Linear:
    """An nn.Linear around an existing weight, without running its initialiser."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.register_parameter("bias", None)
    return layer


class DeltaModule(nn.Module):
    """Any adapter kind read from a file, applied through its full ΔW (LoHa, LoKr, Tucker, DoRA):
    merged, or on the fly as W + ΔW or x·ΔWᵀ beside the layer's output (live.py)."""

    def __init__(self, base: nn.Module, kind: str, tensors: dict[str, Tensor], alpha: float | None):
        super().__init__()
        self.kind = kind
        self.layer = layer_kind(base)
        self.shape = logical_shape(base.weight)
        self.alpha_value = alpha
        self.multiplier = 1.0
        self._names = {}
        for key, value in tensors.items():
            buf = key.replace(".", "__")
            self._names[key] = buf
            self.register_buffer(buf, value)
        # DoRA rescales, OFT turns the weight it lands on: ΔW is computed from that weight (compose.py)
        self.depends_on_weight = LF.depends_on_weight(kind, tensors)

    def tensors(self) -> dict[str, Tensor]:
        return {key: getattr(self, buf) for key, buf in self._names.items()}

    def delta_weight(self, base_weight: Tensor | None = None) -> Tensor:
        """ΔW in fp32 (without the multiplier); DoRA's from `base_weight`, the whole weight it lands on."""
        t = {k: v.float() for k, v in self.tensors().items()}
        if self.depends_on_weight and base_weight is None:
            raise ValueError(f"a {self.kind} ΔW with DoRA or OFT depends on the weight it lands on: pass that weight")
        if self.kind == "oft":
            return LF.oft_delta(base_weight.to(t["oft_blocks"].device, torch.float32), t["oft_blocks"],
                                self.alpha_value)
        dora = t.pop("dora_scale", None)
        delta = LF.module_delta(self.kind, t, self.alpha_value, self.shape)
        if dora is not None:
            delta = LF.dora_delta(base_weight.to(delta.device, torch.float32), delta, dora)
        return delta

    def kohya_tensors(self) -> dict[str, Tensor]:
        out = dict(self.tensors())
        if self.alpha_value is not None:
            out["alpha"] = torch.tensor(float(self.alpha_value))
        return out
