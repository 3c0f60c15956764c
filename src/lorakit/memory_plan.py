"""How much memory a run will need at its peak, part by part, before any weight is read.

Every part is one function below, from the model's configs (built on the meta device:
models/sketch.py) and the run's settings; each says where its figure comes from. A run passes
through phases (the text encoders and VAE fill the caches, are released, then the denoiser is
loaded and trained: train/loop.py's staged set-up); the peak is the largest phase. Figures are
bytes; the constants measured by benchmarks/plan_calibration.py are named as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .quantized import BYTES_PER_WEIGHT, QUANTIZED, quantizable

GiB = 2**30

# The process beside its models: Python, torch, diffusers, transformers, accelerate and lorakit imported,
# tokenizers and the allocator's own keep (RSS measured by benchmarks/plan_calibration.py's phase probe:
# 0.37 GiB before the first load, 0.48-0.54 GiB once the text encoders are released). A CUDA device
# holds its context instead (CUDA 12: about 0.5 GiB before any tensor).
BASELINE_CPU, BASELINE_CUDA = int(0.45 * GiB), int(0.5 * GiB)

# Activations a LoRA training step keeps for backward, per unit `Family.activation_units` gives.
# UNet (unit: latent pixel × channel of its first level): measured with saved-tensor hooks on SD 1.5 at
# 256 px, rank 16 (fit_check's notes): 377 plain, 61 with gradient checkpointing.
# MMDiT (unit: token × token width × block, image and text tokens): measured as the training step's peak
# RSS minus the other parts (benchmarks/plan_calibration.py's phase probe, 512 px, batch 1, rank 16, bf16
# weights): Flux with 2 + 4 blocks 34 plain, SD 3.5-medium's config with 8 blocks 36 (its 4 blocks with a
# second attention counted 1.5 blocks each: Family.activation_units). With gradient checkpointing a block keeps only its inputs
# (1.27 a unit, fit_check's saved-tensor count) and one block at a time is recomputed, forward and
# backward at once: 73 per unit of that one block (measured in all: Flux 2 + 4 blocks 84 per unit of a
# block, the SD 3.5-medium config 80; 6 × 1.27 + 73 = 81, 10 × 1.27 + 73 = 86).
UNET_TRAIN_VALUES = {False: 377, True: 61}
DIT_TRAIN_VALUES = {False: 35, True: 1.27}
DIT_RECOMPUTED_BLOCK_VALUES = 73
# A forward without gradients keeps one block's intermediates at a time: per token × width (no block
# factor), and per latent pixel × first-level channel for a UNet.
UNET_INFER_VALUES, DIT_INFER_VALUES = 40, 24

ENCODE_BATCH = 16  # captions the trainer encodes per call (train/loop.py `_fill_caches`)
# Full-resolution feature maps the VAE keeps alive at once while encoding or decoding (a conv's
# input and output, a group norm's output and the residual).
VAE_MAPS = 4


@dataclass(frozen=True)
class Settings:
    """What a run does that sets its memory (the fields of TrainConfig and generate's options it reads)."""

    device: str = "cpu"
    base_precision: str = "auto"
    mixed_precision: str = "auto"
    resolution: int = 512
    batch_size: int = 1
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    rank: int = 16
    preset: str = "transformer"
    conv_rank: int | None = None
    train_text_encoder: bool | None = None
    blocks_to_swap: int = 0
    images: int = 1  # training images (latent cache entries, each flipped copy counted)
    captions: int = 1  # distinct captions (text cache entries)
    staged: bool = True  # encoders and VAE released before the denoiser is loaded
    cache_latents: bool = True
    cache_text: bool = True
    # generate
    n: int = 1
    guidance: float = 7.0

    def but(self, **changes) -> "Settings":
        return replace(self, **changes)


@dataclass
class Part:
    name: str
    bytes: int
    note: str = ""


@dataclass
class Phase:
    name: str
    parts: list[Part] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.bytes for p in self.parts)


