"""The Evaluate tab: `lorakit evaluate`'s strength sweep (drift and fidelity table, labelled grid)
on LoRAs picked from the library."""

from __future__ import annotations

from ..errors import LoraKitError
from . import actions as A
from .generate_tab import SAMPLERS


def sweep(studio, model, files, prompts, trigger, strengths, n, steps, cfg, seed, sampler, out):
    files = [str(studio.guard.check(f, "LoRA file", base=studio.first("lora"), exists=True)) for f in files or []]
    if not files:
        raise LoraKitError("choose the LoRA(s) to sweep")
    dest = ""
    if (out or "").strip():
        dest = str(studio.guard.check(out, "grid file", base=studio.out_dir or studio.first("lora")))
    return A.evaluate_sweep(studio.guard.model(model), "\n".join(files), prompts, trigger, strengths, n, steps,
                            cfg, seed, sampler, dest)


def build(gr, studio, run):
    def evaluate(*args):
        return sweep(studio, *args)

    with gr.Tab("Evaluate", id="evaluate") as tab:
        with gr.Row():
            with gr.Column():
                model = gr.Dropdown(studio.model_choices(), value=studio.default_model, allow_custom_value=True,
                                    label="Base model")
                files = gr.Dropdown(studio.lora_choices(), multiselect=True, allow_custom_value=True,
                                    label="LoRAs to sweep (together, at each strength)")
                prompts = gr.Textbox("", label="Prompts, one per line", lines=4)
                trigger = gr.Textbox("", label="Trigger word (prompts with it are the LoRA's own)")
                strengths = gr.Textbox("0,0.25,0.5,0.75,1", label="Strengths")
                with gr.Row():
                    n = gr.Slider(1, 8, 1, step=1, label="Seeds per prompt")
                    steps = gr.Slider(1, 100, 20, step=1, label="Steps")
                    cfg = gr.Slider(0, 20, 7, step=0.5, label="CFG scale")
                    seed = gr.Number(0, label="Seed", precision=0)
                sampler = gr.Dropdown(SAMPLERS, value="euler_a", label="Sampler")
                out = gr.Textbox("", label="Save the grid to (empty: don't save)")
                go = gr.Button("Sweep", variant="primary")
            with gr.Column():
                table = gr.Markdown(label="Drift and fidelity per strength")
                grid = gr.Image(label="Strength × prompt grid", type="pil")
    tab.select(lambda: gr.update(choices=studio.lora_choices()), [], files, queue=False)
    go.click(run(evaluate), [model, files, prompts, trigger, strengths, n, steps, cfg, seed, sampler, out], [table, grid])
