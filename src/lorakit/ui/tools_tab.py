"""The Tools tab: inspect, convert, resize, merge and extract, picking LoRAs from the library
(or typing a path under the page's folders). Results are written under the first library folder
unless a path says otherwise, so they show up in the library."""

from __future__ import annotations

from ..errors import LoraKitError
from . import actions as A


def _lora(studio, value, what="LoRA file") -> str:
    return str(studio.guard.check(value, what, base=studio.first("lora"), exists=True))


def _out(studio, value, what="output file") -> str:
    path = studio.guard.check(value, what, base=studio.first("lora"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def inspect(studio, path):
    return A.inspect_file(_lora(studio, path))


def convert(studio, path, to, dest):
    return A.convert_file(_lora(studio, path), to, _out(studio, dest))


def resize(studio, path, rank, dynamic, dest):
    return A.resize_file(_lora(studio, path), rank, dynamic, _out(studio, dest))


def merge(studio, files, weights, rank, model, dest):
    files = [_lora(studio, f) for f in (files or [])]
    if not files:
        raise LoraKitError("choose the LoRAs to merge")
    try:
        ws = [float(w) for w in (weights or "").replace(" ", "").split(",") if w] or [1.0] * len(files)
    except ValueError:
        raise LoraKitError(f"weights must be numbers separated by commas (got {weights!r})") from None
    if len(ws) != len(files):
        raise LoraKitError(f"{len(files)} LoRAs but {len(ws)} weights")
    base = studio.guard.model(model, "base model") if (model or "").strip() else ""
    lines = "\n".join(f"{f}:{w}" for f, w in zip(files, ws))
    return A.merge_files(lines, rank, base, _out(studio, dest))


def extract(studio, base, tuned, rank, conv, dest):
    g = studio.guard
    return A.extract_file(g.model(base, "base model"), g.model(tuned, "fine-tuned model"), rank, conv,
                          _out(studio, dest))


def build(gr, studio, run):
    def choices():
        names = studio.lora_choices()
        return [gr.update(choices=names) for _ in range(4)]

    def picker(label, elem_id=None):
        return gr.Dropdown(studio.lora_choices(), value=None, allow_custom_value=True, label=label, elem_id=elem_id)

    with gr.Tab("Tools", id="tools") as tab:
        with gr.Accordion("Inspect", open=True):
            ins_file = picker("LoRA file (from the library, or a path under your folders)", "tools-inspect-file")
            ins_btn = gr.Button("Inspect", elem_id="tools-inspect")
            ins_out = gr.Code(language="json", label="Report", elem_id="tools-report")
        with gr.Accordion("Convert", open=False):
            cv_file = picker("LoRA file")
            cv_to = gr.Radio(["kohya", "diffusers", "peft"], value="kohya", label="To")
            cv_out = gr.Textbox("converted.safetensors", label="Output path (relative: in the first library folder)")
            cv_res = gr.Textbox(label="Result")
            cv_btn = gr.Button("Convert")
        with gr.Accordion("Resize", open=False):
            rs_file = picker("LoRA file")
            rs_rank = gr.Number(16, label="Rank (0: dynamic only)", precision=0)
            rs_dyn = gr.Textbox("", label="Dynamic (sv_ratio:X, sv_fro:X, sv_cumulative:X)")
            rs_out = gr.Textbox("resized.safetensors", label="Output file")
            rs_res = gr.Textbox(label="Result")
            rs_btn = gr.Button("Resize")
        with gr.Accordion("Merge", open=False):
            mg_files = gr.Dropdown(studio.lora_choices(), multiselect=True, allow_custom_value=True,
                                   label="LoRAs to merge")
            mg_weights = gr.Textbox("", label="Weights, in order (empty: 1 each)")
            mg_rank = gr.Number(0, label="Rank (0: exact concatenation)", precision=0)
            mg_model = gr.Textbox("", label="Into base model (empty: LoRA + LoRA)")
            mg_out = gr.Textbox("merged.safetensors", label="Output (.safetensors or folder)")
            mg_res = gr.Textbox(label="Result")
            mg_btn = gr.Button("Merge")
        with gr.Accordion("Extract", open=False):
            ex_base = gr.Textbox("", label="Base model")
            ex_tuned = gr.Textbox("", label="Fine-tuned model")
            ex_rank = gr.Number(32, label="Rank", precision=0)
            ex_conv = gr.Number(0, label="Conv rank (0: no convs)", precision=0)
            ex_out = gr.Textbox("extracted.safetensors", label="Output file")
            ex_res = gr.Textbox(label="Result")
            ex_btn = gr.Button("Extract")

    tab.select(choices, [], [ins_file, cv_file, rs_file, mg_files], queue=False)
    def bound(fn):
        def call(*args):
            return fn(studio, *args)
        call.__name__ = fn.__name__
        return call

    ins_btn.click(A.guarded(bound(inspect)), ins_file, ins_out)
    cv_btn.click(A.guarded(bound(convert)), [cv_file, cv_to, cv_out], cv_res)
    rs_btn.click(run(bound(resize)), [rs_file, rs_rank, rs_dyn, rs_out], rs_res)
    mg_btn.click(run(bound(merge)), [mg_files, mg_weights, mg_rank, mg_model, mg_out], mg_res)
    ex_btn.click(run(bound(extract)), [ex_base, ex_tuned, ex_rank, ex_conv, ex_out], ex_res)