@dataclass
class Plan:
    phases: list[Phase]
    settings: Settings
    formats: dict[str, str] = field(default_factory=dict)  # denoiser / encoders → the format they are held in

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    @property
    def total(self) -> int:
        return self.peak.total

    def table(self) -> str:
        """The parts of each phase and the peak, one line each."""
        lines = []
        for phase in self.phases:
            lines.append(f"{phase.name}:")
            for p in phase.parts:
                note = f"  ({p.note})" if p.note else ""
                lines.append(f"  {p.name:<34} {_gib(p.bytes):>10}{note}")
            lines.append(f"  {'= ' + phase.name:<34} {_gib(phase.total):>10}")
        where = "GPU memory" if torch.device(self.settings.device).type == "cuda" else "RAM (peak RSS)"
        lines.append(f"peak {_gib(self.total).strip()} in {self.peak.name} ({where})")
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# --- weights ----------------------------------------------------------------------------------------

def baseline_bytes(device: str) -> int:
    """The process before any model (BASELINE_CPU, measured), or the CUDA context on a GPU."""
    return BASELINE_CUDA if torch.device(device).type == "cuda" else BASELINE_CPU


def held_format(model: nn.Module, settings: Settings, parameters: int | None = None) -> tuple[str, torch.dtype]:
    """(format of the Linear weights, dtype of everything else) the denoiser is held in: the base precision
    asked for (a quantized one computes as models.base_precision.compute_dtype says), else what
    precision.choose picks for the device and the model's size (train/loop.py `_choose_precision`)."""
    from .models.base_precision import compute_dtype
    from .precision import choose
    from .quantized import PLAIN_DTYPES

    fmt = settings.base_precision
    if fmt in PLAIN_DTYPES:
        return fmt, PLAIN_DTYPES[fmt]
    n = parameters if parameters is not None else sum(p.numel() for p in model.parameters())
    chosen = choose(settings.device, n, settings.mixed_precision)
    if fmt in QUANTIZED:
        return fmt, compute_dtype(fmt, settings.device, chosen.dtype)
    return chosen.name, chosen.dtype


def weight_bytes(model: nn.Module, fmt: str, dtype: torch.dtype) -> int:
    """Every parameter and buffer of `model` as held: Linear weights that `quantized.quantizable` lets into
    a quantized `fmt` as quantized_bytes counts them, the rest in `dtype` (integer buffers in their own).
    Plain formats: parameters × bytes per value."""
    size = torch.empty((), dtype=dtype).element_size()
    total, quantized_ids = 0.0, set()
    if fmt in QUANTIZED:
        for module in model.modules():
            if isinstance(module, nn.Linear) and quantizable(module.weight, fmt):
                quantized_ids.add(id(module.weight))
                total += quantized_bytes(tuple(module.weight.shape), fmt, dtype)
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in quantized_ids:
            continue
        total += t.numel() * (size if t.is_floating_point() else t.element_size())
    return int(total)


def quantized_bytes(shape: tuple[int, int], fmt: str, dtype: torch.dtype) -> int:
    """A weight's bytes as torchao stores it (quantized.py, counted as quantized.tensor_bytes counts them):
    fp8 and int8 one byte a weight and one fp32 scale a row; nf4 half a byte a weight, an int8 scale per
    block of 64 and a scale of scales in the compute `dtype` per group of blocks (quantized.nf4_scaler_block)."""
    from .quantized import NF4_BLOCK, nf4_scaler_block

    rows, cols = shape
    n = rows * cols
    if fmt == "nf4":
        blocks = n // NF4_BLOCK
        return n // 2 + blocks + torch.empty((), dtype=dtype).element_size() * (blocks // nf4_scaler_block(n))
    return int(n * BYTES_PER_WEIGHT[fmt]) + 4 * rows


