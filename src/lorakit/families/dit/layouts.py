"""LoRA files of a DiT/MMDiT family in the four layouts found in the wild, read into and written
from kohya modules ({`lora_unet_<original path>` / `lora_te1_…`: {subkey: tensor}}).

- kohya (sd-scripts): `lora_unet_<original path>` with fused q/k/v (and, in Flux's single blocks,
  q | k | v | MLP), `lora_te1_` … per text encoder; `alpha` per module.
- diffusers/PEFT: `transformer.<diffusers path>.lora_A/B.weight` with split `to_q/to_k/to_v`,
  `text_encoder{,_2,_3}.<path>`; alphas only in `lora_adapter_metadata`, which ComfyUI ignores.
  Written with each module's scale folded into `lora_B` and alpha = rank, so diffusers and ComfyUI
  apply the same strength.
- ComfyUI: `diffusion_model.<original path>.lora_up/down.weight`, `.alpha`;
  `text_encoders.<clip_l|clip_g|t5xxl>.transformer.<path>`.
- OneTrainer: `lora_transformer_<diffusers path with _>` (split) with kohya sub-keys.

One `DitLayouts` per family says what differs: its name tables (a naming module, see
`dit/naming.py`) and where its text encoders go in each layout. Split ↔ fused is exact
(lora/fused.py): one `down` when the pieces share it, else a block-diagonal `up`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ...errors import LoraKitError
from ...formats.diffusers_fmt import METADATA_KEY, component_configs
from ...formats.kohya import _listing, validate_module
from ...formats.modules import Modules, Shaped, algo_of, alpha_of, rank_of
from ...formats.paths import underscored_to_path
from ...formats.peft_common import fold_scale, kohya_alpha, lora_config
from ...lora import fused

LAYOUTS = ("kohya", "diffusers", "comfyui", "onetrainer")
TE_PARTS = ("te1", "te2", "te3")
_SUB_ROLE = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
             "lora_down.weight": "lora_down.weight", "lora_up.weight": "lora_up.weight", "alpha": "alpha"}
_T5_WORDS = ("wi_0", "wi_1")
_ONETRAINER = "lora_transformer_"


# ---- kohya text-encoder names ----------------------------------------------------------------------------

def _te_path(part: str, path: str) -> str:
    """A text-encoder module path as kohya names it: CLIP paths (te1, te2) under `text_model.`."""
    if part in ("te1", "te2") and not path.startswith("text_model."):
        return "text_model." + path
    return path


def te_name(part: str, path: str) -> str:
    return f"lora_{part}_" + _te_path(part, path).replace(".", "_")


def te_path_of(name: str) -> tuple[str, str]:
    """(`te1`, `text_model.encoder.layers.0.self_attn.q_proj`) from a kohya text-encoder name."""
    for part in TE_PARTS:
        prefix = f"lora_{part}_"
        if name.startswith(prefix):
            rest = name[len(prefix):]
            for word in _T5_WORDS:  # T5's gated MLP layers have "_" in their names
                rest = rest.replace(f"_{word}", "." + word.replace("_", "\0"))
            return part, underscored_to_path(rest).replace("\0", "_").replace("..", ".")
    raise LoraKitError(f"not a kohya text-encoder module name: {name}")


# ---- keys ↔ factors ----------------------------------------------------------------------------------------

def _split_sub(key: str) -> tuple[str, str] | None:
    for sub in sorted(_SUB_ROLE, key=len, reverse=True):
        if key.endswith("." + sub):
            return key[: -len(sub) - 1], _SUB_ROLE[sub]
    return None


def group(state: Mapping[str, Tensor], to_module: Callable[[str], str | None], source,
          label: str = "DiT") -> dict[str, dict[str, Tensor]]:
    """Flat keys → {module id: {kohya subkey: tensor}}; `to_module(prefix)` names the module or
    returns None for a key that does not belong (reported as unknown)."""
    out: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, value in state.items():
        split = _split_sub(key)
        module = to_module(split[0]) if split else None
        if module is None:
            unknown.append(key)
            continue
        out.setdefault(module, {})[split[1]] = value
    if unknown:
        raise LoraKitError(f"{len(unknown)} unknown key(s) in the {label} LoRA: {_listing(unknown)}", source)
    return out


def is_t5_path(path: str) -> bool:
    """Whether a text-encoder module path is T5's (`encoder.block.…`), not CLIP's."""
    return path.startswith(("encoder.block.", "shared", "encoder.final_layer_norm"))


def shape_reading(shapes: Mapping[str, Sequence[int]], to_module: Callable[[str], str | None],
                  kohya_of: Callable[[str], str]) -> dict[str, dict[str, Shaped]] | None:
    """The kohya modules a file reads into, with shape-only stand-ins, from its header (a fused
    module takes the shapes of one of its pieces: the same input width); None when `to_module`
    places some key nowhere."""
    out: dict[str, dict[str, Shaped]] = {}
    for key, shape in shapes.items():
        split = _split_sub(key)
        module = to_module(split[0]) if split else None
        if module is None:
            return None
        out.setdefault(kohya_of(module), {})[split[1]] = Shaped(shape)
    return out


def factors(where: str, t: Mapping[str, Tensor], alpha: float | None, source) -> fused.Factors:
    """One module's (down, up, alpha), its shapes checked; alpha = rank when the file has none."""
    if "lora_down.weight" not in t or "lora_up.weight" not in t:
        have = "lora_down" if "lora_down.weight" in t else "lora_up"
        raise LoraKitError(f"module {where} has {have} but not its partner", source)
    down, up = t["lora_down.weight"], t["lora_up.weight"]
    if down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]:
        raise LoraKitError(f"module {where}: lora_up {tuple(up.shape)} does not match lora_down "
                           f"{tuple(down.shape)}", source)
    if alpha is None:
        alpha = float(t["alpha"]) if "alpha" in t else float(down.shape[0])
    return fused.Factors(down, up, alpha)


