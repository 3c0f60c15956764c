"""The Dataset tab: a training folder's images with their captions, caption editing (atomic
writes), BLIP captioning with a progress bar, tag counts, and the images the trainer would refuse.

(No `from __future__ import annotations` here: gradio reads the `gr.SelectData` hint at runtime.)"""

from pathlib import Path

from ..errors import LoraKitError
from . import actions as A
from . import dataset as D


def folder_of(studio, value) -> Path:
    return studio.guard.check(value, "dataset folder", base=studio.first("data"), exists=True, kind="dir")


def open_folder(studio, value, resolution):
    """The gallery items, their image paths, the report (problems), the tag counts, the folder."""
    folder = folder_of(studio, value)
    entries = D.review(folder, int(resolution or 512))
    items = [(D.thumbnail(e.image), (e.caption or "(no caption)") + (f" ⚠ {e.problem}" if e.problem else ""))
             for e in entries]
    problems = [f"- `{e.image.name}`: {e.problem}" for e in entries if e.problem]
    problems += [f"- `{p.name}`: caption file with no image of the same name" for p in D.orphan_captions(folder)]
    missing = sum(1 for e in entries if not e.caption_path)
    head = f"**{len(entries)} images** in `{folder}`"
    if missing:
        head += f" · {missing} without a caption file (they train on the folder's class words or the trigger)"
    report = head + ("\n\n**The trainer would refuse:**\n" + "\n".join(problems) if problems
                     else "\n\nNo problems found: every image is readable and large enough.")
    counts = [[t, c] for t, c in D.tag_counts(entries)]
    return items, [str(e.image) for e in entries], report, counts or [["(no tags)", 0]], str(folder)


def caption_of(paths, index):
    from ..data.captions import caption_file, read_caption

    if index is None or index >= len(paths):
        raise LoraKitError("that image is gone; open the folder again")
    image = Path(paths[index])
    cap = caption_file(image)
    return str(image), read_caption(cap) if cap else ""


def save(studio, image, text, folder, resolution):
    if not image:
        raise LoraKitError("click an image first")
    path = studio.guard.check(image, "image", exists=True, kind="file")
    target = D.save_caption(path, text)
    return (f"saved `{target}`", *open_folder(studio, folder, resolution))


def caption(studio, folder, prefix, overwrite, model, resolution):
    from ..caption import caption_folder

    path = folder_of(studio, folder)
    model = studio.guard.model(model, "captioning model")
    written = caption_folder(path, prefix=prefix or "", overwrite=bool(overwrite), model=model, progress=True)
    return (f"{len(written)} caption(s) written", *open_folder(studio, folder, resolution))


def build(gr, studio, run):
    def bound(fn):
        def call(*args):
            return fn(studio, *args)
        call.__name__ = fn.__name__
        return call

    def select(paths, evt: gr.SelectData):
        return caption_of(paths, evt.index)

    with gr.Tab("Dataset", id="dataset"):
        with gr.Row():
            folder = gr.Textbox(str(studio.first("data") or ""), label="Dataset folder (images with caption files, "
                                "or N_name repeat folders)", scale=4, elem_id="ds-folder")
            resolution = gr.Number(512, label="Training resolution (for the size check)", precision=0, scale=1,
                                   elem_id="ds-resolution")
            open_btn = gr.Button("Open", scale=1, elem_id="ds-open")
        report = gr.Markdown(elem_id="ds-report")
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="Images and captions", columns=5, height="auto", allow_preview=False,
                                     object_fit="contain", fit_columns=False, elem_id="ds-gallery")
            with gr.Column(scale=2):
                image = gr.Textbox("", label="Selected image", interactive=False, elem_id="ds-image")
                text = gr.Textbox("", label="Caption", lines=3, elem_id="ds-caption")
                save_btn = gr.Button("Save caption", variant="primary", elem_id="ds-save")
                saved = gr.Markdown(elem_id="ds-saved")
                use = gr.Button("Use this folder in Train", elem_id="ds-use")
                tags = gr.Dataframe(headers=["tag", "count"], label="Tag frequency", interactive=False,
                                    max_height=260)
        with gr.Accordion("Caption the folder with BLIP", open=False):
            with gr.Row():
                prefix = gr.Textbox("", label="Prefix (trigger word)")
                overwrite = gr.Checkbox(False, label="Overwrite existing captions")
                cap_model = gr.Textbox("Salesforce/blip-image-captioning-large", label="BLIP model")
            cap_btn = gr.Button("Caption")
        paths = gr.State([])
        opened = gr.State("")

    listing = [gallery, paths, report, tags, opened]
    open_btn.click(run(bound(open_folder)), [folder, resolution], listing)
    folder.submit(run(bound(open_folder)), [folder, resolution], listing)
    gallery.select(A.guarded(select), paths, [image, text])
    save_btn.click(run(bound(save)), [image, text, folder, resolution], [saved, *listing])
    cap_btn.click(run(bound(caption)), [folder, prefix, overwrite, cap_model, resolution], [saved, *listing])
    return {"use": use, "opened": opened, "folder": folder}
