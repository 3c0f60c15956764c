"""The Library tab: the LoRAs under the library folders as cards (preview, name, family, format,
rank/alpha, size, trigger words), with a search box and a family filter. Clicking a card adds
it to Generate as a `<lora:name:1>` tag with its slider; a LoRA for another family than the
loaded model is marked on its card and refused.

(No `from __future__ import annotations` here: gradio reads the `gr.SelectData` hint at runtime.)"""

from ..errors import LoraKitError
from . import actions as A
from .generate_tab import family_clash, loaded_family, prompt_tags, set_tag
from .library import card_image, search

def family_filter() -> list[str]:
    from .. import families

    return ["all", *families.names(), "unknown"]


def build(gr, studio, run, generate: dict):
    def listing(text, family, model):
        cards = search(studio.cards(), text, family)
        fam = loaded_family(model)
        items = []
        for c in cards:
            clash = family_clash(c, fam)
            items.append((card_image(c), c.summary() + (f" · ⚠ not for the loaded {fam} model" if clash else "")))
        total = len(studio.cards())
        folders = ", ".join(f"`{d}`" for d in studio.lora_dirs) or "none (add one in Settings)"
        return items, [str(c.path) for c in cards], f"{len(cards)} of {total} LoRAs · folders: {folders}"

    def pick(shown, prompt, model, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(shown):
            raise LoraKitError("that card is gone; refresh the library")
        card = studio.card(shown[evt.index])
        if card.error:
            raise LoraKitError(f"cannot use this file: {card.error}", card.path)
        clash = family_clash(card, loaded_family(model))
        if clash:
            raise LoraKitError(clash + "; choose a LoRA of that family or another base model")
        already = any(name == card.name for name, _ in prompt_tags(prompt))
        new_prompt = prompt if already else set_tag(prompt, card.name, 1.0)
        note = "already in the prompt" if already else "added to Generate"
        return new_prompt, card.details() + f"\n\n*{note}: `<lora:{card.name}:…>`*", str(card.path)

    def make_preview(selected, model):
        from ..generate import generate as make, save_png
        from .library import PREVIEW_SUFFIXES

        if not selected:
            raise LoraKitError("click a card first")
        card = studio.card(selected)
        base = A.cached_model(studio.guard.model(model))
        clash = family_clash(card, base.family)
        if clash:
            raise LoraKitError(clash)
        from ..generate import LoraSpec

        prompt = ", ".join(card.triggers[:3]) or card.name
        result = make(base, prompt, loras=[LoraSpec(card.path, 1.0)], n=1, steps=20, seed=0)
        target = card.path.with_name(card.name + PREVIEW_SUFFIXES[0])
        save_png(result.images[0], target, result.infotexts[0])
        return card.details()

    with gr.Tab("Library", id="library") as tab:
        with gr.Row():
            query = gr.Textbox("", label="Search (name or trigger word)", scale=3, elem_id="lib-search")
            family = gr.Dropdown(family_filter(), value="all", label="Family", scale=1)
            refresh = gr.Button("Refresh", scale=1, elem_id="lib-refresh")
        count = gr.Markdown(elem_id="lib-count")
        with gr.Row():
            with gr.Column(scale=3):
                cards = gr.Gallery(label="LoRAs (click one to add it to Generate)", columns=4, height="auto",
                                   allow_preview=False, object_fit="contain", fit_columns=False,
                                   elem_id="lib-cards")
            with gr.Column(scale=2):
                details = gr.Markdown("Click a card to add it to Generate.", elem_id="lib-details")
                preview = gr.Button("Make preview (NAME.preview.png, drawn with the Generate model)", size="sm",
                                    elem_id="lib-preview")
        shown = gr.State([])
        selected = gr.State("")

    model, prompt = generate["model"], generate["prompt"]
    show = run(listing)
    for event in (tab.select, refresh.click, family.change, query.submit):
        event(show, [query, family, model], [cards, shown, count])
    cards.select(A.guarded(pick), [shown, prompt, model], [prompt, details, selected]).then(
        generate["slots"], prompt, generate["slot_outputs"])
    preview.click(run(make_preview), [selected, model], details).then(show, [query, family, model],
                                                                        [cards, shown, count])
    return {"tab": tab, "refresh": (show, [query, family, model], [cards, shown, count])}
