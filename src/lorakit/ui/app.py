"""The gradio app: a LoRA studio, one module per tab. Long work shows tqdm progress in the page;
any failure shows as a one-line message and the server keeps serving."""

from __future__ import annotations

from . import actions as A
from .studio import Studio


def build_app(studio: Studio | None = None, allow_pickle: bool = False):
    """`allow_pickle` is the server's policy for every action (`lorakit ui --allow-pickle`)."""
    import gradio as gr

    from . import dataset_tab, evaluate_tab, generate_tab, library_tab, settings_tab, tools_tab

    A.set_allow_pickle(allow_pickle)
    studio = studio or Studio()

    def progress_wrap(fn):
        guarded = A.guarded(fn)

        # `progress` before *args: gradio looks for a Progress default only among the positional
        # parameters that come before any *args (after them the page gets no bar at all)
        def run(progress=gr.Progress(track_tqdm=True), *args):
            return guarded(*args)
        run.__name__ = fn.__name__
        return run

    with gr.Blocks(title="lorakit") as app:
        gr.Markdown("# lorakit\nA LoRA studio: your library, your datasets, generation, training and file tools.")
        with gr.Tabs(selected="library"):  # the page opens on the library
            generate = generate_tab.build(gr, studio, progress_wrap)
            library = library_tab.build(gr, studio, progress_wrap, generate)
            dataset = dataset_tab.build(gr, studio, progress_wrap)
            train = _train_tab(gr, studio, progress_wrap)
            evaluate_tab.build(gr, studio, progress_wrap)
            tools_tab.build(gr, studio, progress_wrap)
            settings_tab.build(gr, studio, library["refresh"])
        if train is not None:
            dataset["use"].click(lambda f: f, dataset["folder"], train["data"], queue=False)
        app.load(*library["refresh"])
    return app


def _train_tab(gr, studio, progress_wrap):
    """Training from the browser, when the trainer is installed with this build."""
    try:
        from . import train_tab
    except ImportError:
        return None
    return train_tab.build(gr, studio, progress_wrap)