def dequantize_bytes(model: nn.Module, fmt: str, dtype: torch.dtype) -> int:
    """A quantized Linear computes from its weight dequantized into `dtype`, one layer at a time: the
    largest such weight, twice (the forward's copy and the backward's)."""
    if fmt not in QUANTIZED:
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    largest = max((m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)
                   and quantizable(m.weight, fmt)), default=0)
    return 2 * largest * size


def load_transient_bytes(sketch, settings: Settings) -> int:
    """What loading the denoiser holds beyond its weights. Folders and single files alike are read a group
    at a time into the target format (models/streamed.py, families/dit/loading.py `stream_transformer`,
    the UNet's streamed single-file load): a folder's group is GROUP_BYTES of fp32; a single file's is one
    module, whose largest tensor passes through an fp32 copy on its way to the target (SD 3.5-medium's 226 M
    `pos_embed`: measured 0.9 GB over the loaded weights). On a GPU nothing: the model is read in host
    memory and then moved over."""
    from .models.streamed import GROUP_BYTES

    if torch.device(settings.device).type == "cuda":
        return 0
    if sketch.kind == "single_file":
        tensors = list(sketch.denoiser.parameters()) + list(sketch.denoiser.buffers())
        return 4 * max((t.numel() for t in tensors), default=0)
    return GROUP_BYTES


def encoder_formats(sketch, settings: Settings, load_dtype: torch.dtype) -> dict[str, tuple[str, torch.dtype]]:
    """{text encoder: (format, dtype)}: the family's big ones (Family.big_text_encoders: T5-XXL) in the base
    precision as models/base_precision.py holds them (a quantized one computing in its compute_dtype of the
    load's dtype), the others in the load's dtype: fp32 when training stages them (train/loop.py `_load_once`
    loads every part but the denoiser in fp32), else the run's or the drawing dtype."""
    from .models.base_precision import compute_dtype
    from .quantized import PLAIN_DTYPES

    fmt = settings.base_precision
    plain = {v: k for k, v in PLAIN_DTYPES.items()}[load_dtype]
    out = {}
    for name in sketch.text_encoders:
        if name in sketch.family.big_text_encoders and fmt in QUANTIZED:
            out[name] = fmt, compute_dtype(fmt, settings.device, load_dtype)
        elif name in sketch.family.big_text_encoders and fmt in PLAIN_DTYPES:
            out[name] = fmt, PLAIN_DTYPES[fmt]
        else:
            out[name] = plain, load_dtype
    return out


def encoder_load_bytes(sketch, formats: dict[str, tuple[str, torch.dtype]]) -> int:
    """Loading a text encoder in a plain format holds the pages of its file it has read beside the weights it
    built: the largest such encoder's weights as files hold them (bf16); measured 0.48-0.95 GiB over the
    loaded weights for a 0.92 GiB T5 file (benchmarks/plan_calibration.py). One going into a quantized
    format is read tensor by tensor, quantized as read (models/): its largest tensor in bf16. One loaded in
    bf16 from the bf16 files encoders ship in is the file's own pages, no copy: nothing more (real-size
    SD 3.5-medium with a bf16 T5-XXL: 11.25 GB peak for the whole run, less than a second copy would need)."""
    worst = 0
    for name, module in sketch.text_encoders.items():
        if formats[name][0] in QUANTIZED:
            worst = max(worst, max((2 * t.numel() for t in module.parameters()), default=0))
        elif formats[name][1] == torch.bfloat16:
            continue
        else:
            worst = max(worst, weight_bytes(module, "bf16", torch.bfloat16))
    return worst


def encoders_bytes(sketch, formats: dict[str, tuple[str, torch.dtype]]) -> int:
    """Every text encoder's weights in its (format, dtype) (encoder_formats): see weight_bytes."""
    return sum(weight_bytes(m, *formats[n]) for n, m in sketch.text_encoders.items())


def _formats_note(formats: dict[str, tuple[str, torch.dtype]]) -> str:
    return ", ".join(sorted({_format(f, d) for f, d in formats.values()}))


