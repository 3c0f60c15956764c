"""`lorakit extract` from two SDXL and two SD 1.5 single files: time and peak memory.

Inputs: for each architecture two original-layout (A1111) single files with random weights, fp16
on disk as people share them, UNet + text encoder(s) + VAE (SDXL: 6.9 GB each, SD 1.5: 2.1 GB):
a base (N(0, 0.02) weights) and a tuned one = base + a planted rank-48 update (σᵢ ∝ 0.95ⁱ, RMS
0.2 × the weights') + 5 % noise on every layer `lorakit extract` targets by default (text
encoders included). They are written to --work (default /tmp/lorakit-bench-extract) and reused
when present.

Measured, each in its own process (peak RSS: that process's own high-water mark, VmHWM, which
getrusage also gives when the parent is small; see own_peak_rss_gb): `lorakit
extract --rank 32` with the CLI's defaults otherwise (weights taken in fp32, saved in fp16),
which reads both files one layer at a time; and, where it fits in memory, the previous way
(`load_model` both models whole in fp32, then extract; what kohya's extract_lora_from_models.py
also does). The two give the same file, tensor for tensor; the script checks that where both run.
kohya's figures on SD 1.5 (234 s, 12.6 GB on this machine) are quoted, not run.

Usage: python benchmarks/extract.py [--quick] [--work DIR] [--skip-sdxl] [--skip-whole]
`--quick` runs the same steps on tiny SD 1.5 / SDXL layouts in seconds, in one process (the test
suite runs it; its memory figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CONFIGS, machine, peak_rss_gb, table, write_results  # noqa: E402

RANK, PLANTED_RANK, NOISE = 32, 48, 0.05
GB = 2**30  # as peak_rss_gb counts
KOHYA_SD15 = {"seconds": 234, "peak_rss_gb": 12.6}  # measured on this machine earlier (same models)
SHIPPED = {"sd1": "sd15", "sdxl": "sdxl-base"}
LABEL = {"sd1": "SD 1.5", "sdxl": "SDXL"}


# --- the checkpoints ---------------------------------------------------------------------------------

def _meta_components(family: str, config_dir: Path):
    """The family's UNet, VAE and text encoders on `meta`, from a diffusers config folder."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    from lorakit import families

    spec = families.get(family)
    with init_empty_weights():
        unet = diffusers.UNet2DConditionModel.from_config(
            diffusers.UNet2DConditionModel.load_config(str(config_dir / "unet")))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(str(config_dir / "vae")))
        encoders = []
        for sub, cls_name in zip(spec.text_encoders, spec.text_encoder_classes):
            cls = getattr(transformers, cls_name)
            encoders.append(cls(cls.config_class.from_pretrained(str(config_dir / sub))))
    return unet, vae, encoders


