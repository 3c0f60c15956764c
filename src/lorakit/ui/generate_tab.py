"""The Generate tab: a model picker, the prompt with A1111's `<lora:name:w>` tags, one strength
slider per tag (the prompt stays the one place the LoRAs are written; sliders edit it), the PNG
info round trip and a strength sweep."""

from __future__ import annotations

import re

from ..errors import LoraKitError
from ..generate import _LORA_TAG, LoraSpec
from . import actions as A
from .pnginfo import parse_parameters, read_parameters

SAMPLERS = ["euler_a", "euler", "ddim", "dpm++2m", "dpm++2m_karras", "dpm++sde", "unipc", "heun", "lms", "pndm"]
SLOTS = 6  # sliders shown at most; more tags still work, edited in the prompt


def prompt_tags(prompt: str) -> list[tuple[str, float]]:
    """(name, strength) of each `<lora:name:w>` tag, in order, each name once."""
    out, seen = [], set()
    for m in _LORA_TAG.finditer(prompt or ""):
        name = m.group(1).strip()
        if name in seen:
            continue
        seen.add(name)
        try:
            w = float(m.group(2)) if m.group(2) not in (None, "") else 1.0
        except ValueError:
            w = 1.0
        out.append((name, w))
    return out


def set_tag(prompt: str, name: str, weight: float | None) -> str:
    """The prompt with NAME's tag at WEIGHT (appended if absent), or removed (weight None)."""
    pattern = re.compile(r"\s*<lora:" + re.escape(name) + r"(?::[^>]*)?>")
    if weight is None:
        return pattern.sub("", prompt or "").strip()
    tag = f"<lora:{name}:{weight:g}>"
    if pattern.search(prompt or ""):
        return pattern.sub(" " + tag, prompt, count=1).strip()
    return f"{(prompt or '').rstrip()} {tag}".strip()


def loaded_family(model: str) -> str | None:
    """The family of MODEL if it is the model in memory (asking must not load gigabytes)."""
    for (spec, *_), base in A._MODELS.items():
        if spec == (model or "").strip():
            return base.family
    return None


def family_clash(card, family: str | None) -> str | None:
    fits = (card.family,) if card.family else card.candidates
    if fits and family and family not in fits:
        return f"{card.name} is a LoRA for {' or '.join(fits)}; the loaded model is {family}"
    return None


