"""The Settings tab: the folders the page may read and write (the library's among them)."""

from __future__ import annotations

from . import actions as A


def build(gr, studio, refresh_library):
    def apply(loras, data):
        studio.add_folders(loras, data)
        return studio.folders_text(), "", ""

    with gr.Tab("Settings", id="settings"):
        gr.Markdown("Every path typed in this page must lie inside one of these folders (symlinks are followed "
                    "first, so a link cannot lead out). Started with `--lora-dir`, `--data-dir` and `--out-dir`.")
        folders = gr.Markdown(studio.folders_text(), elem_id="settings-folders")
        if studio.locked:
            gr.Markdown("The list is fixed: this page is served beyond this machine (`--host`).")
            return
        lora = gr.Textbox("", label="Add library folders (one per line)", lines=2, elem_id="settings-lora")
        data = gr.Textbox("", label="Add data folders (datasets, models, outputs; one per line)", lines=2)
        apply_btn = gr.Button("Add folders", elem_id="settings-apply")
    apply_btn.click(A.guarded(apply), [lora, data], [folders, lora, data]).then(*refresh_library)
