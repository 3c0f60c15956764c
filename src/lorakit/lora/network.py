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

from .. import quantized
from . import compose
from . import functional as LF
from . import live
from .algos import NetworkSpec
from .modules import DeltaModule, LoRAModule
from .targets import ModelParts, Target, select


class _MergeState:
    """Per base layer: the networks merged into it, in merge order, and when needed its original weight.

    fp32 layers are unmerged by subtracting the same fp32 ΔW (error within an ulp, and no copy of
    the model in memory); fp16/bf16 layers and layers holding a DoRA (whose ΔW depends on the
    weight it lands on, so that subtracting cannot undo it) keep the original: an unmerge puts it
    back and merges again, in their order, the networks that stay, which gives exactly the weight
    those alone would have given, and the original itself bit for bit once none stays. A quantized
    layer (fp8/int8/nf4) keeps its quantized weight itself, no copy: merging replaced it with a
    plain one (compose.merge_into), and the unmerge puts the very same tensor back.
    """

    def __init__(self):
        self.original: Tensor | None = None
        # (network id, adapter name) → (network, adapter name, rows of the adapter this layer holds)
        self.merged: dict[tuple[int, str], tuple["LoRANetwork", str, Tensor | None]] = {}

    def rebuild_original(self, module: nn.Module) -> Tensor:
        """The weight before any merge, for a layer merged so far without a copy: fp32 and only
        weight-independent ΔW, which subtract back within an ulp (as their unmerge would)."""
        w = module.weight.detach().to(torch.float32, copy=True)
        for net, name, rows in reversed(list(self.merged.values())):
            compose.add_site_delta(w, net.adapters[name], rows, -net.strength(name))
        return w.to(module.weight.dtype)


def _merge_state(module: nn.Module) -> _MergeState:
    state = getattr(module, "_lorakit_merge", None)
    if state is None:
        state = _MergeState()
        module._lorakit_merge = state
    return state