def build(gr, studio, run):
    def resolve(prompt: str, family: str) -> tuple[str, list[LoraSpec]]:
        specs = []
        for name, w in prompt_tags(prompt):
            card = studio.card(name)
            if card.error:
                raise LoraKitError(f"unreadable LoRA ({card.error})", card.path)
            clash = family_clash(card, family)
            if clash:
                raise LoraKitError(clash + "; remove its tag or load a matching model")
            specs.append(LoraSpec(card.path, w))
        clean = re.sub(r"\s{2,}", " ", _LORA_TAG.sub("", prompt or "")).strip(" ,")
        return clean, specs

    def base_model(model: str):
        spec = studio.guard.model(model)
        base = A.cached_model(spec)
        studio.remember_model(spec)
        return base

    def generate(model, prompt, negative, n, steps, guidance, seed, width, height, sampler, save):
        from ..generate import generate as make, write_outputs

        base = base_model(model)
        clean, specs = resolve(prompt, base.family)
        result = make(base, clean, negative=negative or "", loras=specs, n=int(n), steps=int(steps),
                      guidance=float(guidance), seed=int(seed), width=int(width) or None, height=int(height) or None,
                      sampler=sampler)
        note = ""
        if save:
            if studio.out_dir is None:
                raise LoraKitError("no output folder: start the page with --out-dir to save images")
            written = write_outputs(result, studio.out_dir)
            note = f"\n\nsaved {len(written)} file(s) to {studio.out_dir}"
        gallery = [(im, f"seed {s}") for im, s in zip(result.images, result.seeds)]
        return gallery, result.infotexts[0] + note, gr.update(choices=studio.model_choices())

    def sweep(model, prompt, negative, steps, guidance, seed, width, height, sampler, which, strengths):
        from ..generate import generate as make

        try:
            levels = [float(x) for x in (strengths or "").replace(" ", "").split(",") if x]
        except ValueError:
            raise LoraKitError(f"strengths must be numbers separated by commas (got {strengths!r})") from None
        if not levels:
            raise LoraKitError("give the strengths to compare, e.g. 0, 0.5, 1")
        tags = dict(prompt_tags(prompt))
        if not which or which not in tags:
            raise LoraKitError("choose which LoRA of the prompt to sweep (add one from the Library first)")
        base = base_model(model)
        images, infos = [], []
        for level in levels:
            clean, specs = resolve(set_tag(prompt, which, level), base.family)
            result = make(base, clean, negative=negative or "", loras=specs, n=1, steps=int(steps),
                          guidance=float(guidance), seed=int(seed), width=int(width) or None,
                          height=int(height) or None, sampler=sampler)
            images.append((result.images[0], f"{which} {level:g}"))
            infos.append(result.infotexts[0])
        return images, "\n\n".join(infos), gr.update(choices=studio.model_choices())

    def slots(prompt):
        """The slider rows for the prompt's tags (labels, values, visibility) and the sweep choices."""
        found = prompt_tags(prompt)
        names = [n for n, _ in found][:SLOTS]
        ups = []
        for i in range(SLOTS):
            if i < len(found):
                name, w = found[i]
                ups += [gr.update(visible=True), gr.update(label=f"{name}", value=max(-2.0, min(2.0, w)))]
            else:
                ups += [gr.update(visible=False), gr.update(label="LoRA", value=1.0)]
        which = gr.update(choices=names, value=names[0] if names else None)
        return [names, *ups, which]

    def read_png(path):
        if not path:
            return [gr.update()] * 9
        info = parse_parameters(read_parameters(path))
        keep = gr.update()
        return [info["prompt"], info["negative"], info.get("steps", keep), info.get("guidance", keep),
                info.get("seed", keep), info.get("width", keep), info.get("height", keep),
                info.get("sampler", keep), read_parameters(path)]

    with gr.Tab("Generate", id="generate"):
        with gr.Row():
            with gr.Column(scale=3):
                model = gr.Dropdown(studio.model_choices(), value=studio.default_model, allow_custom_value=True,
                                    label="Base model ('toy', a hub id, or a folder/file under your folders)")
                prompt = gr.Textbox("a red circle on a white background", label="Prompt", lines=2,
                                    elem_id="gen-prompt")
                negative = gr.Textbox("", label="Negative prompt")
                names = gr.State([])
                rows, sliders, removes = [], [], []
                with gr.Group():
                    for i in range(SLOTS):
                        with gr.Row(visible=False, elem_id=f"lora-slot-{i}") as row:
                            slider = gr.Slider(-2, 2, 1, step=0.05, label="LoRA", scale=5, elem_id=f"lora-slider-{i}")
                            remove = gr.Button("Remove", scale=1, size="sm", elem_id=f"lora-remove-{i}")
                        rows.append(row)
                        sliders.append(slider)
                        removes.append(remove)
                with gr.Row():
                    n = gr.Slider(1, 16, 2, step=1, label="Images")
                    steps = gr.Slider(1, 150, 20, step=1, label="Steps")
                    guidance = gr.Slider(0, 20, 7, step=0.5, label="CFG scale")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0)
                    width = gr.Number(0, label="Width (0: model's)", precision=0)
                    height = gr.Number(0, label="Height (0: model's)", precision=0)
                    sampler = gr.Dropdown(SAMPLERS, value="euler_a", label="Sampler")
                save = gr.Checkbox(studio.out_dir is not None, label="Save PNGs (with their PNG info) to the "
                                   "output folder")
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                with gr.Accordion("Strength sweep (same seed, one image per strength)", open=False):
                    with gr.Row():
                        which = gr.Dropdown([], label="LoRA to sweep", allow_custom_value=False)
                        strengths = gr.Textbox("0, 0.5, 1", label="Strengths", elem_id="gen-strengths")
                    sweep_go = gr.Button("Sweep", elem_id="gen-sweep")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id="gen-gallery")
                info = gr.Textbox(label="PNG info", lines=5, elem_id="gen-info")
                png = gr.Image(type="filepath", image_mode=None, sources=["upload"], height=160,
                               label="PNG info: drop a PNG made by lorakit or A1111 to get its settings back",
                               elem_id="gen-pnginfo")

    slot_outputs = [names, *[c for pair in zip(rows, sliders) for c in pair], which]
    settings = [steps, guidance, seed, width, height, sampler]
    go.click(run(generate), [model, prompt, negative, n, steps, guidance, seed, width, height, sampler, save],
             [gallery, info, model])
    sweep_go.click(run(sweep), [model, prompt, negative, *settings, which, strengths], [gallery, info, model])
    prompt.input(slots, prompt, slot_outputs, queue=False, show_progress="hidden")
    for i in range(SLOTS):
        sliders[i].input(lambda p, ns, w, i=i: set_tag(p, ns[i], w) if i < len(ns) else p,
                         [prompt, names, sliders[i]], prompt, queue=False, show_progress="hidden")
        removes[i].click(lambda p, ns, i=i: set_tag(p, ns[i], None) if i < len(ns) else p,
                         [prompt, names], prompt, queue=False).then(slots, prompt, slot_outputs, queue=False)
    png.upload(A.guarded(read_png), png, [prompt, negative, *settings, info]).then(slots, prompt, slot_outputs)
    return {"model": model, "prompt": prompt, "slots": slots, "slot_outputs": slot_outputs}
