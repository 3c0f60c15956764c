"""Text-to-image with any number of LoRAs at chosen strengths, merged or on the fly.

Images carry A1111's `parameters` PNG text chunk, so A1111 ("PNG Info") and CivitAI read the
prompt, seed, sampler and LoRA hashes back.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from . import __version__
from .errors import LoraKitError

if TYPE_CHECKING:
    from .prompt_tags import LoraTag

_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")


@dataclass
class LoraSpec:
    path: Path
    weight: float = 1.0
    tag: LoraTag | None = None  # a prompt tag's te/unet/block weights (weight is then its te weight)

    @property
    def name(self) -> str:
        return self.path.stem

    def params(self) -> str:
        """What follows the name in an A1111 `<lora:name:…>` tag."""
        return self.tag.params() if self.tag is not None else f"{self.weight:g}"


def read_prompt_file(path: Path, what: str = "prompt file") -> list[str]:
    """One prompt a line; blank lines and `#` comments skipped; an empty or unreadable file is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise LoraKitError(f"{what} does not exist", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoraKitError(f"cannot read the {what} ({exc.__class__.__name__})", path) from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise LoraKitError(f"the {what} has no prompts", path)
    return prompts


def parse_lora_arg(value: str) -> LoraSpec:
    """`FILE[:WEIGHT]`; a Windows drive colon or a colon in the name is kept when no number follows."""
    path, sep, weight = value.rpartition(":")
    if sep and path:
        try:
            return LoraSpec(Path(path), float(weight))
        except ValueError:
            pass
    return LoraSpec(Path(value), 1.0)


def split_prompt_loras(prompt: str, lora_dir: Path | None) -> tuple[str, list[LoraSpec]]:
    """A1111's `<lora:name:te:unet>` / `lbw=` tags (prompt_tags.py) → (prompt without them, the LoRAs
    found under --lora-dir)."""
    from .prompt_tags import parse

    clean, tags = parse(prompt)
    specs = []
    for tag in tags:
        if lora_dir is None:
            raise LoraKitError(f"the prompt names {tag.text} but no --lora-dir was given")
        specs.append(LoraSpec(find_lora(lora_dir, tag.name), tag.te, tag))
    return clean, specs


_LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


def find_lora(lora_dir: Path, name: str) -> Path:
    """A LoRA by name anywhere under `lora_dir`, as A1111 lists its Lora folder: the file name without
    its suffix (.safetensors, .pt, .ckpt), or a path relative to the folder."""
    direct = [p for p in [lora_dir / name] + [lora_dir / f"{name}{s}" for s in _LORA_SUFFIXES] if p.is_file()]
    if direct:
        return direct[0]
    found = sorted(p for p in lora_dir.rglob("*") if p.suffix.lower() in _LORA_SUFFIXES and p.stem == name
                   and p.is_file())
    if not found:
        raise LoraKitError(f"no LoRA named {name!r} under the folder (looked for {name}.safetensors, .pt, .ckpt "
                           f"in it and its subfolders)", lora_dir)
    if len(found) > 1:
        raise LoraKitError(f"LoRA name {name!r} is ambiguous: {found[0]} and {found[1]}; write its path "
                           f"relative to the folder", lora_dir)
    return found[0]


@dataclass
class GenerateResult:
    images: list
    seeds: list[int]
    infotexts: list[str] = field(default_factory=list)


def infotext(prompt: str, negative: str, steps: int, sampler: str, guidance: float, seed: int, width: int,
             height: int, model_name: str, model_hash: str | None, loras: Sequence[tuple[str, float, str]]) -> str:
    """The `parameters` text A1111 writes (its `create_infotext` layout)."""
    from .samplers import a1111_name

    tags = "".join(f" <lora:{name}:{w if isinstance(w, str) else format(w, 'g')}>" for name, w, _ in loras
                   if f"<lora:{name}:" not in prompt)
    lines = [prompt + tags]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    params = [f"Steps: {steps}", f"Sampler: {a1111_name(sampler)}", f"CFG scale: {guidance:g}", f"Seed: {seed}",
              f"Size: {width}x{height}"]
    if model_hash:
        params.append(f"Model hash: {model_hash}")
    params.append(f"Model: {model_name}")
    if loras:
        params.append('Lora hashes: "' + ", ".join(f"{n}: {h}" for n, _, h in loras) + '"')
    params.append(f"Version: lorakit {__version__}")
    lines.append(", ".join(params))
    return "\n".join(lines)


def attach_loras(model, specs: Sequence[LoraSpec], merge: bool = True, *, allow_pickle: bool = False,
                 stage: str | None = None):
    """Load each LoRA onto the model at its strength; returns the networks (detach with `detach_loras`).

    Pickled LoRAs (.ckpt/.pt/.bin) are refused unless `allow_pickle` (then read with weights_only).
    `stage` ("text" / "denoiser"): only the modules of the parts a staged generation holds now.
    """
    from .formats import load_network

    parts = model.parts()
    networks = []
    try:
        for spec in specs:
            tag = spec.tag
            net = load_network(parts, spec.path, multiplier=1.0 if tag else spec.weight, allow_pickle=allow_pickle,
                               stage=stage)
            if tag is not None:
                from .prompt_tags import module_scales

                net.set_scales(module_scales(tag, net, parts))
            # the factors as the file holds them, either way: merged and on the fly build W + ΔW from
            # the same numbers in fp32 (the branch casts them to the activations' dtype per call)
            net.to(device=_device(model))
            net.merge() if merge else net.apply()
            networks.append(net)
    except Exception:
        detach_loras(networks)
        raise
    return networks


def _device(model):
    part = model.unet if model.unet is not None else next(m for m in model.text_encoders if m is not None)
    return next(part.parameters()).device


def detach_loras(networks) -> None:
    for net in reversed(list(networks)):
        net.unmerge()
        net.remove()


def lora_short_hash(path: Path) -> str:
    """A1111's LoRA short hash: the first 12 hex digits of the safetensors body hash (of the whole
    file for a pickle, as A1111 does)."""
    from .formats import file_hashes
    from .pickles import PICKLE_SUFFIXES

    if path.suffix.lower() in PICKLE_SUFFIXES:
        return file_sha256(path)[:12]
    return file_hashes(path)["sshs_model_hash"][:12]


def generate(model, prompt: str, *, negative: str = "", loras: Sequence[LoraSpec] = (), n: int = 1, steps: int = 25,
             guidance: float = 7.0, seed: int = 0, width: int | None = None, height: int | None = None,
             sampler: str = "euler_a", merge: bool = True, lora_dir: Path | None = None,
             progress: bool = True, allow_pickle: bool = False, add_denoiser=None) -> GenerateResult:
    """n images, seeds seed, seed+1, … (A1111's batch seeds), LoRAs detached again afterwards.

    A model loaded without its denoiser is generated from in stages: the prompts are encoded (with the
    LoRAs' text-encoder modules), the text encoders released where the family's are big (T5-XXL), and
    only then `add_denoiser()` loads the denoiser, so the two never sit in memory together; the denoiser
    is released in turn before the VAE decodes the latents (the model is spent afterwards)."""
    from .samplers import effective_name, make_scheduler

    prompt, tagged = split_prompt_loras(prompt, lora_dir)
    specs = list(loras) + tagged
    for spec in specs:
        if not spec.path.is_file():
            raise LoraKitError("LoRA file not found", spec.path)
    if n < 1 or steps < 1:
        raise LoraKitError(f"--n and --steps must be ≥ 1 (got n={n}, steps={steps})")
    pipe = model.pipe
    scale = model.spec.vae_geometry(pipe.vae.config)[0]
    config = model.unet.config if model.unet is not None else (model.denoiser_config or {})
    sample = config.get("sample_size")  # Flux's transformer has none: its native size
    default = sample * scale if sample else model.spec.resolution(False)
    width, height = width or default, height or default
    if width % 8 or height % 8 or width < 8 or height < 8:
        raise LoraKitError(f"--width and --height must be multiples of 8 (got {width}x{height})")
    from .fit_check import generation_bytes, require_fits

    inputs = None
    if model.unet is None:
        if add_denoiser is None:
            raise LoraKitError("the model was loaded without its denoiser", model.source)
        inputs = _encode_prompts(model, specs, prompt, negative, guidance, merge, allow_pickle)
        add_denoiser()
    merge = merge and not _keep_quantized(model, specs)
    require_fits(generation_bytes(pipe, width, height, n, grid=n > 1, family=model.spec), pipe.device,
                 f"{n} image(s) of {width}x{height}", "lower --width/--height or --n")
    sampler = effective_name(sampler, pipe.scheduler.config)  # what PNG info records is what ran
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=not progress)
    networks = attach_loras(model, specs, merge=merge, allow_pickle=allow_pickle,
                            stage=None if inputs is None else "denoiser")
    _announce_precision(model)
    text = {"prompt": prompt, "negative_prompt": negative or None} if inputs is None else inputs
    staged = inputs is not None
    images, seeds = [], [seed + i for i in range(n)]
    try:
        for s in seeds:
            gen = torch.Generator(device="cpu").manual_seed(s)
            out = pipe(**text, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                       generator=gen, output_type="latent" if staged else "pil")
            images.append(out.images[0])
    finally:
        detach_loras(networks)
    if staged:
        del networks
        images = _decode_without_denoiser(model, images, height, width)
    lora_info = [(spec.name, spec.params() if spec.tag else spec.weight, lora_short_hash(spec.path))
                 for spec in specs]
    name, model_hash = model_label(model)
    infos = [infotext(prompt, negative, steps, sampler, guidance, s, width, height, name, model_hash, lora_info)
             for s in seeds]
    return GenerateResult(images, seeds, infos)


