"""Which adapter `--network` trains and its `--network-args`, checked before any model is loaded.

lora and locon are lorakit's own LoRAModule (kohya's math and dropouts, the fast on-the-fly paths);
loha, lokr, dora (and locon with a LyCORIS-only option such as Tucker) and oft are trained with
LyCORIS' own modules (lycoris_adapter.py). LyCORIS rather than PEFT's LoHa/LoKr/OFT/DoRA:
- exactness: the files A1111, ComfyUI and Forge load are LyCORIS' state dicts (their loaders were
  written from its modules: `hada_w1_a`, `lokr_w1`, `oft_blocks`, alpha as LyCORIS scales it), so a
  LyCORIS module's tensors are the file, as they are. PEFT's LoKr factorises and initialises
  otherwise, its OFT (0.14+) is another parametrisation (`oft_R`, Cayley–Neumann) that no SD loader
  reads, and its DoRA norms each output row of W+ΔW with the norm detached from the graph, while the
  loaders norm each input column: the numbers trained would not be the numbers loaded;
- maintenance: LyCORIS is the project the field's trainers (sd-scripts, SimpleTuner, ComfyUI's own)
  call, released with the loaders in step; PEFT's SD side follows diffusers, which loads none of these.
What LyCORIS 4.1.3 gets wrong is pinned by the tests: its `get_diff_weight` (used by its `merge_to`)
scales a LoHa's and a LoKr's ΔW by alpha/r twice; lorakit takes ΔW from `get_weight`, the path
LyCORIS' own forward trains and the loaders apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..errors import LoraKitError

ALGOS = ("lora", "locon", "loha", "lokr", "dora", "oft")
LYCORIS_ALGOS = ("loha", "lokr", "dora", "oft")
_RANKED = ("lora", "locon", "loha", "lokr", "dora")  # algos with a rank and an alpha (oft: a block size)


@dataclass(frozen=True)
class Arg:
    kind: type
    algos: tuple[str, ...]
    help: str


ARGS: dict[str, Arg] = {
    "conv_dim": Arg(int, ALGOS, "rank of the 3×3 convolutions (oft: their block size); adapts them (LoCon)"),
    "conv_alpha": Arg(float, _RANKED, "alpha of the 3×3 convolutions (default: conv_dim)"),
    "dropout": Arg(float, ALGOS, "dropout (lora/locon: on down(x), kohya's; others: on ΔW·x, LyCORIS')"),
    "rank_dropout": Arg(float, _RANKED, "lora/locon: drop ranks (kohya's); others: drop rows of ΔW (LyCORIS')"),
    "module_dropout": Arg(float, ALGOS, "skip a whole module for a call"),
    "rank_dropout_scale": Arg(bool, LYCORIS_ALGOS + ("locon",), "rescale the kept rows by 1/their mean (LyCORIS)"),
    "rs_lora": Arg(bool, _RANKED, "scale alpha/√rank instead of alpha/rank (the file's alpha is alpha·√rank)"),
    "use_tucker": Arg(bool, ("locon", "loha", "lokr", "dora"), "Tucker-decompose 3×3 convolutions (needs conv_dim)"),
    "dora_wd": Arg(bool, ("locon", "loha", "lokr", "dora"), "DoRA weight decomposition on top (dora: always on)"),
    "factor": Arg(int, ("lokr",), "LoKr: the Kronecker factor (-1: the most balanced split)"),
    "decompose_both": Arg(bool, ("lokr",), "LoKr: the small factor low-rank too"),
    "full_matrix": Arg(bool, ("lokr",), "LoKr: both factors full rank (no rank: the full-rank LoKr)"),
    "unbalanced_factorization": Arg(bool, ("lokr",), "LoKr: swap the output split"),
    "constraint": Arg(float, ("oft",), "OFT: bound on ‖Q‖ per output dim (0: none); written as the file's alpha"),
}
# known to LyCORIS users, refused with the reason
_REFUSED = {
    "algo": "give the algorithm as --network",
    "train_norm": "lorakit writes no norm-layer modules (w_norm/b_norm), which ComfyUI and A1111 read only partly",
    "wd_on_out": ("a magnitude per output row is applied by A1111 as a per-column norm and by ComfyUI from the "
                  "weight before ΔW; lorakit trains the per-column magnitude both apply exactly"),
    "rescaled": "the OFT rescale vector is read by neither ComfyUI nor A1111",
    "use_scalar": "a trained scalar is folded into the factors only by LyCORIS' own saver",
    "bypass_mode": "lorakit chooses per call between the branch and W + ΔW",
}


@dataclass(frozen=True)
class NetworkSpec:
    """An algorithm and its checked, typed arguments."""

    algo: str = "lora"
    args: Mapping[str, object] = field(default_factory=dict)

    @property
    def uses_lycoris(self) -> bool:
        """Whether its modules are LyCORIS' (lora/locon stay lorakit's own unless a LyCORIS-only option asks)."""
        if self.algo in LYCORIS_ALGOS:
            return True
        return bool(self.args.get("use_tucker") or self.args.get("dora_wd") or self.args.get("rank_dropout_scale"))

    @property
    def lycoris_algo(self) -> str:
        """LyCORIS' module for it: locon (LoRA/LoCon/DoRA), loha, lokr or oft."""
        return {"lora": "locon", "dora": "locon"}.get(self.algo, self.algo)

    @property
    def dora(self) -> bool:
        return self.algo == "dora" or bool(self.args.get("dora_wd"))

    def get(self, key: str, default=None):
        return self.args.get(key, default)


