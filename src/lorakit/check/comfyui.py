"""ComfyUI's LoRA key rules, as comfy/lora.py (`model_lora_keys_unet`, `model_lora_keys_clip`,
`load_lora`) and comfy/weight_adapter/{lora,loha,lokr}.py build and read them.

Source read: Comfy-Org/ComfyUI comfy/lora.py @ ec93dcacb96b922f7cb1417b3ba22bccb082df32,
comfy/weight_adapter/lora.py @ 6fd406fb14ca663225b88c6f75d7a7f2b997e5a0, comfy/lora_convert.py @
2bffe2f4ce5763dcb83df6a670657b6d5c8f85a5. Forge (lllyasviel/stable-diffusion-webui-forge @
dfdcbab685e57677014f05a3309b48cc87383167, backend/patcher/lora.py) loads LoRAs through its copy of
the same key map (see forge.py).

The rules, as the source has them:
- ComfyUI builds a key map from the loaded model: for the denoiser `lora_unet_<original path>` and
  `diffusion_model.<original path>` for every weight; for a UNet also `lora_unet_<diffusers path>`,
  `lycoris_<diffusers path>`, and `[unet.]<diffusers path>` with `.to_` spelled `.processor.to_`
  (the old attention-processor files): a PEFT-style `unet.….attn1.to_q` is not in the map; for
  SD3 / Flux-like transformers `transformer.<diffusers path>`, `lora_transformer_<…>`,
  `lycoris_<…>` (SD3 also `base_model.model.<…>`, Flux also the bare diffusers path; Chroma takes
  the Flux branch: comfy/model_base.py declares `class Chroma(Flux)`).
- Text encoders: only self_attn q/k/v/out_proj and mlp fc1/fc2 of CLIP layers, as
  `lora_te_`/`lora_te1_` and `text_encoder.` for the first CLIP, `lora_te2_` and `text_encoder_2.`
  for a second; a T5 as `lora_te{1 + CLIP-G + CLIP-L}_` (both te2 and te3 when only CLIP-L is
  there); `text_encoders.<ComfyUI's own key>` for every weight.
- Per key-map entry x: `x.alpha` and `x.dora_scale` are taken; the first adapter whose keys are
  there is loaded (LoRA: `.lora_up.weight`, `_lora.up.weight`, `.lora_B.weight`, `.lora.up.weight`,
  `.lora_B`, `.lora_linear_layer.up.weight`, `.lora_B.default.weight`, each with its down partner,
  which must exist or loading raises; LoHa `hada_w1_a`…; LoKr `lokr_w1`/`lokr_w2`/`lokr_w1_a`/
  `lokr_w2_a`), then `diff`, `diff_b`, `set_weight`. Every other key: "lora key not loaded".
- Strength: alpha / rank (rank = rows of the down factor) when `x.alpha` exists, else 1.0;
  diffusers' `lora_adapter_metadata` alphas are not read.
"""

from __future__ import annotations

from .filekeys import FileKeys
from .outcome import Outcome, kohya_groups, scale, stem_of, us
from .universe import Universe

NAME = "ComfyUI"
SOURCE = "Comfy-Org/ComfyUI@ec93dca comfy/lora.py, comfy/weight_adapter/"

_CLIP_LAYERS = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj",
                "self_attn.out_proj")
