"""A set of adapters on one model: attach on the fly, merge into the weights, unmerge exactly.

Written by hand rather than with PEFT: PEFT replaces each layer with a wrapper (slow to inject
and to remove: the cost behind diffusers' multi-second load/fuse), does its unmerge by
subtracting in the model's dtype (inexact in fp16) and has no LoHa/LoKr/DoRA-from-file path
shared with LoRA. Here an adapter runs on the fly (live.py: its layer's forward adds the branch or
uses W + ΔW, whichever is cheaper per call) or as an in-place ΔW, and the original weight is given
back exactly on unmerge (see _MergeState).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from . import functional as LF
from . import live
from .modules import DeltaModule, LoRAModule
from .targets import ModelParts, Target, select


class _MergeState:
    """Per base layer: the networks merged into it and, when needed, its original weight.

    fp32 layers are unmerged by subtracting the same fp32 ΔW (error within an ulp, and no
    copy of the model in memory); fp16/bf16 layers and DoRA (whose ΔW depends on W) keep the
    original so that the last unmerge gives it back bit for bit.
    """

    def __init__(self):
        self.original: Tensor | None = None
        # (network id, adapter name) → (network, adapter name, rows of the adapter this layer holds)
        self.merged: dict[tuple[int, str], tuple["LoRANetwork", str, Tensor | None]] = {}

    def base_weight(self, module: nn.Module) -> Tensor:
        return self.original if self.original is not None else module.weight


def _merge_state(module: nn.Module) -> _MergeState:
    state = getattr(module, "_lorakit_merge", None)
    if state is None:
        state = _MergeState()
        module._lorakit_merge = state
    return state


def _needs_original(module: nn.Module, adapter: nn.Module) -> bool:
    return module.weight.dtype != torch.float32 or "dora_scale" in getattr(adapter, "_names", {})


class LoRANetwork(nn.Module):
    """kohya's LoRANetwork, kept small: adapters keyed by kohya name, one multiplier."""

    def __init__(self, multiplier: float = 1.0):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.targets: dict[str, Target] = {}
        self._multiplier = float(multiplier)
        self._live: list[nn.Module] = []  # the layers this network runs on the fly
        self.merged = False

    # building -----------------------------------------------------------------------------
    @classmethod
    def create(cls, parts: ModelParts, *, rank: int = 16, alpha: float | None = None, preset: str = "transformer",
               conv_rank: int | None = None, conv_alpha: float | None = None, unet: bool = True,
               text_encoder: bool = True, dropout: float = 0.0, rank_dropout: float = 0.0,
               module_dropout: float = 0.0, init: str = "kaiming", multiplier: float = 1.0) -> "LoRANetwork":
        """A fresh trainable network on the layers a preset selects (kxk convs get `conv_rank`)."""
        net = cls(multiplier)
        for t in select(parts, preset, unet=unet, text_encoder=text_encoder):
            r, a = rank, alpha
            if t.is_conv3:
                if not conv_rank:
                    continue
                r, a = conv_rank, conv_alpha if conv_alpha is not None else conv_rank
            net.add(t, LoRAModule(t.module, r, a, dropout=dropout, rank_dropout=rank_dropout,
                                  module_dropout=module_dropout, init=init))
        return net

    def add(self, target: Target, adapter: nn.Module) -> None:
        adapter.multiplier = self._multiplier
        self.adapters[target.name] = adapter
        self.targets[target.name] = target

    @classmethod
    def from_modules(cls, parts: ModelParts, modules: Mapping[str, Mapping[str, Tensor]],
                     multiplier: float = 1.0, source: str = "LoRA") -> "LoRANetwork":
        """Build from kohya-named modules ({name: {subkey: tensor}}); formats/ checks names first."""
        from ..errors import LoraKitError

        index = parts.index()
        net = cls(multiplier)
        spelled: dict[str, str] = {}
        for name, tensors in modules.items():
            target = index.get(name)
            if target is None:
                raise LoraKitError(f"module {name} is not in the model", source)
            if target.name in spelled:  # one layer under two spellings: applying one would drop the other
                raise LoraKitError(f"modules {spelled[target.name]} and {name} are the same layer "
                                   f"({target.name}) spelled two ways", source)
            spelled[target.name] = name
            kind = LF.module_kind(tensors)
            alpha_t = tensors.get("alpha")
            alpha = None if alpha_t is None else float(alpha_t)
            weights = {k: v for k, v in tensors.items() if k != "alpha"}
            _check_shapes(name, kind, weights, target.module, alpha, source)
            if kind == "lora" and "lora_mid.weight" not in weights and "dora_scale" not in weights:
                adapter = LoRAModule.from_tensors(target.module, weights["lora_down.weight"],
                                                  weights["lora_up.weight"], alpha)
            else:
                adapter = DeltaModule(target.module, kind, weights, alpha)
            net.add(target, adapter)
        return net

    # strength --------------------------------------------------------------------------------
    @property
    def multiplier(self) -> float:
        return self._multiplier

    @multiplier.setter
    def multiplier(self, value: float) -> None:
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        self._multiplier = float(value)
        for adapter in self.adapters.values():
            adapter.multiplier = self._multiplier
        if was_merged:
            self.merge()

    # on the fly ------------------------------------------------------------------------------
    def apply(self) -> "LoRANetwork":
        """Run every adapter on the fly: its layer adds the adapter's output (see live.py)."""
        if self._live or self.merged:
            return self
        for name, adapter in self.adapters.items():
            for module, rows in self.targets[name].sites():
                live.attach(module, id(self), adapter, rows)
                self._live.append(module)
        return self

    @contextmanager
    def bypassed(self):
        """The base model alone for a while (on-the-fly adapters detached, nothing recomputed), e.g.
        for the frozen base's own prediction as a training target."""
        if self.merged:
            raise RuntimeError("bypassed() needs the adapters on the fly, not merged")
        attached = bool(self._live)
        self.remove()
        try:
            yield self
        finally:
            if attached:
                self.apply()

    def remove(self) -> None:
        for module in self._live:
            live.detach(module, id(self))
        self._live.clear()

    # merged ------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> "LoRANetwork":
        """W ← W + m·ΔW, computed in fp32 whatever the model's dtype; the layers leave on-the-fly mode first."""
        if self.merged:
            return self
        self.remove()
        for name, adapter in self.adapters.items():
            for module, rows in self.targets[name].sites():
                self._merge_site(name, adapter, module, rows)
        self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> "LoRANetwork":
        """Give the layers back their weights: exactly the original when no other network remains."""
        if not self.merged:
            return self
        for name in self.adapters:
            for module, rows in self.targets[name].sites():
                self._unmerge_site(name, module, rows)
        self.merged = False
        return self

    def _merge_site(self, name: str, adapter: nn.Module, module: nn.Module, rows: Tensor | None) -> None:
        state = _merge_state(module)
        w = module.weight
        if state.original is None and _needs_original(module, adapter):
            if state.merged:  # fp32 layer merged before without a copy: rebuild the original first
                raise RuntimeError("merge DoRA networks before other networks on fp32 models")
            state.original = w.detach().clone()
        if w.dtype == torch.float32:
            add_site_delta(w, adapter, state.base_weight(module), rows, self._multiplier)
        else:
            w.copy_(add_site_delta(w.float(), adapter, state.base_weight(module), rows, self._multiplier))
        state.merged[(id(self), name)] = (self, name, rows)

    def _unmerge_site(self, name: str, module: nn.Module, rows: Tensor | None) -> None:
        state: _MergeState = module._lorakit_merge
        state.merged.pop((id(self), name), None)
        adapter = self.adapters[name]
        if state.original is None and isinstance(adapter, LoRAModule):
            adapter.add_delta_to(module.weight, -self._multiplier, rows)
        elif state.original is None:
            delta = _site_delta(adapter, module.weight, rows).to(module.weight.device)
            module.weight.sub_(delta, alpha=self._multiplier)
        elif not state.merged:
            module.weight.copy_(state.original)
        else:
            w = state.original.to(torch.float32, copy=True)
            for other, other_name, other_rows in state.merged.values():
                add_site_delta(w, other.adapters[other_name], state.original, other_rows, other.multiplier)
            module.weight.copy_(w)
        if not state.merged:
            del module._lorakit_merge

    # export -----------------------------------------------------------------------------------
    def kohya_modules(self) -> dict[str, dict[str, Tensor]]:
        return {name: {k: v.detach() for k, v in adapter.kohya_tensors().items()}
                for name, adapter in self.adapters.items()}

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        out = {}
        for name, tensors in self.kohya_modules().items():
            for sub, t in tensors.items():
                t = t.detach().cpu()
                if dtype is not None and sub != "alpha":
                    t = t.to(dtype)
                out[f"{name}.{sub}"] = t.float() if sub == "alpha" else t.contiguous()
        return out

    def parameters_by_part(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split by model part (the text encoder may get its own LR)."""
        out: dict[str, list[nn.Parameter]] = {}
        for name, adapter in self.adapters.items():
            out.setdefault(self.targets[name].part, []).extend(p for p in adapter.parameters() if p.requires_grad)
        return out

    def __len__(self) -> int:
        return len(self.adapters)


def add_site_delta(weight: Tensor, adapter: nn.Module, base_weight: Tensor, rows: Tensor | None,
                   multiplier: float) -> Tensor:
    """weight (fp32) += m·ΔW of one live layer, in place and returned: a LoRA as one GEMM into the
    weight (no ΔW temporary), any other kind through its full ΔW. Merging and the on-the-fly
    effective weight both come here, so they round alike."""
    if isinstance(adapter, LoRAModule):
        adapter.add_delta_to(weight, multiplier, rows)
    else:
        weight.add_(_site_delta(adapter, base_weight, rows).to(weight.device), alpha=multiplier)
    return weight


def _site_delta(adapter: nn.Module, base_weight: Tensor, rows: Tensor | None) -> Tensor:
    """ΔW for one live layer: the adapter's, or its rows when the layer is a piece of a fused one."""
    if rows is None:
        return adapter.delta_weight(base_weight)
    if "dora_scale" in getattr(adapter, "_names", {}):
        raise ValueError("DoRA on a layer the model holds as several pieces is not supported")
    return adapter.delta_weight()[rows.to(base_weight.device)]


def _check_shapes(name: str, kind: str, w: Mapping[str, Tensor], module: nn.Module, alpha, source: str) -> None:
    from ..errors import LoraKitError

    shape = tuple(module.weight.shape)
    if kind == "unknown":
        raise LoraKitError(f"module {name} has keys {sorted(w)} that form no known adapter", source)
    if kind == "lora":
        down, up = w["lora_down.weight"], w["lora_up.weight"]
        in_dim = down.shape[1] if down.dim() > 1 else -1
        bad = (up.shape[0] != shape[0] or in_dim != shape[1]
               or (len(shape) == 4 and "lora_mid.weight" not in w and tuple(down.shape[2:]) != shape[2:])
               or (len(shape) == 2 and down.dim() != 2) or up.reshape(up.shape[0], -1).shape[1] != down.shape[0])
        if bad:
            raise LoraKitError(
                f"module {name}: lora_down {tuple(down.shape)} / lora_up {tuple(up.shape)} do not fit the "
                f"layer's weight {shape}", source)
        return
    try:
        t = {k: v.float() for k, v in w.items() if k != "dora_scale"}
        LF.module_delta(kind, t, alpha, shape)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise LoraKitError(f"module {name}: {kind} tensors do not fit the layer's weight {shape} ({exc})",
                           source) from None


def attach_all(networks: Iterable[LoRANetwork], merge: bool) -> None:
    for net in networks:
        net.merge() if merge else net.apply()