def vae_bytes(sketch, dtype: torch.dtype) -> int:
    """The VAE's weights (all of it: encoder and decoder), in `dtype`."""
    return weight_bytes(sketch.vae, "fp32", dtype) if sketch.vae is not None else 0


# --- activations ------------------------------------------------------------------------------------

def encoding_bytes(sketch, captions: int, dtype: torch.dtype) -> int:
    """One text encoder's forward without gradients on a batch of captions (min(captions, ENCODE_BATCH)):
    its hidden states in and out, the MLP's intermediate and the attention scores of one layer at a time,
    for the encoder that needs most (T5-XXL at 512 tokens for Flux: scores dominate)."""
    size = torch.empty((), dtype=dtype).element_size()
    batch = max(1, min(captions, ENCODE_BATCH))
    worst = 0
    for module in sketch.text_encoders.values():
        c = module.config
        width = getattr(c, "hidden_size", None) or getattr(c, "d_model")
        inner = getattr(c, "intermediate_size", None) or getattr(c, "d_ff")
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "num_heads")
        tokens = min(sketch.family.context_tokens, getattr(c, "max_position_embeddings", 10**9))
        values = tokens * (4 * width + 2 * inner) + heads * tokens * tokens * 2
        worst = max(worst, batch * values * size)
    return worst


def vae_pass_bytes(sketch, side: int, dtype: torch.dtype) -> int:
    """The VAE at full resolution (encoding an image for the latent cache, or decoding one): VAE_MAPS
    feature maps of its widest full-resolution level alive at once (fit_check keeps the same count)."""
    if sketch.vae_config is None:
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    return VAE_MAPS * sketch.vae_config["block_out_channels"][0] * side * side * size


def training_activation_bytes(sketch, settings: Settings, dtype: torch.dtype) -> int:
    """What one micro-batch keeps for backward: the family's activation units (Family.activation_units: a
    UNet's latent pixels × first-level width; a DiT's image and text tokens × width × blocks) times the
    values per unit measured for it (UNET_TRAIN_VALUES, DIT_TRAIN_VALUES; checkpointed, a DiT also holds one
    block recomputed: DIT_RECOMPUTED_BLOCK_VALUES), at the largest bucket (resolution²)."""
    side = settings.resolution // sketch.vae_scale
    per_block, blocks, kind = sketch.family.activation_units(sketch.denoiser_config, side, side)
    checkpointed = settings.gradient_checkpointing
    values = per_block * blocks * (UNET_TRAIN_VALUES if kind == "unet" else DIT_TRAIN_VALUES)[checkpointed]
    if kind == "dit" and checkpointed:
        values += per_block * DIT_RECOMPUTED_BLOCK_VALUES
    size = torch.empty((), dtype=dtype).element_size()
    return int(settings.batch_size * values * size)


def inference_activation_bytes(sketch, settings: Settings, dtype: torch.dtype) -> int:
    """One denoiser forward without gradients at width × height = resolution², both halves of a
    classifier-free-guidance batch where the model has no guidance embedding: the units of one block
    (a DiT's units over its blocks) × UNET_INFER_VALUES / DIT_INFER_VALUES."""
    side = settings.resolution // sketch.vae_scale
    units, _, kind = sketch.family.activation_units(sketch.denoiser_config, side, side)
    per_unit = UNET_INFER_VALUES if kind == "unet" else DIT_INFER_VALUES
    guided = 1 if sketch.denoiser_config.get("guidance_embeds") or settings.guidance <= 1 else 2
    size = torch.empty((), dtype=dtype).element_size()
    return guided * units * per_unit * size


# --- the LoRA and its optimizer -------------------------------------------------------------------------