def _encode_prompts(model, specs, prompt: str, negative: str, guidance: float, merge: bool,
                    allow_pickle: bool) -> dict | None:
    """The pipeline's text inputs from the family's encode (the LoRAs' text-encoder modules applied),
    then the text encoders released; None where the family keeps its encoders (small ones)."""
    pipe, family = model.pipe, model.spec
    networks = attach_loras(model, specs, merge=merge, allow_pickle=allow_pickle, stage="text")
    try:
        with torch.no_grad():
            inputs = family.prompt_inputs(pipe, prompt, negative, guidance)
    finally:
        detach_loras(networks)
    if inputs is not None:
        del networks
        model.release(*family.text_encoders)
    return inputs


def _decode_without_denoiser(model, latents: list, height: int, width: int) -> list:
    """The images of a staged generation: the denoiser released first, then the latents decoded as the
    pipeline's own call decodes them (its VAE activations would otherwise sit beside the whole denoiser:
    the peak of a Flux.1-dev fp8 generation)."""
    pipe, family = model.pipe, model.spec
    model.release(family.denoiser)
    vae = pipe.vae
    images = []
    with torch.no_grad():
        for one in latents:
            one = family.unpack_pipeline_latents(pipe, one.unsqueeze(0), height, width)
            decoded = family.decode_latents(vae, one)
            images.append(pipe.image_processor.postprocess(decoded, output_type="pil")[0])
    return images