def module_tensors(f: fused.Factors) -> dict[str, Tensor]:
    return {"lora_down.weight": f.down, "lora_up.weight": f.up, "alpha": torch.tensor(float(f.alpha))}


def plain(name: str, t, layout: str, source) -> fused.Factors:
    """A plain-LoRA module's factors: the layouts that split fused layers hold nothing else."""
    if algo_of(t) != "lora" or "dora_scale" in t:
        raise LoraKitError(f"module {name} is {algo_of(t)}: the {layout} layout holds plain LoRA only "
                           "(keep this file in kohya layout)", source)
    a = alpha_of(t)
    return fused.Factors(t["lora_down.weight"], t["lora_up.weight"], float(rank_of(t) if a is None else a))


def cast(t: Tensor, dtype) -> Tensor:
    t = t.detach().cpu()
    return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()


def _kohya_sub(sub: str, v: Tensor, dtype) -> Tensor:
    return v.detach().cpu().reshape(()).float() if sub == "alpha" else cast(v, dtype)


def folded(f: fused.Factors, dtype: torch.dtype | None) -> fused.Factors:
    """Scale into `up` (in the precision written), alpha = rank: the same ΔW for loaders that read
    no alpha (ComfyUI on PEFT keys)."""
    if f.scale == 1.0:
        return fused.Factors(f.down, f.up, float(f.rank))
    return fused.Factors(f.down, fold_scale(f.up, f.scale, dtype), float(f.rank))


