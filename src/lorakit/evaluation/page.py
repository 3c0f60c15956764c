"""The evaluation as one self-contained HTML page: every image inline (data: URIs), no scripts,
no fonts or style sheets from elsewhere, so it opens offline and can be mailed as one file.

Written by hand with the standard library's html.escape: a template engine would add a
dependency for one page of markup.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
from html import escape

LEGEND = {
    "subject DINO": "own prompts: mean cosine similarity of DINOv2 embeddings to the training images "
                    "(DreamBooth's DINO; 1 = the same image)",
    "subject CLIP-I": "own prompts: the same with CLIP image embeddings",
    "prompt CLIP-T": "cosine of each image's CLIP embedding and its prompt's (own prompts; the other "
                     "prompts' figure shows whether they still follow their text)",
    "drift": "change from the strength-0 image of the same prompt and seed: mean |Δpixel| (0–1), and "
             "1 − cosine of CLIP / DINO features (0 = unchanged). On prompts without the trigger it is "
             "base drift: what the LoRA moves that it should leave alone",
    "toy fidelity": "toy world only: share of images the scorer reads as what the prompt asks "
                    "(own prompts must show the concept shape)",
    "checkpoints": "a training run's evaluated steps: the validation loss on the held-out images (fixed noise "
                   "and timesteps), fidelity and drift at strength 1, and combined = fidelity − drift "
                   "(lorakit.train.best says how each is measured)",
    "training self-similarity": "the training images compared with each other: a ceiling of sorts for "
                                "subject fidelity",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px 32px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 12px}.meta b{color:#1d1d1f;font-weight:600}
.note{background:#fff4e5;border:1px solid #f0b35a;border-radius:6px;padding:8px 12px;margin:8px 0;max-width:1100px}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f5f5f7;font-weight:600}td.l,th.l{text-align:left}.na{color:#999}
tr.best td{font-weight:600;background:#effaf3}
.grid td{vertical-align:top;text-align:center;padding:4px}.grid img{margin:1px;image-rendering:pixelated}
.grid .m{font-size:11px;color:#444;white-space:nowrap}.own{color:#0a6}
.thumbs img{margin:2px;image-rendering:pixelated;border:1px solid #ddd}
dl{max-width:1100px}dt{font-weight:600;margin-top:6px}dd{margin-left:16px;color:#444}
"""


def data_uri(image, *, small: int = 128, large: int = 256) -> str:
    """An image as a data: URI; tiny images enlarged (nearest) to about `small` px as PNG,
    big ones reduced to `large` px as JPEG (a report of 100 SD images stays a few MB)."""
    from PIL import Image

    im = image.convert("RGB")
    side = max(im.size)
    buf = io.BytesIO()
    if side <= small:
        k = max(1, math.ceil(small / side))
        im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST).save(buf, format="PNG")
        mime = "image/png"
    else:
        if side > large:
            im = im.resize((round(im.width * large / side), round(im.height * large / side)),
                           Image.Resampling.LANCZOS)
        im.save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v, pct: bool = False) -> str:
    if v is None:
        return '<span class="na">—</span>'
    return f"{v:.0%}" if pct else f"{v:.3f}"


SUMMARY = [("subject DINO", "subject_dino", False), ("subject CLIP-I", "subject_clip", False),
           ("prompt CLIP-T (own)", "prompt_clip", False), ("prompt CLIP-T (other)", "prompt_clip_other", False),
           ("base drift, pixels", "drift_other", False), ("base drift, CLIP", "drift_clip_other", False),
           ("base drift, DINO", "drift_dino_other", False), ("own-prompt drift, pixels", "drift_trigger", False),
           ("toy fidelity (own)", "fidelity_trigger", True), ("toy fidelity (other)", "fidelity_other", True)]


def _summary(report) -> str:
    cols = [c for c in SUMMARY if any(getattr(r, c[1]) is not None for r in report.rows)
            or c[1] in ("subject_dino", "subject_clip", "prompt_clip", "drift_other")]
    head = "".join(f"<th>{escape(c[0])}</th>" for c in cols)
    body = "".join("<tr><td>" + f"{r.strength:g}" + "</td>" +
                   "".join(f"<td>{_num(getattr(r, c[1]), c[2])}</td>" for c in cols) + "</tr>" for r in report.rows)
    return f'<table class="summary"><tr><th>strength</th>{head}</tr>{body}</table>'