def _keep_quantized(model, specs) -> bool:
    """LoRAs go on the fly onto a base stored in fp8/int8/nf4: merged, each adapted layer would be kept
    dequantized in the compute precision (lora/compose.py), giving back the memory the format saves."""
    from .quantized import format_of, has_quantized

    unet = model.unet
    if not specs or unet is None or not has_quantized(unet):
        return False
    if not getattr(model, "_on_the_fly_said", False):
        fmt = next(format_of(p) for p in unet.parameters() if format_of(p) in ("fp8", "int8", "nf4"))
        print(f"LoRAs applied on the fly on the {fmt} base (merged, the adapted layers would be kept dequantized)",
              file=sys.stderr, flush=True)
        model._on_the_fly_said = True
    return True


def _announce_precision(model) -> None:
    """Say once per loaded model which number format it runs in (set by load_model_for_inference)."""
    precision = getattr(model, "precision", None)
    if precision is not None and not getattr(model, "_precision_said", False):
        from .models import base_precision
        from .precision import announce

        announce(precision)
        base_precision.announce(model, getattr(model, "base_precision", "auto"), precision.dtype)
        model._precision_said = True


def model_label(model) -> tuple[str, str | None]:
    """A1111's `Model` (file stem) and `Model hash` (first 10 hex of the file's sha256, single files only)."""
    source = Path(str(getattr(model, "source", "model")))
    if source.is_file():
        return source.stem, file_sha256(source)[:10]
    return source.name or str(source), None


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, cached by (path, size, mtime): checkpoints are GBs and rarely change."""
    import hashlib
    import json
    import os

    cache_file = Path(os.environ.get("LORAKIT_CACHE", Path.home() / ".cache" / "lorakit")) / "hashes.json"
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
        from .atomic import write_text_atomic

        try:
            write_text_atomic(cache_file, json.dumps(cache))
        except LoraKitError:  # a cache that cannot be written only costs a rehash next time
            pass
    return cache[key]


def image_grid(images: Sequence, cols: int | None = None):
    from PIL import Image

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = max(im.size[0] for im in images), max(im.size[1] for im in images)  # samples may differ in size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def save_png(image, path: Path, info: str | None = None) -> None:
    """Atomic PNG write (a hidden temporary name, then rename), with A1111's `parameters` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    from .atomic import atomic_path

    meta = PngInfo()
    if info:
        meta.add_text("parameters", info)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=meta)


def write_outputs(result: GenerateResult, out: Path) -> list[Path]:
    """OUT.png → that file (and OUT-grid.png + OUT-N.png when n > 1); a folder → NNNNN-SEED.png inside."""
    written = []
    if out.suffix.lower() == ".png":
        if len(result.images) == 1:
            save_png(result.images[0], out, result.infotexts[0])
            return [out]
        for i, (im, info) in enumerate(zip(result.images, result.infotexts)):
            p = out.with_name(f"{out.stem}-{i}.png")
            save_png(im, p, info)
            written.append(p)
        grid = out.with_name(f"{out.stem}-grid.png")
    else:
        out.mkdir(parents=True, exist_ok=True)
        start = len(list(out.glob("*.png")))
        for i, (im, info, s) in enumerate(zip(result.images, result.infotexts, result.seeds)):
            p = out / f"{start + i:05d}-{s}.png"
            save_png(im, p, info)
            written.append(p)
        if len(result.images) == 1:
            return written
        grid = out / f"grid-{start:05d}.png"
    save_png(image_grid(result.images), grid, result.infotexts[0])
    written.append(grid)
    return written