def original_shapes(family: str, config_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of the family's original single file (the layout lorakit saves)."""
    from lorakit import families

    unet, vae, encoders = _meta_components(family, config_dir)
    state = families.get(family).to_original(unet.state_dict(), dict(unet.config), vae.state_dict(), dict(vae.config),
                                             [te.state_dict() for te in encoders])
    return {k: tuple(v.shape) for k, v in state.items()}


def parameter_count(family: str, config_dir: Path) -> dict[str, int]:
    unet, vae, encoders = _meta_components(family, config_dir)
    count = {"unet": sum(p.numel() for p in unet.parameters()), "vae": sum(p.numel() for p in vae.parameters())}
    count["text_encoders"] = sum(p.numel() for te in encoders for p in te.parameters())
    return count


def _targets(path: Path, config_dir: Path) -> list[tuple[str, int | None]]:
    """(tensor name, third of a fused q/k/v or None) of each layer `lorakit extract` targets."""
    from lorakit.lora import select
    from lorakit.models.streaming import open_streamed

    model = open_streamed(str(path), config_dir=config_dir)
    return [model.locate(t) for t in select(model.parts, "transformer")]


def _plant(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """w + a rank-48 update (σᵢ ∝ 0.95ⁱ, RMS 0.2 × w's) + 5 % noise, in fp32."""
    m = w.shape[0]
    flat = w.reshape(m, -1).float()
    n = flat.shape[1]
    k = min(PLANTED_RANK, m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g)).Q
    s = 0.95 ** torch.arange(k, dtype=torch.float32)
    delta = (u * s) @ v.T
    delta *= 0.2 * flat.pow(2).mean().sqrt() / delta.pow(2).mean().sqrt()
    delta += torch.randn(m, n, generator=g) * (NOISE * delta.pow(2).mean().sqrt())
    return (flat + delta).reshape(w.shape)


def make_pair(family: str, config_dir: Path, work: Path) -> tuple[Path, Path]:
    """base.safetensors and tuned.safetensors of `family` in `work` (kept when already there)."""
    from safetensors.torch import save_file

    base, tuned = work / f"{family}-base.safetensors", work / f"{family}-tuned.safetensors"
    if base.is_file() and tuned.is_file():
        return base, tuned
    work.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in original_shapes(family, config_dir).items():
        state[key] = (torch.randn(shape, generator=g) * 0.02).to(torch.float16)
    metadata = {"modelspec.architecture": family}
    save_file(state, str(work / "partial.safetensors"), metadata)
    (work / "partial.safetensors").rename(base)
    for key, third in _targets(base, config_dir):
        w = state[key]
        if third is None:
            state[key] = _plant(w, g).to(torch.float16)
        else:
            rows = w.shape[0] // 3
            w[third * rows:(third + 1) * rows] = _plant(w[third * rows:(third + 1) * rows], g).to(torch.float16)
    save_file(state, str(work / "partial.safetensors"), metadata)
    (work / "partial.safetensors").rename(tuned)
    return base, tuned


def _make_pair_apart(family: str, config_dir: Path, work: Path) -> tuple[Path, Path]:
    """make_pair in a process of its own: the 7 GB it holds for SDXL go back to the system at once."""
    base, tuned = work / f"{family}-base.safetensors", work / f"{family}-tuned.safetensors"
    if not (base.is_file() and tuned.is_file()):
        subprocess.run([sys.executable, __file__, "--make", family, "--config-dir", str(config_dir), "--work",
                        str(work)], check=True)
    return base, tuned


# --- one measurement, in its own process ------------------------------------------------------------

def child(way: str, base: str, tuned: str, out: str, config_dir: str | None) -> dict:
    """Run one extraction here and report its seconds and this process's peak RSS."""
    t = time.perf_counter()
    if way == "streamed":  # `lorakit extract` itself
        from lorakit.cli import main

        argv = ["extract", "--base", base, "--tuned", tuned, "--rank", str(RANK), "--out", out]
        code = main(argv + (["--config-dir", config_dir] if config_dir else []))
        if code != 0:
            raise SystemExit(code)
    else:  # the previous way: both models loaded whole in fp32, then the same extraction
        from lorakit.ops.extract import extract
        from lorakit.models import load_model

        models = [load_model(p, dtype=torch.float32, components=("unet", "text_encoders"), config_dir=config_dir)
                  for p in (base, tuned)]
        res = extract(models[0], models[1], RANK, out=out)
        for line in res.report():
            print(line)
    return {"seconds": time.perf_counter() - t, "peak_rss_gb": own_peak_rss_gb(), "getrusage_gb": peak_rss_gb()}


def own_peak_rss_gb() -> float:
    """This process's own peak RSS. getrusage's ru_maxrss is the right figure in a process started
    from a small parent only: Linux keeps, across fork and exec, the larger of the parent's
    high-water mark and the new one (a parent that built a 7 GB checkpoint made every child read
    7+ GB). VmHWM is the high-water mark of this process's memory alone; where /proc has none,
    getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return peak_rss_gb()


def _measure_here(way: str, base: Path, tuned: Path, out: Path, config_dir: Path | None) -> dict:
    """--quick: the same steps in this process (seconds; its memory figures mean nothing)."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = child(way, str(base), str(tuned), str(out), str(config_dir) if config_dir else None)
    result["report"] = [ln for ln in printed.getvalue().splitlines() if ln.startswith(("unet", "te"))]
    return result


def _measure_apart(way: str, base: Path, tuned: Path, out: Path, config_dir: Path | None) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--base", str(base), "--tuned", str(tuned), "--out", str(out)]
    if config_dir is not None:
        cmd += ["--config-dir", str(config_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{way} extraction failed:\n{done.stdout}\n{done.stderr}")
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["report"] = [ln for ln in lines[:-1] if ln.startswith(("unet", "te"))]
    return result


def same_files(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# --- the run -------------------------------------------------------------------------------------------

def _tiny_configs(work: Path, wanted) -> dict[str, Path]:
    """Config folders of the tiny SD1 and SDXL layouts (lorakit.models.tiny), for --quick."""
    from lorakit.models.tiny import tiny_pipeline

    folders = {}
    for family in wanted:
        folder = work / f"{family}-config"
        if not (folder / "model_index.json").is_file():
            tiny_pipeline(family).save_pretrained(folder)
            for f in list(folder.rglob("*.safetensors")):
                f.unlink()
        folders[family] = folder
    return folders


def whole_model_gb(family: str, config_dir: Path) -> float:
    """fp32 bytes of two models' UNet + text encoders: what loading both whole holds at least."""
    count = parameter_count(family, config_dir)
    return 2 * 4 * (count["unet"] + count["text_encoders"]) / GB


def kohya_sdxl_gb(config_dir: Path) -> float:
    """kohya's --sdxl loads the VAE of each model too, all in fp32."""
    count = parameter_count("sdxl", config_dir)
    return 2 * 4 * sum(count.values()) / GB


def run(args) -> dict:
    work = Path(args.work)
    families = [f for f in ("sdxl", "sd1") if not (args.skip_sdxl and f == "sdxl")]
    configs = _tiny_configs(work, families) if args.quick else {f: CONFIGS / d for f, d in SHIPPED.items()}
    results = {"machine": machine(), "quick": args.quick, "rank": RANK, "runs": {}}
    free = _available_gb()
    for family in families:
        cfg = configs[family]
        t = time.perf_counter()
        base, tuned = make_pair(family, cfg, work) if args.quick else _make_pair_apart(family, cfg, work)
        made = time.perf_counter() - t
        row = {"file_gb": base.stat().st_size / GB, "make_seconds": made, "whole_needs_gb": whole_model_gb(family, cfg)}
        if family == "sdxl":
            row["kohya_needs_gb"] = kohya_sdxl_gb(cfg)
        explicit = cfg if args.quick else None
        measure = _measure_here if args.quick else _measure_apart
        row["streamed"] = measure("streamed", base, tuned, work / f"{family}-streamed.safetensors", explicit)
        fits = row["whole_needs_gb"] * 1.15 < free  # the models plus the runtime and the per-layer work
        if args.skip_whole or not fits:
            row["whole"] = None
        else:
            row["whole"] = measure("whole", base, tuned, work / f"{family}-whole.safetensors", explicit)
            row["identical"] = same_files(work / f"{family}-streamed.safetensors",
                                          work / f"{family}-whole.safetensors")
        results["runs"][family] = row
        print(f"{LABEL[family]}: done ({row['streamed']['seconds']:.1f} s streamed)", file=sys.stderr)
    results["available_gb_at_start"] = free
    return results


def _available_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / GB


def report(results: dict) -> str:
    rows = []
    for family, row in results["runs"].items():
        name = LABEL[family]
        s = row["streamed"]
        rows.append([f"{name}: lorakit extract (layer by layer)", f"{s['seconds']:.1f}", f"{s['peak_rss_gb']:.2f}",
                     "; ".join(s["report"])])
        w = row["whole"]
        if w is not None:
            same = "same file, tensor for tensor" if row.get("identical") else "DIFFERENT FILE"
            rows.append([f"{name}: both models loaded whole (previous lorakit)", f"{w['seconds']:.1f}",
                         f"{w['peak_rss_gb']:.2f}", same])
        else:
            rows.append([f"{name}: both models loaded whole (previous lorakit)", "not run",
                         f"≥ {row['whole_needs_gb']:.1f} (fp32 weights alone)",
                         f"does not fit: {results['available_gb_at_start']:.1f} GB available"])
        if family == "sd1" and not results["quick"]:
            rows.append(["SD 1.5: kohya extract_lora_from_models.py (quoted)", KOHYA_SD15["seconds"],
                         KOHYA_SD15["peak_rss_gb"], "measured earlier on this machine"])
        if family == "sdxl" and not results["quick"]:
            rows.append(["SDXL: kohya extract_lora_from_models.py --sdxl (not run)", "—",
                         f"≥ {row['kohya_needs_gb']:.1f}",
                         "loads both whole in fp32 (UNet, both text encoders, VAE) and keeps every ΔW"])
    return table(rows, ["what", "seconds", "peak RSS (GB)", "notes"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny SD 1.5 / SDXL layouts, seconds")
    p.add_argument("--work", default="/tmp/lorakit-bench-extract", help="where the checkpoints go (reused)")
    p.add_argument("--skip-sdxl", action="store_true")
    p.add_argument("--skip-whole", action="store_true", help="measure only the layer-by-layer way")
    p.add_argument("--clean", action="store_true", help="delete the work folder afterwards")
    p.add_argument("--child", choices=("streamed", "whole"), help=argparse.SUPPRESS)
    p.add_argument("--make", choices=tuple(SHIPPED), help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--tuned", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--config-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.base, args.tuned, args.out, args.config_dir)))
        return
    if args.make:
        make_pair(args.make, Path(args.config_dir), Path(args.work))
        return
    if args.quick and args.work == p.get_default("work"):
        args.work = "/tmp/lorakit-bench-extract-quick"
    results = run(args)
    text = report(results)
    print(text)
    if not args.quick:
        path = write_results("extract", results)
        print(f"\nwrote {path}")
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