def _value(key: str, raw: object, kind: type) -> object:
    text = str(raw).strip()
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise LoraKitError(f"--network-args {key}={raw}: not true or false")
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise LoraKitError(f"--network-args {key}={raw}: not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise LoraKitError(f"--network-args {key}={raw}: not a finite number")
    return value


def split_items(items: Iterable[object] | Mapping[str, object] | None) -> dict[str, object]:
    """`KEY=VALUE` strings (several per string, space-separated, as kohya's `--network_args` takes them)
    or a TOML table → {key: raw value}."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    out: dict[str, object] = {}
    for item in items:
        for pair in str(item).split():
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise LoraKitError(f"--network-args {pair!r}: expected KEY=VALUE")
            if key in out:
                raise LoraKitError(f"--network-args {key} is given twice")
            out[key] = value
    return out


def parse(algo: str, items) -> NetworkSpec:
    """Check the algorithm and each argument (known, meant for this algo, of the right type and range)."""
    if algo not in ALGOS:
        raise LoraKitError(f"--network {algo!r} is not an adapter lorakit trains: choose from {', '.join(ALGOS)}")
    args: dict[str, object] = {}
    for key, raw in split_items(items).items():
        if key in _REFUSED:
            raise LoraKitError(f"--network-args {key}: not supported ({_REFUSED[key]})")
        spec = ARGS.get(key)
        if spec is None:
            raise LoraKitError(f"--network-args {key}: unknown (known: {', '.join(sorted(ARGS))})")
        if algo not in spec.algos:
            users = ", ".join(spec.algos)
            raise LoraKitError(f"--network-args {key} does not apply to --network {algo} (only to {users})")
        args[key] = _value(key, raw, spec.kind)
    for key in ("dropout", "rank_dropout", "module_dropout"):
        if key in args and not 0 <= args[key] < 1:
            raise LoraKitError(f"--network-args {key}={args[key]}: must be in [0, 1)")
    if "conv_dim" in args and args["conv_dim"] < 1:
        raise LoraKitError(f"--network-args conv_dim={args['conv_dim']}: must be at least 1")
    if "factor" in args and args["factor"] != -1 and args["factor"] < 1:
        raise LoraKitError(f"--network-args factor={args['factor']}: must be -1 or at least 1")
    if args.get("constraint", 0) < 0:
        raise LoraKitError(f"--network-args constraint={args['constraint']}: must be ≥ 0")
    return NetworkSpec(algo, args)