def lora_parameters(sketch, settings: Settings) -> list[tuple[int, ...]]:
    """The shapes of the LoRA's factors: the layers the preset selects (lora.targets.select, the same code as
    training) on the meta-built model, each rank × in and out × rank (3×3 convs only with a conv rank)."""
    from .lora.targets import ModelParts, select

    train_te = settings.train_text_encoder
    if train_te is None:
        train_te = sketch.family.trains_text_encoder_by_default
    tes = [None if n in sketch.family.frozen_text_encoders else sketch.text_encoders.get(n)
           for n in sketch.family.text_encoders]
    parts = ModelParts(sketch.family.name, sketch.denoiser, tes if train_te else [], dict(sketch.denoiser_config))
    shapes = []
    for t in select(parts, settings.preset, text_encoder=bool(train_te)):
        w = t.module.weight
        rank = settings.rank
        if t.is_conv3:
            if not settings.conv_rank:
                continue
            rank = settings.conv_rank
        fan_in = w[0].numel()
        shapes += [(rank, fan_in), (w.shape[0], rank)]
    return shapes


def lora_bytes(shapes: list[tuple[int, ...]]) -> int:
    """The LoRA's factors in fp32 (as trained: lora/ keeps them in fp32 whatever the base)."""
    return 4 * sum(a * b for a, b in shapes)


def gradient_bytes(shapes: list[tuple[int, ...]]) -> int:
    """One fp32 gradient per LoRA factor."""
    return lora_bytes(shapes)


def optimizer_bytes(optimizer: str, shapes: list[tuple[int, ...]]) -> int:
    """The optimizer's state per LoRA factor: AdamW two fp32 moments (8 bytes a value; torch's foreach step
    adds one fp32 temporary: 4 more); 8-bit AdamW (bitsandbytes) two uint8 moments with an fp32 absmax per
    block of 2048 (2 bytes); Lion one fp32 moment; Prodigy four (moments, s, the initial p0: 16 bytes);
    Adafactor (relative_step off, no first moment) a factored second moment: a row and a column of fp32 per
    matrix."""
    n = sum(a * b for a, b in shapes)
    per_value = {"adamw": 12, "adamw8bit": 2 + 8 / 2048, "lion": 4, "prodigy": 16}
    if optimizer in per_value:
        return int(n * per_value[optimizer])
    if optimizer == "adafactor":
        return 4 * sum(a + b for a, b in shapes)
    raise ValueError(f"unknown optimizer {optimizer!r}")


# --- caches ------------------------------------------------------------------------------------------------

def latent_cache_bytes(sketch, settings: Settings) -> int:
    """Latents kept in memory: one fp32 latent per training image (and per flipped copy) at resolution²."""
    if not settings.cache_latents:
        return 0
    side = settings.resolution // sketch.vae_scale
    channels = (sketch.vae_config or {}).get("latent_channels", 4)
    return settings.images * channels * side * side * 4


def text_cache_bytes(sketch, settings: Settings) -> int:
    """Text embeddings kept in memory, fp32, per caption: the context (Family.context_tokens × the
    denoiser's context width) and the pooled vector."""
    if not settings.cache_text:
        return 0
    c = sketch.denoiser_config
    width = c.get("joint_attention_dim") or c.get("cross_attention_dim") or 768
    pooled = c.get("pooled_projection_dim") or c.get("projection_class_embeddings_input_dim") or 0
    return settings.captions * (sketch.family.context_tokens * width + pooled) * 4


# --- block swap -------------------------------------------------------------------------------------------

def swapped_bytes(sketch, settings: Settings, fmt: str, dtype: torch.dtype) -> int:
    """Device memory that block swap frees: the swapped blocks' weights (the last N, as block_swap.py picks
    them) stay in CPU memory, less the largest of them, in flight (the next block streams in while the
    current one computes)."""
    from .block_swap import transformer_blocks

    n = settings.blocks_to_swap
    if n <= 0 or torch.device(settings.device).type != "cuda":
        return 0
    blocks = transformer_blocks(sketch.denoiser)
    sizes = [weight_bytes(b, fmt, dtype) for b in blocks[max(0, len(blocks) - n):]]
    return sum(sizes) - max(sizes, default=0)