class LoRANetwork(nn.Module):
    """kohya's LoRANetwork, kept small: adapters keyed by kohya name, one multiplier (times a per-module
    scale where A1111's te/unet weights or block weights set one)."""

    def __init__(self, multiplier: float = 1.0):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.targets: dict[str, Target] = {}
        self._multiplier = float(multiplier)
        self._scales: dict[str, float] = {}  # adapter name → factor on the multiplier (1 when absent)
        self._live: list[nn.Module] = []  # the layers this network runs on the fly
        self.merged = False

    # building -----------------------------------------------------------------------------
    @classmethod
    def create(cls, parts: ModelParts, *, rank: int = 16, alpha: float | None = None, preset: str = "transformer",
               conv_rank: int | None = None, conv_alpha: float | None = None, unet: bool = True,
               text_encoder: bool = True, dropout: float = 0.0, rank_dropout: float = 0.0,
               module_dropout: float = 0.0, init: str = "kaiming", multiplier: float = 1.0,
               spec: NetworkSpec | None = None) -> "LoRANetwork":
        """A fresh trainable network on the layers a preset selects (kxk convs get `conv_rank`); `spec`
        names the algorithm (lora by default) and its options (algos.py)."""
        spec = spec or NetworkSpec()
        net = cls(multiplier)
        for t in select(parts, preset, unet=unet, text_encoder=text_encoder):
            r, a = rank, alpha
            if t.is_conv3:
                if not conv_rank:
                    continue
                r, a = conv_rank, conv_alpha if conv_alpha is not None else conv_rank
            if not spec.uses_lycoris:
                if spec.get("rs_lora"):  # the file LyCORIS writes for it: alpha·√r, so that alpha/r is alpha/√r
                    a = (r if a is None else a) * r ** 0.5
                net.add(t, LoRAModule(t.module, r, a, dropout=dropout, rank_dropout=rank_dropout,
                                      module_dropout=module_dropout, init=init))
                continue
            from .lycoris_adapter import LycorisAdapter, check_layer, dense_weight

            check_layer(spec, t, r)
            net.add(t, LycorisAdapter(spec, t.module, r, a, lambda t=t: dense_weight(t), dropout=dropout,
                                      rank_dropout=rank_dropout, module_dropout=module_dropout))
        return net

    def add(self, target: Target, adapter: nn.Module) -> None:
        adapter.multiplier = self._multiplier * self._scales.get(target.name, 1.0)
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
        self._restrength(float(value), self._scales)

    def strength(self, name: str) -> float:
        """The factor adapter `name`'s ΔW is added with: the multiplier times its own scale."""
        return self._multiplier * self._scales.get(name, 1.0)

    def set_scales(self, scales: dict[str, float]) -> None:
        """Per-adapter factors on the multiplier (adapters not named: 1), e.g. a text-encoder weight
        apart from the UNet's, or a weight per UNet block."""
        self._restrength(self._multiplier, {k: float(v) for k, v in scales.items()})

    def _restrength(self, multiplier: float, scales: dict[str, float]) -> None:
        old = {name: self.strength(name) for name in self.adapters}
        self._multiplier, self._scales = multiplier, scales
        for name, adapter in self.adapters.items():
            adapter.multiplier = self.strength(name)
        if self.merged:  # in place: the networks merged after this one stay after it
            with torch.no_grad():
                for name, adapter in self.adapters.items():
                    if old[name] != self.strength(name):
                        self._restrength_target(name, adapter, old[name])

    # on the fly ------------------------------------------------------------------------------
    def apply(self) -> "LoRANetwork":
        """Run every adapter on the fly: its layer adds the adapter's output (see live.py)."""
        if self._live or self.merged:
            return self
        for name, adapter in self.adapters.items():
            sites = self.targets[name].sites()
            for module, rows in sites:
                live.attach(module, id(self), adapter, rows, sites)
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
            self._merge_target(name, adapter)
        self.merged = True
        return self

    @torch.no_grad()
    def unmerge(self) -> "LoRANetwork":
        """Give the layers back their weights: exactly the original when no other network remains."""
        if not self.merged:
            return self
        for name, adapter in self.adapters.items():
            self._unmerge_target(name, adapter)
        self.merged = False
        return self

    def _merge_target(self, name: str, adapter: nn.Module) -> None:
        """Merge one adapter into every live layer of its target, after whatever they hold."""
        sites = self.targets[name].sites()
        states = [_merge_state(module) for module, _ in sites]
        keep = (compose.depends_on_weight(adapter) or any(module.weight.dtype != torch.float32 for module, _ in sites)
                or any(quantized.is_quantized(module.weight) for module, _ in sites)
                or any(s.original is not None for s in states))
        if keep:
            for (module, _), state in zip(sites, states):
                if state.original is None:
                    state.original = _original(module, state)
        compose.merge_into(sites, adapter, self.strength(name))
        for (_, rows), state in zip(sites, states):
            state.merged[(id(self), name)] = (self, name, rows)

    def _unmerge_target(self, name: str, adapter: nn.Module) -> None:
        sites = self.targets[name].sites()
        states = [module._lorakit_merge for module, _ in sites]
        for state in states:
            state.merged.pop((id(self), name), None)
        if all(s.original is None for s in states):
            for module, rows in sites:
                compose.add_site_delta(module.weight, adapter, rows, -self.strength(name))
        else:
            _remerge(sites, states)
        for (module, _), state in zip(sites, states):
            if not state.merged:
                del module._lorakit_merge

    def _restrength_target(self, name: str, adapter: nn.Module, old: float) -> None:
        sites = self.targets[name].sites()
        states = [module._lorakit_merge for module, _ in sites]
        if all(s.original is None for s in states):
            for module, rows in sites:
                compose.add_site_delta(module.weight, adapter, rows, -old)
                compose.add_site_delta(module.weight, adapter, rows, self.strength(name))
        else:
            _remerge(sites, states)

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


def _original(module: nn.Module, state: _MergeState) -> Tensor:
    """What an unmerge puts back: a quantized weight itself (merging replaces it, never changes it), else
    a copy of the weight, rebuilt when earlier merges went in without one."""
    if quantized.is_quantized(module.weight):
        return module.weight
    return state.rebuild_original(module) if state.merged else module.weight.detach().clone()


def _remerge(sites: list, states: list[_MergeState]) -> None:
    """The original weights back, then the networks still merged, in the order they were merged."""
    for (module, _), state in zip(sites, states):
        if quantized.is_quantized(state.original):
            module.weight = state.original  # the quantized Parameter itself
        else:
            module.weight.copy_(state.original)
    for net, name, _ in list(states[0].merged.values()):
        compose.merge_into(net.targets[name].sites(), net.adapters[name], net.strength(name))


def _check_shapes(name: str, kind: str, w: Mapping[str, Tensor], module: nn.Module, alpha, source: str) -> None:
    from ..errors import LoraKitError

    shape = quantized.logical_shape(module.weight)
    if kind == "unknown":
        raise LoraKitError(f"module {name} has keys {sorted(w)} that form no known adapter", source)
    if "dora_scale" in w:
        try:
            LF.dora_axis(tuple(w["dora_scale"].shape), shape)
        except ValueError as exc:
            raise LoraKitError(f"module {name}: {exc}", source) from None
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
    if kind == "oft":
        blocks = w["oft_blocks"]
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2] or blocks.shape[0] * blocks.shape[1] != shape[0]:
            raise LoraKitError(f"module {name}: oft_blocks {tuple(blocks.shape)} do not split the layer's "
                               f"{shape[0]} output rows into square blocks", source)
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
