"""The gradio app: one tab per job. Long work shows tqdm progress in the page."""

from __future__ import annotations

from . import actions as A

SAMPLERS = ["euler_a", "euler", "ddim", "dpm++2m", "dpm++2m_karras", "dpm++sde", "unipc", "heun", "lms", "pndm"]


def build_app(default_model: str = "toy", allow_pickle: bool = False):
    """`allow_pickle` is the server's policy for every action (`lorakit ui --allow-pickle`)."""
    import gradio as gr

    A.set_allow_pickle(allow_pickle)

    def progress_wrap(fn):
        guarded = A.guarded(fn)

        def run(*args, progress=gr.Progress(track_tqdm=True)):
            return guarded(*args)
        run.__name__ = fn.__name__
        return run

    with gr.Blocks(title="lorakit") as app:
        gr.Markdown("# lorakit\nTrain, use, combine and convert LoRA adapters for Stable Diffusion.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    model = gr.Textbox(default_model, label="Base model (folder, .safetensors, hub id or toy)")
                    prompt = gr.Textbox("a red circle on a white background", label="Prompt", lines=2)
                    negative = gr.Textbox("", label="Negative prompt")
                    loras = gr.Textbox("", label="LoRAs: FILE[:WEIGHT], one per line", lines=3)
                    lora_dir = gr.Textbox("", label="LoRA folder for <lora:name:w> tags")
                    with gr.Row():
                        n = gr.Slider(1, 16, 4, step=1, label="Images")
                        steps = gr.Slider(1, 150, 25, step=1, label="Steps")
                        guidance = gr.Slider(0, 20, 7, step=0.5, label="CFG scale")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0)
                        width = gr.Number(0, label="Width (0: model's)", precision=0)
                        height = gr.Number(0, label="Height (0: model's)", precision=0)
                        sampler = gr.Dropdown(SAMPLERS, value="euler_a", label="Sampler")
                    out_dir = gr.Textbox("outputs", label="Save to folder (empty: don't save)")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column():
                    gallery = gr.Gallery(label="Images", columns=2)
                    info = gr.Textbox(label="PNG info", lines=4)
            go.click(progress_wrap(A.generate_images),
                     [model, prompt, negative, loras, n, steps, guidance, seed, width, height, sampler, lora_dir,
                      out_dir], [gallery, info])

        _train_tab(gr, progress_wrap, default_model)

        with gr.Tab("Evaluate"):
            with gr.Row():
                with gr.Column():
                    ev_model = gr.Textbox(default_model, label="Base model (folder, .safetensors, hub id or toy)")
                    ev_loras = gr.Textbox("", label="LoRAs to sweep: FILE[:WEIGHT], one per line", lines=2)
                    ev_prompts = gr.Textbox("", label="Prompts, one per line", lines=4)
                    ev_trigger = gr.Textbox("", label="Trigger word (prompts with it are the LoRA's own)")
                    ev_strengths = gr.Textbox("0,0.25,0.5,0.75,1", label="Strengths")
                    with gr.Row():
                        ev_n = gr.Slider(1, 8, 1, step=1, label="Seeds per prompt")
                        ev_steps = gr.Slider(1, 100, 20, step=1, label="Steps")
                        ev_cfg = gr.Slider(0, 20, 7, step=0.5, label="CFG scale")
                        ev_seed = gr.Number(0, label="Seed", precision=0)
                    ev_sampler = gr.Dropdown(SAMPLERS, value="euler_a", label="Sampler")
                    ev_out = gr.Textbox("", label="Save the grid to (empty: don't save)")
                    ev_go = gr.Button("Sweep", variant="primary")
                with gr.Column():
                    ev_table = gr.Markdown(label="Drift and fidelity per strength")
                    ev_grid = gr.Image(label="Strength × prompt grid", type="pil")
            ev_go.click(progress_wrap(A.evaluate_sweep),
                        [ev_model, ev_loras, ev_prompts, ev_trigger, ev_strengths, ev_n, ev_steps, ev_cfg, ev_seed,
                         ev_sampler, ev_out], [ev_table, ev_grid])

        with gr.Tab("Caption"):
            folder = gr.Textbox(label="Image folder")
            prefix = gr.Textbox(label="Prefix (trigger word)")
            overwrite = gr.Checkbox(False, label="Overwrite existing captions")
            cap_model = gr.Textbox("Salesforce/blip-image-captioning-large", label="BLIP model")
            cap_out = gr.Textbox(label="Result")
            gr.Button("Caption").click(progress_wrap(A.caption_dir), [folder, prefix, overwrite, cap_model], cap_out)

        with gr.Tab("LoRA files"):
            with gr.Accordion("Inspect", open=True):
                ins_file = gr.Textbox(label="LoRA file")
                ins_out = gr.Code(language="json", label="Report")
                gr.Button("Inspect").click(A.guarded(A.inspect_file), ins_file, ins_out)
            with gr.Accordion("Convert", open=False):
                cv_file = gr.Textbox(label="LoRA file")
                cv_to = gr.Radio(["kohya", "diffusers", "peft"], value="kohya", label="To")
                cv_out = gr.Textbox(label="Output path")
                cv_res = gr.Textbox(label="Result")
                gr.Button("Convert").click(A.guarded(A.convert_file), [cv_file, cv_to, cv_out], cv_res)
            with gr.Accordion("Resize", open=False):
                rs_file = gr.Textbox(label="LoRA file")
                rs_rank = gr.Number(16, label="Rank (0: dynamic only)", precision=0)
                rs_dyn = gr.Textbox("", label="Dynamic (sv_ratio:X, sv_fro:X, sv_cumulative:X)")
                rs_out = gr.Textbox(label="Output file")
                rs_res = gr.Textbox(label="Result")
                gr.Button("Resize").click(progress_wrap(A.resize_file), [rs_file, rs_rank, rs_dyn, rs_out], rs_res)
            with gr.Accordion("Merge", open=False):
                mg_loras = gr.Textbox(label="LoRAs: FILE[:WEIGHT], one per line", lines=3)
                mg_rank = gr.Number(0, label="Rank (0: exact concatenation)", precision=0)
                mg_model = gr.Textbox("", label="Into base model (empty: LoRA + LoRA)")
                mg_out = gr.Textbox(label="Output (.safetensors or folder)")
                mg_res = gr.Textbox(label="Result")
                gr.Button("Merge").click(progress_wrap(A.merge_files), [mg_loras, mg_rank, mg_model, mg_out], mg_res)
            with gr.Accordion("Extract", open=False):
                ex_base = gr.Textbox(label="Base model")
                ex_tuned = gr.Textbox(label="Fine-tuned model")
                ex_rank = gr.Number(32, label="Rank", precision=0)
                ex_conv = gr.Number(0, label="Conv rank (0: no convs)", precision=0)
                ex_out = gr.Textbox(label="Output file")
                ex_res = gr.Textbox(label="Result")
                gr.Button("Extract").click(progress_wrap(A.extract_file), [ex_base, ex_tuned, ex_rank, ex_conv, ex_out],
                                           ex_res)
    return app


def _train_tab(gr, progress_wrap, default_model: str) -> None:
    """Training from the browser, when the trainer is installed with this build."""
    try:
        from . import train_tab
    except ImportError:
        return
    train_tab.build(gr, progress_wrap, default_model)