# --- the plans -------------------------------------------------------------------------------------------

def train_plan(sketch, settings: Settings) -> Plan:
    """A training run's phases: caching (encoders and VAE, staged before the denoiser), loading the
    denoiser, and the training step."""
    fmt, dtype = held_format(sketch.denoiser, settings)
    load_dtype = torch.float32 if settings.staged else dtype
    held = settings
    if settings.base_precision == "auto" and settings.staged and dtype != torch.float32 and (
            sketch.kind != "single_file" or torch.device(settings.device).type == "cuda"):
        # a half-precision run holds its big text encoders in its format in the encoders' stage too, where it
        # knows that format before loading (train/loop.py `_load_once`: not a single file's on a CPU)
        held = settings.but(base_precision={torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    formats = encoder_formats(sketch, held, load_dtype)
    base = Part("process baseline", baseline_bytes(settings.device), "torch and libraries imported")
    shapes = lora_parameters(sketch, settings)
    caches = [Part("latent cache", latent_cache_bytes(sketch, settings), f"{settings.images} image(s)"),
              Part("text cache", text_cache_bytes(sketch, settings), f"{settings.captions} caption(s)")]
    denoiser = Part("denoiser weights", weight_bytes(sketch.denoiser, fmt, dtype), _format(fmt, dtype))
    swapped = swapped_bytes(sketch, settings, fmt, dtype)
    if swapped:
        denoiser = Part(denoiser.name, denoiser.bytes - swapped,
                        f"{denoiser.note}, {settings.blocks_to_swap} blocks swapped to CPU")
    encoders = Part("text encoders", encoders_bytes(sketch, formats), _formats_note(formats))
    vae = Part("VAE", vae_bytes(sketch, load_dtype), _format("", load_dtype))
    encode = max(encoding_bytes(sketch, settings.captions, load_dtype), vae_pass_bytes(sketch, settings.resolution,
                                                                                        torch.float32))
    reading = Phase("loading text encoders and VAE", [base, encoders, vae,
                                                      Part("load transient", encoder_load_bytes(sketch, formats))])
    caching = Phase("filling the caches", [base, encoders, vae, Part("encoding activations", encode), *caches])
    loading = Phase("loading the denoiser", [base, *caches, denoiser,
                                             Part("load transient", load_transient_bytes(sketch, settings))])
    step = [base, *caches, denoiser,
            Part("activations", training_activation_bytes(sketch, settings, dtype),
                 "gradient checkpointing" if settings.gradient_checkpointing else "no gradient checkpointing"),
            Part("dequantized layer", dequantize_bytes(sketch.denoiser, fmt, dtype)),
            Part("LoRA parameters", lora_bytes(shapes), f"rank {settings.rank}, fp32"),
            Part("LoRA gradients", gradient_bytes(shapes)),
            Part("optimizer state", optimizer_bytes(settings.optimizer, shapes), settings.optimizer)]
    if not settings.staged:  # encoders and VAE stay beside the denoiser
        step[1:1] = [encoders, vae]
        loading.parts[1:1] = [encoders, vae]
    phases = [reading, caching, loading, Phase("training step", [p for p in step if p.bytes])]
    for phase in phases:
        phase.parts = [p for p in phase.parts if p.bytes or p is base]
    return Plan(phases, settings, {"denoiser": _format(fmt, dtype), "text encoders": _formats_note(formats)})


def generate_plan(sketch, settings: Settings) -> Plan:
    """Generation: one denoiser forward at a time, then the VAE decodes each image at full resolution. A
    family with a big text encoder (T5-XXL) generates in stages (generate.py): the prompts are encoded
    and the encoders released before the denoiser loads, the denoiser released before the VAE decodes;
    the others hold every part at once."""
    fmt, dtype = generation_format(sketch, settings)
    formats = encoder_formats(sketch, settings, dtype)
    base = Part("process baseline", baseline_bytes(settings.device), "torch and libraries imported")
    denoiser = Part("denoiser weights", weight_bytes(sketch.denoiser, fmt, dtype), _format(fmt, dtype))
    swapped = swapped_bytes(sketch, settings, fmt, dtype)
    if swapped:
        denoiser = Part(denoiser.name, denoiser.bytes - swapped,
                        f"{denoiser.note}, {settings.blocks_to_swap} blocks swapped to CPU")
    encoders = Part("text encoders", encoders_bytes(sketch, formats), _formats_note(formats))
    vae = Part("VAE", vae_bytes(sketch, dtype), _format("", dtype))
    encode = Part("encoding activations", encoding_bytes(sketch, 2, dtype))
    drawing = [base, denoiser, vae,
               Part("load transient", load_transient_bytes(sketch, settings.but(base_precision=fmt))),
               Part("activations", max(inference_activation_bytes(sketch, settings, dtype),
                                       vae_pass_bytes(sketch, settings.resolution, dtype)),
                    "largest of denoiser and decode"),
               Part("dequantized layer", dequantize_bytes(sketch.denoiser, fmt, dtype) // 2),
               Part("images", 3 * settings.resolution ** 2 * settings.n * 2)]
    if sketch.family.big_text_encoders:  # and the denoiser released before the VAE decodes
        drawing[4] = Part("activations", inference_activation_bytes(sketch, settings, dtype), "denoiser")
        phases = [Phase("encoding the prompts", [base, encoders, vae,
                                                 Part("load transient", encoder_load_bytes(sketch, formats)), encode]),
                  Phase("generation", drawing[:-1]),
                  Phase("decoding", [base, vae, Part("activations", vae_pass_bytes(sketch, settings.resolution, dtype),
                                                     "VAE decode"), drawing[-1]])]
    else:
        drawing[3:3] = [encoders]
        drawing[5] = Part("activations", max(drawing[5].bytes, encode.bytes), "largest of denoiser, decode, encode")
        phases = [Phase("generation", drawing)]
    for phase in phases:
        phase.parts = [p for p in phase.parts if p.bytes or p is base]
    return Plan(phases, settings, {"denoiser": _format(fmt, dtype), "text encoders": _formats_note(formats)})


def generation_format(sketch, settings: Settings) -> tuple[str, torch.dtype]:
    """(format, dtype) the pipeline draws in, as devices.py resolves generate's options: --dtype (carried as
    `mixed_precision`) when given, else a plain base precision, else precision.choose_for_images (fp32 on a
    CPU unless fp32 weights would not fit the memory there, fp16 on a GPU), a quantized base computing in
    models.base_precision.compute_dtype of that."""
    from .fit_check import available_bytes
    from .models.base_precision import compute_dtype
    from .precision import choose_for_images
    from .quantized import PLAIN_DTYPES

    fmt = settings.base_precision
    if settings.mixed_precision in PLAIN_DTYPES:
        dtype = PLAIN_DTYPES[settings.mixed_precision]
    elif fmt in PLAIN_DTYPES:
        dtype = PLAIN_DTYPES[fmt]
    else:
        weights = None
        if fmt == "auto":
            weights = sum(p.numel() for m in (sketch.denoiser, sketch.vae, *sketch.text_encoders.values())
                          if m is not None for p in m.parameters())
        dtype = choose_for_images(settings.device, weights, available_bytes(settings.device)).dtype
        if fmt in QUANTIZED:
            dtype = compute_dtype(fmt, settings.device, dtype)
    plain = {v: k for k, v in PLAIN_DTYPES.items()}[dtype]
    return (fmt if fmt in QUANTIZED else plain), dtype


def _format(fmt: str, dtype: torch.dtype) -> str:
    from .quantized import PLAIN_DTYPES

    plain = {v: k for k, v in PLAIN_DTYPES.items()}.get(dtype, str(dtype))
    return f"{fmt}, computing in {plain}" if fmt in QUANTIZED else plain