# (up, down) pairs of comfy/weight_adapter/lora.py, in its order
_LORA_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
               (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
               (".lora_B", ".lora_A"), (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
               (".lora_B.default.weight", ".lora_A.default.weight"))
_HADA = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
_LOKR = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
# diffusers-path key forms per transformer class (the isinstance branches of model_lora_keys_unet)
_TRANSFORMER_FORMS = {
    "SD3Transformer2DModel": ("transformer.{p}", "base_model.model.{p}", "lora_transformer_{u}", "lycoris_{u}"),
    "FluxTransformer2DModel": ("transformer.{p}", "lycoris_{u}", "lora_transformer_{u}", "{p}"),
    "ChromaTransformer2DModel": ("transformer.{p}", "lycoris_{u}", "lora_transformer_{u}", "{p}"),
}


def runs(spec) -> bool:
    return True


# Forge's copy (packages_3rdparty/comfyui_lora_collection/lora.py): the Flux branch without the bare
# diffusers path, no SD3 branch; its backend/patcher/lora.py maps T5 as lora_te1_, lora_te2_ and lora_te3_
_FORGE_TRANSFORMER_FORMS = {"FluxTransformer2DModel": ("transformer.{p}", "lycoris_{u}", "lora_transformer_{u}")}
_FORGE_PAIRS = _LORA_PAIRS[:4] + _LORA_PAIRS[5:6]


def key_map(u: Universe, forge: bool = False) -> dict[str, tuple[tuple[str, str], ...]]:
    """ComfyUI's key map for this model (`forge`: Forge's copy of it): key-map entry → the layers
    (part, live path) it patches."""
    spec = u.spec
    m: dict[str, tuple[tuple[str, str], ...]] = {}
    groups = kohya_groups(u)
    for name, layers in groups.items():  # lora_unet_<original path> (and the diffusers spelling for UNets)
        if name.startswith("lora_unet_"):
            m[name] = layers
    for layer in u.of_part("unet"):
        one = (("unet", layer.path),)
        original = _original_path(u, layer.path)
        if original is not None:
            m["diffusion_model." + original] = one if spec.denoiser == "unet" else m.get(
                "lora_unet_" + us(original), one)
        if spec.denoiser == "unet":
            m["lycoris_" + us(layer.path)] = one
            processor = layer.path.replace(".to_", ".processor.to_")
            if processor.endswith(".to_out.0"):
                processor = processor[:-2]
            m[processor] = one
            m["unet." + processor] = one
        forms = (_FORGE_TRANSFORMER_FORMS if forge else _TRANSFORMER_FORMS).get(spec.denoiser_class, ())
        for form in forms:
            m[form.format(p=layer.path, u=us(layer.path))] = one
    _clip_keys(u, m, forge)
    return m


def _original_path(u: Universe, path: str) -> str | None:
    spec = u.spec
    try:
        keys, _ = spec.original_weight_keys("unet", path, u.layout)
        return keys[0][len("model.diffusion_model."):-len(".weight")]
    except NotImplementedError:
        own = getattr(spec, "lora_layouts", None)
        if own is None:
            return None
        try:
            return own.FILES.naming.sai_of(path)[0]
        except KeyError:
            return None


def _clip_keys(u: Universe, m: dict, forge: bool) -> None:
    spec = u.spec
    clips = [p for p in spec.te_parts if not _is_t5(u, p)]
    t5s = [p for p in spec.te_parts if _is_t5(u, p)]
    own = getattr(spec, "lora_layouts", None)
    comfy_te = own.FILES.comfy_te if own is not None else {}
    for i, part in enumerate(clips):
        prefixes = ("lora_te", "lora_te1") if i == 0 else ("lora_te2",)
        component = "text_encoder" if i == 0 else "text_encoder_2"
        for layer in u.of_part(part):
            for c in _CLIP_LAYERS:
                tail = "." + c
                if layer.path.startswith("text_model.encoder.layers.") and layer.path.endswith(tail):
                    one = ((part, _live_path(u, part, layer.path)),)
                    for prefix in prefixes:
                        m[f"{prefix}_{us(layer.path)}"] = one
                    m[f"{component}.{layer.path}"] = one
            if layer.path.endswith("text_projection"):
                m[f"lora_te{min(i + 1, 2)}_text_projection"] = ((part, _live_path(u, part, layer.path)),)
    for part in t5s:
        index = 1 + (len(clips) >= 2) + (len(clips) >= 1)
        names = [index] if not (len(clips) == 1 and index == 2) else [2, 3]
        if forge:
            names = sorted({*names, 1, 2, 3})
        for layer in u.of_part(part):
            for n in names:
                m[f"lora_te{n}_{us(layer.path)}"] = ((part, layer.path),)
    for part, head in comfy_te.items():
        for layer in u.of_part(part):
            m[f"{head}.{layer.path}"] = ((part, _live_path(u, part, layer.path)),)


def _is_t5(u: Universe, part: str) -> bool:
    model = u.components.get(u.spec.text_encoders[u.te_index(part)])
    return str(getattr(getattr(model, "config", None), "model_type", "")).startswith(("t5", "umt5"))


def _live_path(u: Universe, part: str, path: str) -> str:
    model = u.components.get(u.spec.text_encoders[u.te_index(part)])
    names = {n for n, _ in model.named_modules()} if model is not None else set()
    return path if path in names else path[len("text_model."):] if path.startswith("text_model.") else path


def load(fk: FileKeys, u: Universe, forge: bool = False) -> Outcome:
    out = Outcome()
    stems = fk.stems()
    kmap = key_map(u, forge)
    used: set[str] = set()
    for x, keys in stems.items():
        if x not in kmap:
            continue
        for suffix in (".alpha", ".dora_scale", ".reshape_weight"):
            if suffix in keys:
                used.add(keys[suffix])
        loaded = None
        for up, down in _FORGE_PAIRS if forge else _LORA_PAIRS:
            if up in keys:
                if down not in keys:
                    out.refused = f"{keys[up]} has no {down[1:]} partner: ComfyUI's loader raises a KeyError"
                    return out
                used.update((keys[up], keys[down]))
                if up == ".lora_up.weight" and ".lora_mid.weight" in keys:
                    used.add(keys[".lora_mid.weight"])
                loaded = scale(fk, keys, fk.shapes[keys[down]][0])
                break
        if loaded is None and ".hada_w1_a" in keys:
            missing = [s for s in _HADA if s not in keys]
            if missing:
                out.refused = f"{keys['.hada_w1_a']} has no {missing[0][1:]}: ComfyUI's loader raises a KeyError"
                return out
            used.update(keys[s] for s in _HADA + (".hada_t1", ".hada_t2") if s in keys)
            loaded = scale(fk, keys, fk.shapes[keys[".hada_w1_b"]][0])
        if loaded is None and any(s in keys for s in (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a")):
            used.update(keys[s] for s in _LOKR if s in keys)
            dim = next((fk.shapes[keys[s]][0] for s in (".lokr_w2_b", ".lokr_w1_b") if s in keys), None)
            loaded = scale(fk, keys, dim) if dim else 1.0
        for suffix in (".diff", ".diff_b", ".set_weight"):
            if suffix in keys:
                used.add(keys[suffix])
                loaded = 1.0 if loaded is None else loaded
        if loaded is not None:
            out.applied[x] = loaded
    for key in fk.shapes:
        if key not in used:
            why = "no adapter reads this key" if stem_of(key) in kmap else \
                "not in ComfyUI's key map for this model (no layer under this name)"
            out.skipped.append((key, why))
    return out