# ---- one family's layouts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DitLayouts:
    """The four layouts of one family: its name tables and where its text encoders go.

    `naming` provides `is_sai_path`, `is_diffusers_path`, `sai_of`, `diffusers_rows`, `kohya_name`,
    `sai_path_of_kohya`, `diffusers_path_of_underscored` and optionally `fused_rows(path, sizes,
    width)` (a fused layer's row count from the pieces a file holds; default: pieces × their rows).
    The text-encoder maps go from kohya's part (`te1`…) to the diffusers component, the ComfyUI
    prefix and the OneTrainer prefix.
    """

    label: str
    naming: ModuleType
    diffusers_te: Mapping[str, str]
    comfy_te: Mapping[str, str]
    onetrainer_te: Mapping[str, str]
    check_names: bool = False  # every `lora_unet_` module of a kohya file must name a layer
    te_hint: str = ""  # what the error says the family's text encoders are

    # --- names ---------------------------------------------------------------------------------------
    def check_kohya_names(self, modules: Modules, source=None) -> None:
        """Every `lora_unet_` module must name a layer of the transformer (a typo is an error, not a skip)."""
        unknown = sorted(n for n in modules if n.startswith("lora_unet_")
                         and self.naming.sai_path_of_kohya(n) is None)
        if unknown:
            more = f" … and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise LoraKitError(f"{len(unknown)} module(s) are not layers of the {self.label} transformer: "
                               f"{', '.join(unknown[:5])}{more}", source)

    def _te_part(self, name: str, source) -> tuple[str, str]:
        part, path = te_path_of(name)
        if part not in self.diffusers_te:
            raise LoraKitError(f"module {name}: {self.label} has {self.te_hint}, not {part}", source)
        return part, path

    def _sai(self, name: str, source) -> str:
        sai = self.naming.sai_path_of_kohya(name)
        if sai is None:
            raise LoraKitError(f"module {name} is not a layer of the {self.label} transformer", source)
        return sai

    # --- split ↔ fused ---------------------------------------------------------------------------------
    def _rows(self, sai: str, sizes: dict[int, int], n: int, width: int) -> int:
        rows_of = getattr(self.naming, "fused_rows", None)
        if rows_of is not None:
            return rows_of(sai, sizes, width)
        return next(iter(sizes.values())) * n

    def fuse_diffusers(self, split: dict[str, fused.Factors], source) -> dict[str, dict[str, Tensor]]:
        """{diffusers transformer path: factors} → kohya modules on the original layers."""
        naming = self.naming
        by_sai: dict[str, dict[int, fused.Factors]] = {}
        counts: dict[str, int] = {}
        for path, f in split.items():
            try:
                sai, i, n = naming.sai_of(path)
            except KeyError:
                raise LoraKitError(f"module transformer.{path} is not a layer of the {self.label} transformer",
                                   source) from None
            by_sai.setdefault(sai, {})[i] = f
            counts[sai] = n
        modules = {}
        for sai, pieces in by_sai.items():
            width = next(iter(pieces.values())).down.shape[1]
            rows = self._rows(sai, {i: f.up.shape[0] for i, f in pieces.items()}, counts[sai], width)
            layout = naming.diffusers_rows(sai, rows, width)
            order = sorted(pieces)
            f = fused.fuse([pieces[i] for i in order], [layout[i][1] for i in order], rows)
            modules[naming.kohya_name(sai)] = module_tensors(f)
        return modules

    def split_unet(self, name: str, f: fused.Factors, source) -> list[tuple[str, fused.Factors]]:
        """A kohya transformer module → its diffusers pieces (path, factors)."""
        sai = self._sai(name, source)
        layout = self.naming.diffusers_rows(sai, f.up.shape[0], f.down.shape[1])
        return [(path, piece) for (path, _), piece in zip(layout, fused.split(f, [r for _, r in layout]))]

    # --- reading -------------------------------------------------------------------------------------------
    def _comfy_module(self, prefix: str) -> str | None:
        if prefix.startswith("diffusion_model."):
            sai = prefix[len("diffusion_model."):]
            return self.naming.kohya_name(sai) if self.naming.is_sai_path(sai) else None
        for part, head in self.comfy_te.items():
            if prefix.startswith(head + "."):
                return te_name(part, prefix[len(head) + 1:])
        return None

    def _onetrainer_module(self, prefix: str) -> str | None:
        if prefix.startswith(_ONETRAINER):
            path = self.naming.diffusers_path_of_underscored(prefix[len(_ONETRAINER):])
            return None if path is None else "transformer." + path
        for part, head in self.onetrainer_te.items():
            if prefix.startswith(head):
                return f"lora_{part}_" + prefix[len(head):]
        return None

    def _diffusers_module(self, prefix: str) -> str | None:
        """A diffusers key's module; a text-encoder key only under the component of its kind (T5
        paths under the T5 encoder, te3, CLIP paths under the others)."""
        head, _, rest = prefix.partition(".")
        if head == "transformer" and self.naming.is_diffusers_path(rest):
            return prefix
        part = self._te_of_head.get(head)
        return prefix if part and rest and is_t5_path(rest) == (part == "te3") else None

    @property
    def _te_of_head(self) -> dict[str, str]:
        return {head: part for part, head in self.diffusers_te.items()}

    def _kohya_of(self, module: str) -> str:
        """The kohya name of what a layout's key names (a split transformer piece, a diffusers text
        encoder module, or already a kohya name)."""
        head, _, path = module.partition(".")
        if head == "transformer":
            return self.naming.kohya_name(self.naming.sai_of(path)[0])
        if head in self._te_of_head:
            return te_name(self._te_of_head[head], path)
        return module

    def kohya_of_key_module(self, prefix: str) -> str | None:
        """The kohya name of the module a key's prefix names in any of the family's own layouts
        (a split diffusers piece names its fused layer); None when no layout reads it."""
        for read in (self._comfy_module, self._onetrainer_module, self._diffusers_module):
            module = read(prefix)
            if module is not None:
                return self._kohya_of(module)
        return None

    def _module_of(self, layout: str) -> Callable[[str], str | None]:
        return {"comfyui": self._comfy_module, "onetrainer": self._onetrainer_module,
                "diffusers": self._diffusers_module}[layout]

    def reading(self, shapes: Mapping[str, Sequence[int]], layout: str) -> dict[str, dict[str, Shaped]] | None:
        """What `read` makes of a file in `layout`, from names and shapes alone (see `shape_reading`)."""
        return shape_reading(shapes, self._module_of(layout), self._kohya_of)

    def read(self, state: Mapping[str, Tensor], metadata: Mapping[str, str], layout: str,
             source: str | None = None) -> dict[str, dict[str, Tensor]]:
        """A LoRA of this family in any layout → kohya modules (validated)."""
        if layout == "kohya":
            from ...formats import kohya

            modules = kohya.group(state, source)
            if self.check_names:
                self.check_kohya_names(modules, source)
        elif layout == "comfyui":
            modules = group(state, self._comfy_module, source, self.label)
        elif layout == "onetrainer":
            grouped = group(state, self._onetrainer_module, source, self.label)
            split = {k[len("transformer."):]: factors(k, t, None, source) for k, t in grouped.items()
                     if k.startswith("transformer.")}
            modules = self.fuse_diffusers(split, source)
            modules.update({k: t for k, t in grouped.items() if not k.startswith("transformer.")})
        elif layout == "diffusers":
            configs = component_configs(metadata)
            grouped = group(state, self._diffusers_module, source, self.label)
            split, modules = {}, {}
            for key, t in grouped.items():
                head, _, path = key.partition(".")
                part = "transformer" if head == "transformer" else self._te_of_head[head]
                rank = int(t["lora_down.weight"].shape[0]) if "lora_down.weight" in t else 0
                alpha = None if "alpha" in t else kohya_alpha(configs.get(head), part, path, rank)
                f = factors(key, t, alpha, source)
                if head == "transformer":
                    split[path] = f
                else:
                    modules[te_name(part, path)] = module_tensors(f)
            modules.update(self.fuse_diffusers(split, source))
        else:
            raise LoraKitError(f"unknown {self.label} layout {layout!r}", source)
        for name, t in modules.items():
            validate_module(name, t, source)
        return modules

    # --- writing -------------------------------------------------------------------------------------------
    def write_state(self, modules: Modules, layout: str, dtype: torch.dtype | None,
                    source: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
        """kohya modules → (tensors, extra metadata) in `layout` (not kohya: the kohya writer does that)."""
        if layout == "diffusers":
            return self._write_diffusers(modules, dtype, source)
        if layout not in ("comfyui", "onetrainer"):
            raise LoraKitError(f"unknown {self.label} layout {layout!r}: choose from {', '.join(LAYOUTS)}", source)
        tensors: dict[str, Tensor] = {}
        for name, t in modules.items():
            if name.startswith("lora_unet_") and layout == "onetrainer":
                for path, g in self.split_unet(name, plain(name, t, layout, source), source):
                    prefix = _ONETRAINER + path.replace(".", "_")
                    tensors[f"{prefix}.lora_down.weight"] = cast(g.down, dtype)
                    tensors[f"{prefix}.lora_up.weight"] = cast(g.up, dtype)
                    tensors[f"{prefix}.alpha"] = torch.tensor(float(g.alpha))
                continue
            if name.startswith("lora_unet_"):
                prefix = "diffusion_model." + self._sai(name, source)
            else:
                part, path = self._te_part(name, source)
                prefix = (f"{self.comfy_te[part]}.{path}" if layout == "comfyui"
                          else self.onetrainer_te[part] + name[len(f"lora_{part}_"):])
            for sub, v in t.items():
                tensors[f"{prefix}.{sub}"] = _kohya_sub(sub, v, dtype)
        return tensors, {}

    def _write_diffusers(self, modules: Modules, dtype, source) -> tuple[dict[str, Tensor], dict[str, str]]:
        from ...formats.peft_common import Entry

        tensors: dict[str, Tensor] = {}
        entries: dict[str, list] = {}
        for name, t in modules.items():
            f = plain(name, t, "diffusers", source)
            if name.startswith("lora_unet_"):
                pieces = [("transformer", p, folded(g, dtype)) for p, g in self.split_unet(name, f, source)]
            else:
                part, path = self._te_part(name, source)
                pieces = [(self.diffusers_te[part], path, folded(f, dtype))]
            for head, path, g in pieces:
                tensors[f"{head}.{path}.lora_A.weight"] = cast(g.down, dtype)
                tensors[f"{head}.{path}.lora_B.weight"] = cast(g.up, dtype)
                entries.setdefault(head, []).append(Entry("unet" if head == "transformer" else head, path,
                                                          g.down, g.up, g.alpha))
        flat = {f"{head}.{k}": v for head, es in entries.items() for k, v in lora_config(es).items()}
        return tensors, {METADATA_KEY: json.dumps(flat, indent=2, sort_keys=True), "format": "pt"}


class DitLoraFiles:
    """The `Family` methods for LoRA files of a DiT family, answered by its layouts module
    (`lora_layouts`: a `FILES` DitLayouts and a `layout_of`); mixed into the family's class, so
    each DiT family says only which module describes its files."""

    lora_layouts: ModuleType

    def read_lora(self, state: Mapping, metadata: Mapping[str, str], layout: str, source: str | None) -> dict:
        return self.lora_layouts.FILES.read(state, metadata, layout, source)

    def check_lora_names(self, modules: Mapping, source: str | None) -> None:
        files = self.lora_layouts.FILES
        if files.check_names:
            files.check_kohya_names(modules, source)

    def write_lora(self, modules: Mapping, layout: str, dtype, source: str | None):
        return None if layout == "kohya" else self.lora_layouts.FILES.write_state(modules, layout, dtype, source)

    def lora_layout_of(self, keys) -> str | None:
        return self.lora_layouts.layout_of(keys)

    def lora_reading(self, shapes: Mapping, layout: str) -> dict | None:
        return self.lora_layouts.FILES.reading(shapes, layout)