def chart_uri(report) -> str | None:
    """Subject fidelity, prompt fidelity and base drift against strength, as one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    xs = [r.strength for r in report.rows]
    panels = [("subject fidelity", [("DINO", "subject_dino"), ("CLIP-I", "subject_clip"),
                                    ("toy fidelity", "fidelity_trigger")]),
              ("prompt fidelity (CLIP-T)", [("own prompts", "prompt_clip"), ("other prompts", "prompt_clip_other")]),
              ("base drift", [("pixels", "drift_other"), ("CLIP", "drift_clip_other"), ("DINO", "drift_dino_other")])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8), dpi=100)
    for ax, (title, series) in zip(axes, panels):
        drawn = 0
        for label, attr in series:
            ys = [getattr(r, attr) for r in report.rows]
            if any(y is not None for y in ys):
                ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=label)
                drawn += 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("strength", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured\n(see the notes)", ha="center", va="center", transform=ax.transAxes,
                    color="#999")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _checkpoints(board: dict) -> str:
    """A training run's evaluated steps, one row each, the chosen one marked, and why it won."""
    if not board:
        return ""
    rows = []
    for r in board["rows"]:
        won = r["step"] == board.get("best")
        mark = '<span class="own">★ best</span>' if won else ""
        loss = _num(None) if r["val_loss"] is None else f"{r['val_loss']:.6g}"  # its digits decide close calls
        cells = f"<td>{loss}</td>" + "".join(f"<td>{_num(r[k])}</td>" for k in ("fidelity", "drift", "combined"))
        rows.append(f'<tr{" class=best" if won else ""}><td>{r["step"]}</td>{cells}'
                    f'<td class="l">{escape(r.get("measure") or "")}</td><td class="l">{mark}</td></tr>')
    metric = escape(str(board.get("metric") or "none"))
    return (f"<h2>Checkpoints</h2>\n<p>chosen by <b>{metric}</b>: {escape(board.get('why', ''))}</p>\n"
            '<table class="checkpoints"><tr><th>step</th><th>validation loss</th><th>fidelity</th><th>drift</th>'
            f'<th>combined</th><th class="l">measured with</th><th class="l"></th></tr>{"".join(rows)}</table>')


def _cell(report, s: float, j: int) -> str:
    row = next(r for r in report.per_prompt if r.strength == s and r.prompt == report.prompts[j])
    imgs = "".join(f'<img src="{data_uri(im)}" alt="seed {seed}" title="seed {seed}">'
                   for im, seed in zip(report.images[(s, j)], report.seeds))
    bits = [f"drift {row.drift:.3f}"]
    if row.drift_clip is not None:
        bits.append(f"CLIP {row.drift_clip:.3f}")
    if row.drift_dino is not None:
        bits.append(f"DINO {row.drift_dino:.3f}")
    second = []
    if row.prompt_clip is not None:
        second.append(f"CLIP-T {row.prompt_clip:.3f}")
    if row.subject_dino is not None:
        second.append(f"subj. DINO {row.subject_dino:.3f}")
    if row.fidelity is not None:
        second.append(f"toy {row.fidelity:.0%}")
    metrics = escape(" · ".join(bits)) + ("<br>" + escape(" · ".join(second)) if second else "")
    return f'<td>{imgs}<div class="m">{metrics}</div></td>'


def _grid(report) -> str:
    head = "".join(f'<th class="l">{"<span class=own>★ </span>" if o else ""}{escape(p)}</th>'
                   for p, o in zip(report.prompts, report.own))
    rows = "".join(f"<tr><th>{s:g}</th>" + "".join(_cell(report, s, j) for j in range(len(report.prompts))) + "</tr>"
                   for s in report.strengths)
    return f'<table class="grid"><tr><th>strength</th>{head}</tr>{rows}</table>'


def render(report, title: str | None = None) -> str:
    """The whole page as a string."""
    from .. import __version__

    loras = ", ".join(f"{escape(l['path'].rsplit('/', 1)[-1])} × {l['weight']:g}" for l in report.loras)
    st = report.settings
    meta = [f"<b>LoRA</b> {loras}", f"<b>base</b> {escape(str(st.get('model', '')))}",
            f"<b>trigger</b> {escape(report.trigger or '—')}",
            f"<b>seeds</b> {', '.join(map(str, report.seeds))}",
            f"<b>sampler</b> {escape(str(st.get('sampler')))}, {st.get('steps')} steps, CFG {st.get('guidance')}",
            f"<b>models</b> CLIP {escape(report.models.get('clip') or 'none')}, "
            f"DINO {escape(report.models.get('dino') or 'none')}"]
    notes = "".join(f'<div class="note"><b>{escape(k)}:</b> {escape(v)}</div>' for k, v in report.notes.items())
    chart = chart_uri(report)
    ref = report.reference
    ref_line = ""
    if report.data_images:
        parts = [f"{k.upper() if k == 'dino' else 'CLIP-I'} {v:.3f}" for k, v in ref.items()
                 if k in ("dino", "clip") and v is not None]
        ref_line = (f"<p>{len(report.data_images)} training images"
                    + (f"; similarity among themselves: {escape(', '.join(parts))}" if parts else "") + "</p>")
    thumbs = "".join(f'<img src="{data_uri(im, small=96, large=160)}" alt="training image {i}">'
                     for i, im in enumerate(report.data_images))
    legend = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in LEGEND.items())
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    name = title or (report.loras[0]["path"].rsplit("/", 1)[-1] if report.loras else "LoRA")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lorakit evaluate: {escape(name)}</title>
<style>{_CSS}</style></head><body>
<h1>What {escape(name)} learned and what it broke</h1>
<p class="meta">{" · ".join(meta)}</p>
{notes}
{_checkpoints(getattr(report, "checkpoints", None) or {})}
<h2>By strength</h2>
{_summary(report)}
{f'<img src="{chart}" alt="metrics against strength" width="1100">' if chart else ''}
<h2>Strength × prompt <span class="own" style="font-size:13px;font-weight:normal">★ the LoRA's own
prompts</span></h2>
{_grid(report)}
<h2>Training images</h2>
{ref_line or '<p class="na">none given (--data)</p>'}
<div class="thumbs">{thumbs}</div>
<h2>What the numbers mean</h2>
<dl>{legend}</dl>
<p class="meta">lorakit {escape(__version__)} · {when}</p>
</body></html>
"""
