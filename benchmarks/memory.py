"""Big bases on this machine: peak RSS, seconds per step and the memory plan's estimate, per base precision.

Real-size architectures with random weights, written as the files users have, each tensor generated
and written one at a time (never a whole model in memory):
- Flux.1-dev: a BFL-layout transformer file in fp8 (e4m3fn, as Kijai's `flux1-dev-fp8` and
  ComfyUI's fp8 files store it), with its parts in a folder: CLIP-L and T5-XXL (4.8 B, bf16) at real
  size, the VAE, and a word-level T5 tokenizer (the real sentencepiece one cannot ship);
- SD 3.5-large and SD 3.5-medium: SAI-layout single files in bf16 (transformer and VAE, as
  `sd3.5_large.safetensors` is shipped), their text encoders (CLIP-L, CLIP-G, the same T5-XXL) in a
  folder.
Each row is one run of lorakit in its own process (so the peak RSS, ru_maxrss, is that run's alone),
at 512 px, batch 1, rank 16 on the default preset, gradient checkpointing on: `train` for two steps
(text encoders first, their outputs cached, then released; then the denoiser), or one 4-step
`generate` with that LoRA on the fly, in stages as `lorakit generate` does (prompts encoded, the text
encoders released, then the denoiser loaded). Its seconds per step is the second training step (the
first includes the first call's warm-up and runs without optimizer state), or the generation's time
per denoising step, loading the denoiser included. Each row also keeps a timeline of its RSS.

    python benchmarks/memory.py --work /big/disk/lorakit-mem                # every row
    python benchmarks/memory.py --work DIR --rows sd35m-bf16-train,sd35m-fp8-train
    python benchmarks/memory.py --work DIR --list
    python benchmarks/memory.py --work DIR --device cuda   # on a GPU: peak VRAM, and the --blocks-to-swap rows

The files need ~46 GB of disk under --work (written once, reused). Prints a markdown table and writes
benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, peak_rss_gb, run_worker, table, write_results  # noqa: E402

RESOLUTION, RANK = 512, 16
# two steps, the second reported: the first compiles the quantized layers' dequantize and has no optimizer state yet
TRAIN_STEPS = 2
PROMPT = "a photo of sks dog on the beach"

# row name: (base, job, base precision)
ROWS = {
    "flux-fp8-train": ("flux", "train", "fp8"),
    "flux-nf4-train": ("flux", "train", "nf4"),
    "flux-int8-train": ("flux", "train", "int8"),
    "flux-fp8-generate": ("flux", "generate", "fp8"),
    "flux-nf4-generate": ("flux", "generate", "nf4"),
    "sd35l-fp8-train": ("sd35l", "train", "fp8"),
    "sd35m-load-bf16": ("sd35m", "load", "bf16"),
    "sd35m-bf16-train": ("sd35m", "train", "bf16"),
    "sd35m-fp8-train": ("sd35m", "train", "fp8"),
    "sd35m-int8-train": ("sd35m", "train", "int8"),
    "sd35m-nf4-train": ("sd35m", "train", "nf4"),
    "flux-fp8-train-adafactor": ("flux", "train", "fp8"),
    "sd35l-fp8-train-adafactor": ("sd35l", "train", "fp8"),
    "flux-nf4-train-adafactor": ("flux", "train", "nf4"),
}
# rows trained with another optimizer than AdamW (the low-memory recipes' Adafactor)
OPTIMIZERS = {row: "adafactor" for row in ROWS if row.endswith("-adafactor")}
# GPU only (--device cuda): the same with sd-scripts' block swap, the blocks' weights in CPU memory
SWAP_ROWS = {"flux-fp8-train-swap18": ("flux", "train", "fp8", 18),
             "flux-bf16-train-swap28": ("flux", "train", "bf16", 28),
             "flux-fp8-generate-swap18": ("flux", "generate", "fp8", 18)}
# rows that are only planned (they do not fit this 24 GB machine): the plan's estimate is shown
PLAN_ONLY = {"flux-bf16-train": ("flux", "train", "bf16"), "flux-bf16-generate": ("flux", "generate", "bf16"),
             # the plan alone for rows whose run takes long here (a 12 B nf4 quantization is ~30 min on 2 cores)
             **{f"{row}-plan": spec for row, spec in ROWS.items()}}
BASES = {"flux": ("flux1-dev-fp8.safetensors", "flux-parts"),
         "sd35l": ("sd3.5_large.safetensors", "sd3-parts"),
         "sd35m": ("sd3.5_medium.safetensors", "sd3-parts")}


# --- writing the files -------------------------------------------------------------------------------

_ST_DTYPES = {"torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16",
              "torch.float8_e4m3fn": "F8_E4M3"}


def write_streamed(path: Path, entries, metadata: dict | None = None) -> None:
    """A .safetensors file from (name, shape, dtype) entries, each tensor generated (`fill`) and written
    in turn. safetensors itself writes only from a dict of tensors held at once, hence this writer of
    its documented layout (8-byte little-endian header size, JSON header, data in header order)."""
    import torch

    entries = list(entries)
    header, offset = {}, 0
    for name, shape, dtype in entries:
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_DTYPES[str(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(path.suffix + ".part")
    gen = torch.Generator().manual_seed(0)
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in entries:
            f.write(_fill(name, shape, dtype, gen).contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def _fill(name: str, shape, dtype, gen):
    """Weights 𝒩(0, 1/fan_in) (activations stay bounded through the blocks), norm scales 1, biases 0."""
    import torch

    if len(shape) == 1:
        one = any(k in name for k in ("norm", "scale", "ln_", "layer_norm")) and not name.endswith("bias")
        return (torch.ones if one else torch.zeros)(shape, dtype=torch.float32).to(dtype)
    fan_in = max(1, int(torch.Size(shape[1:]).numel()))
    t = torch.empty(shape, dtype=torch.float32).normal_(0.0, fan_in ** -0.5, generator=gen)
    return t.to(dtype)


def _meta_state(cls, config):
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    return model.state_dict()


def _entries(state: dict, dtype_of) -> list:
    return [(k, tuple(v.shape), dtype_of(k, v)) for k, v in state.items()]


def write_flux(work: Path) -> None:
    import diffusers
    import torch

    from lorakit.families.flux import naming
    from lorakit.models.single_file import CONFIGS_DIR

    path = work / BASES["flux"][0]
    if path.is_file():
        return
    config = diffusers.FluxTransformer2DModel.load_config(CONFIGS_DIR / "flux1-dev" / "transformer")
    bfl = naming.diffusers_state_to_bfl(_meta_state(diffusers.FluxTransformer2DModel, config))
    fp8 = torch.float8_e4m3fn
    write_streamed(path, _entries(bfl, lambda k, v: fp8 if v.dim() == 2 else torch.bfloat16))


def write_sd3(work: Path, name: str, config_name: str) -> None:
    import diffusers
    import torch

    from lorakit.families.sd3 import loading
    from lorakit.models.single_file import CONFIGS_DIR

    path = work / BASES[name][0]
    if path.is_file():
        return
    root = CONFIGS_DIR / config_name
    tcfg = diffusers.SD3Transformer2DModel.load_config(root / "transformer")
    vcfg = diffusers.AutoencoderKL.load_config(root / "vae")
    state = loading.original_state(_meta_state(diffusers.SD3Transformer2DModel, tcfg),
                                   _meta_state(diffusers.AutoencoderKL, vcfg), vcfg, [None, None, None])
    write_streamed(path, _entries(state, lambda k, v: torch.bfloat16),
                   {"modelspec.architecture": f"stable-diffusion-3-{config_name.replace('sd35-', '')}"})


def _word_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in PROMPT.split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=512).save_pretrained(folder)


def _write_transformers_part(folder: Path, cls_name: str, config_file: Path) -> None:
    """A transformers model folder (config.json + model.safetensors, bf16) written tensor by tensor."""
    import torch
    import transformers

    if (folder / "model.safetensors").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    cls = getattr(transformers, cls_name)
    config = cls.config_class.from_json_file(str(config_file))
    config.torch_dtype = "bfloat16"
    state = _meta_state(cls, config)
    tied = {"encoder.embed_tokens.weight"} if cls_name == "T5EncoderModel" else set()
    write_streamed(folder / "model.safetensors", _entries({k: v for k, v in state.items() if k not in tied},
                                                          lambda k, v: torch.bfloat16), {"format": "pt"})
    config.save_pretrained(folder)


def _write_vae(folder: Path, config_dir: Path) -> None:
    import diffusers
    import torch

    if (folder / "diffusion_pytorch_model.safetensors").is_file():
        return
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config_dir))
    vae.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)


def write_parts(work: Path) -> None:
    from lorakit.models.single_file import CONFIGS_DIR

    flux, sd3 = work / "flux-parts", work / "sd3-parts"
    fc, sc = CONFIGS_DIR / "flux1-dev", CONFIGS_DIR / "sd35-large"
    _write_transformers_part(flux / "text_encoder_2", "T5EncoderModel", fc / "text_encoder_2" / "config.json")
    _write_transformers_part(flux / "text_encoder", "CLIPTextModel", fc / "text_encoder" / "config.json")
    _write_vae(flux / "vae", fc / "vae")
    if not (flux / "tokenizer_2").is_dir():
        _word_tokenizer(flux / "tokenizer_2")
    _write_transformers_part(sd3 / "text_encoder", "CLIPTextModelWithProjection", sc / "text_encoder" / "config.json")
    _write_transformers_part(sd3 / "text_encoder_2", "CLIPTextModelWithProjection",
                             sc / "text_encoder_2" / "config.json")
    sd3.mkdir(parents=True, exist_ok=True)
    for sub, target in (("text_encoder_3", flux / "text_encoder_2"), ("tokenizer_3", flux / "tokenizer_2")):
        if not (sd3 / sub).exists():
            (sd3 / sub).symlink_to(target.resolve(), target_is_directory=True)


def write_data(work: Path) -> Path:
    import numpy as np
    from PIL import Image

    data = work / "data"
    if not (data / "0.png").is_file():
        data.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)).save(data / "0.png")
        (data / "0.txt").write_text(PROMPT)
    return data


def prepare(work: Path, bases) -> None:
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_parts(work)
    if "flux" in bases:
        write_flux(work)
    if "sd35l" in bases:
        write_sd3(work, "sd35l", "sd35-large")
    if "sd35m" in bases:
        write_sd3(work, "sd35m", "sd35-medium")
    write_data(work)
    print(f"files ready in {work} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)


# --- the runs -----------------------------------------------------------------------------------------

def _train_config(work: Path, base: str, precision: str, out: str, swap: int = 0, optimizer: str = "adamw"):
    from lorakit.train.config import TrainConfig

    model, parts = BASES[base]
    extra = {"blocks_to_swap": swap} if swap else {}
    return TrainConfig(model=str(work / model), text_encoders=work / parts, data=work / "data",
                       out=work / f"{out}.safetensors",
                       resolution=RESOLUTION, batch_size=1, rank=RANK, steps=TRAIN_STEPS, gradient_checkpointing=True,
                       base_precision=precision, seed=0, optimizer=optimizer, **extra)


def plan_estimate(work: Path, base: str, job: str, precision: str, device: str = "cpu",
                  swap: int = 0, optimizer: str = "adamw") -> float | None:
    """The total of `lorakit train|generate ... --plan` (GB) for the row, as a user would ask it."""
    import re
    import subprocess

    model, parts = BASES[base]
    common = ["--model", str(work / model), "--text-encoders", str(work / parts), "--base-precision", precision,
              "--plan", *(["--blocks-to-swap", str(swap)] if swap else [])]
    if job == "generate":
        args = ["generate", *common, "--prompt", PROMPT, "--width", str(RESOLUTION), "--height", str(RESOLUTION),
                "--steps", "4", "--out", str(work / "plan.png")]
    else:
        args = ["train", *common, "--data", str(work / "data"), "--resolution", str(RESOLUTION), "--rank",
                str(RANK), "--steps", "1", "--gradient-checkpointing", "--optimizer", optimizer,
                "--out", str(work / "plan.safetensors")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", **({} if device.startswith("cuda") else {"CUDA_VISIBLE_DEVICES": ""}))
    proc = subprocess.run([sys.executable, "-m", "lorakit", *args], capture_output=True, text=True, env=env)
    found = re.search(r"peak ([0-9.]+) (GiB|MiB)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not found:
        print(f"plan for {base} {job} {precision} failed: {(proc.stdout + proc.stderr)[-600:]}", file=sys.stderr)
        return None
    return float(found.group(1)) * (2 ** 30 if found.group(2) == "GiB" else 2 ** 20) / 1e9


def _row(row: str) -> tuple[str, str, str, int]:
    if row in SWAP_ROWS:
        return SWAP_ROWS[row]
    return (*{**ROWS, **PLAN_ONLY}[row], 0)


def _rss_timeline(t0: float, every: float = 1.0) -> list:
    """[seconds, resident GB] sampled in a thread until the process ends."""
    import threading

    samples: list = []

    def sample():
        while True:
            try:
                kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
            except (OSError, StopIteration):
                return
            samples.append([round(time.perf_counter() - t0, 1), round(kb * 1024 / 1e9, 2)])
            time.sleep(every)

    threading.Thread(target=sample, daemon=True).start()
    return samples


def worker(work: Path, row: str, device: str = "cpu") -> dict:
    base, job, precision, swap = _row(row)
    optimizer = OPTIMIZERS.get(row.removesuffix("-plan"), "adamw")
    estimate = plan_estimate(work, base, job, precision, device, swap, optimizer)
    if row in PLAN_ONLY:
        return {"estimate_gb": estimate}
    import torch

    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    out: dict = {"estimate_gb": estimate}
    timeline = _rss_timeline(t0)
    if job == "train":
        from lorakit.train.loop import Trainer

        result = Trainer(_train_config(work, base, precision, f"out-{row}", swap, optimizer)).run()
        out["step_s"] = result.step_times[-1] if result.step_times else None
        out["first_step_s"] = result.step_times[0] if result.step_times else None
    elif job == "load":
        from lorakit.models import load_model

        model, parts = BASES[base]
        load_model(str(work / model), text_encoders=work / parts, components=("unet",), base_precision=precision)
        out["weights_gb"] = (work / model).stat().st_size / 1e9
    else:
        import torch

        from lorakit.generate import LoraSpec, generate
        from lorakit.models import load_model

        model, parts = BASES[base]

        def load(components):
            return load_model(str(work / model), text_encoders=work / parts, base_precision=precision,
                              device=device, components=components)

        from lorakit.heap_trim import map_large_blocks

        map_large_blocks()  # as `lorakit generate` does, and loads the encoders, then the denoiser
        m = load(("vae", "text_encoders"))

        def add_denoiser():
            m.pipe.register_modules(**{m.spec.denoiser: load(("unet",)).unet})
            if swap:
                from lorakit import block_swap

                block_swap.apply(m.unet, swap, device)

        lora = work / f"out-{base}-{precision}-train.safetensors"
        loras = [LoraSpec(lora, 1.0)] if lora.is_file() else []
        t = time.perf_counter()
        with torch.inference_mode():
            generate(m, PROMPT, loras=loras, steps=4, width=RESOLUTION, height=RESOLUTION, guidance=3.5,
                     merge=False, progress=False, add_denoiser=add_denoiser)
        out["step_s"] = (time.perf_counter() - t) / 4  # loading the denoiser included
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_gb"] = peak_rss_gb() * 1.073741824  # GiB → GB, as the goals are written
    out["rss_timeline"] = timeline[::max(1, len(timeline) // 60)]  # [seconds, GB]: where the peak falls
    if cuda:
        out["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "lorakit-memory")
    ap.add_argument("--rows", default=None, help="comma-separated (default: every row for the device)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (peak VRAM too, and the block-swap rows)")
    ap.add_argument("--worker")
    args = ap.parse_args(argv)
    everything = list(ROWS) + list(PLAN_ONLY) + list(SWAP_ROWS)
    if args.list:
        print("\n".join(everything))
        return
    if args.worker:
        print(json.dumps(worker(args.work, args.worker, args.device)))
        return
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("benchmarks/memory.py: no CUDA device here; use --device cpu", file=sys.stderr)
            raise SystemExit(2)
    rows = [r for r in (args.rows or ",".join(everything if cuda else list(ROWS) + list(PLAN_ONLY))).split(",") if r]
    unknown = [r for r in rows if r not in everything]
    if not cuda and any(r in SWAP_ROWS for r in rows):
        raise SystemExit("the block-swap rows need --device cuda")
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: see --list")
    prepare(args.work, {_row(r)[0] for r in rows})
    results = {}
    for row in rows:
        t = time.perf_counter()
        results[row] = run_worker(__file__, ["--work", str(args.work), "--device", args.device, "--worker", row], row)
        print(f"{row}: {results[row]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    lines = []
    for row, r in results.items():
        base, job, precision, swap = _row(row)
        peak = r.get("peak_vram_gb" if cuda else "peak_rss_gb")
        est = r.get("estimate_gb")
        ratio = f"{est / peak:.2f}" if peak and est else "—"
        missing = "plan only" if row.endswith("-plan") else "does not fit in 24 GB"
        lines.append([base, job, precision, swap or "—", f"{peak:.1f}" if peak else missing,
                      f"{r['step_s']:.1f}" if r.get("step_s") else "—", f"{est:.1f}" if est else "—", ratio])
    what = "peak VRAM (GB)" if cuda else "peak RSS (GB)"
    print(table(lines, ["base", "job", "base precision", "blocks swapped", what, "s/step", "plan (GB)", "plan/peak"]))
    path = write_results("memory-cuda" if cuda else "memory", {"machine": machine(), "device": args.device,
                                                               "resolution": RESOLUTION, "rank": RANK, "rows": results})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
