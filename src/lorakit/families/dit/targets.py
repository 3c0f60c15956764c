"""The layers of a diffusers DiT transformer (SD3, Flux…) under the names their LoRA files use
(the original layout's: SAI's, BFL's).

Each original layer becomes one Target: the diffusers layer itself, or, where diffusers splits it
(q/k/v) or reorders its rows (adaLN halves), a weightless Target of the SAI shape whose
`pieces` say which live layer holds which rows. A network on it trains, merges and saves in
SAI's shape, so the file is what sd-scripts and ComfyUI expect.
"""

from __future__ import annotations

from torch import nn

from ...lora.targets import Target


def transformer_targets(transformer: nn.Module, naming) -> dict[str, Target]:
    """{kohya name: Target} for every Linear/Conv2d of the transformer that the original layout names.

    `naming` is the family's name table module (`is_diffusers_path`, `sai_of`, `kohya_name`,
    `diffusers_rows`, and `container(path)`: the preset group of a layer).
    """
    container = naming.container
    found: dict[str, dict[int, tuple[str, nn.Module]]] = {}
    for path, module in transformer.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or not naming.is_diffusers_path(path):
            continue
        sai, i, _ = naming.sai_of(path)
        found.setdefault(sai, {})[i] = (path, module)
    index: dict[str, Target] = {}
    for sai, pieces in found.items():
        ordered = [pieces[i] for i in sorted(pieces)]
        name = naming.kohya_name(sai)
        first_path, first = ordered[0]
        if isinstance(first, nn.Conv2d):
            index[name] = Target(name, first_path, "unet", first, container(sai), (name,))
            continue
        rows = sum(m.out_features for _, m in ordered)
        layout = naming.diffusers_rows(sai, rows, first.in_features)
        if len(layout) != len(ordered):
            raise ValueError(f"{sai}: the model holds {len(ordered)} of its {len(layout)} pieces")
        identity = len(layout) == 1 and bool((layout[0][1] == _arange(rows)).all())
        if identity:
            index[name] = Target(name, first_path, "unet", first, container(sai), (name,))
            continue
        live = dict(ordered)
        virtual = nn.Linear(first.in_features, rows, bias=False, device="meta")
        index[name] = Target(name, sai, "unet", virtual, container(sai), (name,),
                             pieces=tuple((live[p], r) for p, r in layout))
    return index


def _arange(n: int):
    import torch

    return torch.arange(n)
