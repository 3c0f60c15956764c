"""GGUF bases as city96's tools/convert.py (and llama.cpp's quantizer after it) write them: the
original layout's names without `model.diffusion_model.`, 1-D and small tensors in F32, the rest
Q8_0 or Q4_K where a row holds whole blocks, F16 otherwise. Loaded streamed into diffusers'
GGUFLinear layers (blocks kept), or dequantized for a plain base precision; a LoRA trains on one
and an image is generated from it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import tiny_flux_pipeline  # noqa: E402
from stream_support import FLUX_WIDE, SD3_WIDE, config_folder, kinds, original, transformer  # noqa: E402

from lorakit import quantized  # noqa: E402
from lorakit.models.checkpoint import detect_file_family, open_checkpoint  # noqa: E402

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
KINDS = kinds()
BLOCK = {Q.Q8_0: 32, Q.Q4_K: 256}


def q4_k(x: np.ndarray) -> np.ndarray:
    """Rows of float32 (length a multiple of 256) as Q4_K blocks (llama.cpp's block_q4_K: fp16 d and
    dmin, 8 six-bit sub-block scales and mins packed in 12 bytes, 256 four-bit quants). gguf-py
    reads this type but cannot write it; a plain (not llama.cpp's searched) choice of scales."""
    rows = x.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(rows.min(axis=-1), 0)
    scale = (rows.max(axis=-1) - lo) / 15
    d = (scale.max(axis=-1) / 63).astype(np.float16)
    dmin = ((-lo).max(axis=-1) / 63).astype(np.float16)
    df, mf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(np.divide(-lo, mf, out=np.zeros_like(lo), where=mf > 0)), 0, 63).astype(np.uint8)
    step = (df * sc)[..., None]
    q = np.clip(np.rint(np.divide(rows + (mf * mn)[..., None], step, out=np.zeros_like(rows), where=step > 0)),
                0, 15).astype(np.uint8)
    packed = np.zeros((rows.shape[0], 12), np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    q = q.reshape(-1, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return blocks.reshape(x.shape[0], -1)


def quantize(x: np.ndarray, qtype) -> np.ndarray:
    return q4_k(x) if qtype == Q.Q4_K else gguf.quants.quantize(x, qtype)


def write_gguf(state: dict[str, torch.Tensor], path: Path, arch: str, qtype) -> dict[str, tuple]:
    """city96's rules; returns {name: (type, the numbers it stores)}."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    stored = {}
    for key, value in state.items():
        data = value.float().numpy()
        kind = Q.F16
        if data.ndim == 1 or data.size <= 1024:
            kind = Q.F32
        elif data.shape[-1] % BLOCK[qtype] == 0 and data.ndim == 2:
            kind = qtype
        raw = quantize(data, kind) if kind == qtype else data.astype(np.float32 if kind == Q.F32 else np.float16)
        writer.add_tensor(key, raw, raw_dtype=kind)
        numbers = gguf.quants.dequantize(raw, kind) if kind == qtype else raw.astype(np.float32)
        stored[key] = kind, torch.from_numpy(np.ascontiguousarray(numbers, dtype=np.float32)).reshape(value.shape)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def block_bound(x: torch.Tensor, qtype) -> torch.Tensor:
    """The most a value may move in its block. Q8_0: half a step (amax/127 in fp16) plus fp16's
    rounding of the step times 127; Q4_K: half a sub-block step, plus 15 steps of the six-bit
    scale's rounding (d/2) and the six-bit min's rounding (dmin/2)."""
    rows = x.float().reshape(-1, BLOCK[qtype])
    if qtype == Q.Q8_0:
        amax = rows.abs().amax(dim=1, keepdim=True)
        return (amax / 254 + amax * 2 ** -10 + 1e-7).expand_as(rows).reshape(x.shape)
    sub = rows.reshape(-1, 8, 32)
    lo = sub.amin(-1).clamp(max=0)
    scale = (sub.amax(-1) - lo) / 15
    d, dmin = scale.amax(-1, keepdim=True) / 63, (-lo).amax(-1, keepdim=True) / 63
    bound = scale / 2 + 15 * d / 2 + dmin / 2 + 2 ** -10 * sub.abs().amax(-1) + 1e-6
    return bound[..., None].expand_as(sub).reshape(x.shape)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{(family, type): (GGUF file, config folder, source state, stored numbers)} for Flux and SD3
    (wide enough for rows of whole Q8_0 and Q4_K blocks), Q8_0 and Q4_K."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for name, config, arch in (("flux", FLUX_WIDE, "flux"), ("sd3", SD3_WIDE, "sd3")):
        model = transformer(KINDS[name], config=config)
        folder = config_folder(model, root / name)
        state = original(KINDS[name], model)
        for qtype in (Q.Q8_0, Q.Q4_K):
            path = root / f"{name}-{qtype.name}.gguf"
            out[(name, qtype)] = path, folder, state, write_gguf(state, path, arch, qtype)
    return out


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_gguf_files_are_recognised_with_their_shapes(files, name):
    path, _, state, stored = files[(name, Q.Q8_0)]
    ckpt = open_checkpoint(path)
    assert detect_file_family(ckpt) == name
    assert ckpt.shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert ckpt.metadata["general.architecture"] == name
    assert sum(ckpt.dtypes[k] == "GGUF_Q8_0" for k in stored) > 5


def test_q4_k_packing_reads_back_within_its_block_math():
    x = torch.randn(4, 512) * torch.linspace(0.1, 3, 512)
    raw = q4_k(x.numpy())
    assert raw.shape == (4, 2 * 144)
    back = torch.from_numpy(gguf.quants.dequantize(raw, Q.Q4_K))
    err = (back - x).abs()
    assert (err <= block_bound(x, Q.Q4_K)).all() and err.max() > 0


@pytest.mark.parametrize("name", ["flux", "sd3"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K])
def test_gguf_blocks_stay_quantized_and_read_back_exactly(files, name, qtype):
    """auto keeps the blocks in diffusers' GGUFLinear; each weight dequantizes to exactly what gguf-py
    reads from the file, and lies within the block math's bound of the source weight."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    path, config, state, stored = files[(name, qtype)]
    model = KINDS[name].load(open_checkpoint(path), config, torch.float32, "auto")
    numbers = KINDS[name].to_diffusers({k: v for k, (_, v) in stored.items()})
    source = KINDS[name].to_diffusers(dict(state))
    held = 0
    for module_name, module in model.named_modules():
        if isinstance(module, GGUFLinear):
            held += 1
            assert quantized.format_of(module.weight) == "gguf-" + qtype.name
    assert held > 3
    for k, p in model.state_dict().items():
        got = quantized.dequantize(p, torch.float32)
        assert torch.equal(got, numbers[k]), k
        if quantized.is_quantized(p):
            assert ((got - source[k]).abs() <= block_bound(source[k], qtype)).all(), k


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_plain_precisions_dequantize_gguf_tensors(files, precision, dtype):
    path, config, _, stored = files[("flux", Q.Q4_K)]
    model = KINDS["flux"].load(open_checkpoint(path), config, torch.float32, precision)
    numbers = KINDS["flux"].to_diffusers({k: v for k, (_, v) in stored.items()})
    assert not quantized.has_quantized(model)
    for k, p in model.state_dict().items():
        assert p.dtype == dtype and torch.equal(p, numbers[k].to(dtype)), k


def test_gguf_model_computes_what_its_dequantized_weights_compute(files):
    """The GGUF model's output is a plain model's holding diffusers' dequantized weights (GGUFLinear
    multiplies Q8_0's scales in fp16), and within fp16's rounding of the weights of the model holding
    the file's exact numbers."""
    import diffusers
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    path, config, _, stored = files[("sd3", Q.Q8_0)]
    model = KINDS["sd3"].load(open_checkpoint(path), config, torch.float32, "auto")
    exact, as_run = (diffusers.SD3Transformer2DModel.from_config(model.config).eval() for _ in range(2))
    exact.load_state_dict(KINDS["sd3"].to_diffusers({k: v for k, (_, v) in stored.items()}))
    as_run.load_state_dict({k: dequantize_gguf_tensor(v).float() if quantized.is_gguf(v) else v
                            for k, v in model.state_dict().items()})
    torch.manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, 16, 8, 8), encoder_hidden_states=torch.randn(1, 5, 32),
              pooled_projections=torch.randn(1, 16), timestep=torch.tensor([500.0]))
    with torch.no_grad():
        a, b, c = model(**kw).sample, as_run(**kw).sample, exact(**kw).sample
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert 0 < (a - c).abs().max() < 2e-3 * c.abs().max()


@pytest.mark.slow
def test_a_lora_trains_on_a_gguf_flux_and_generates(tmp_path):
    """Two training steps on a Q8_0 Flux file: the LoRA moves, the GGUF blocks do not; then one
    image from the GGUF base with that LoRA on the fly."""
    import json

    from train_support import config as train_config, make_images

    from lorakit.formats import load_lora
    from lorakit.generate import LoraSpec, generate
    from lorakit.models import load_model
    from lorakit.train.loop import run

    pipe = tiny_flux_pipeline(transformer=FLUX_WIDE)
    parts = tmp_path / "parts"
    pipe.save_pretrained(str(parts))
    folder = config_folder(pipe.transformer, tmp_path / "config")
    pipe.scheduler.save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    path = tmp_path / "flux-tiny-Q8_0.gguf"
    write_gguf(original(KINDS["flux"], pipe.transformer), path, "flux", Q.Q8_0)
    before = path.read_bytes()

    data = make_images(tmp_path / "data", sizes=((32, 32),))
    cfg = train_config(path, data, tmp_path, steps=2, lr=1e-2, rank=4, text_encoders=parts, config_dir=folder)
    run(cfg)
    lora = load_lora(cfg.out)
    assert lora.family == "flux" and len(lora.modules) > 10
    assert max(float(t.abs().max()) for m in lora.modules.values() for n, t in m.items()
               if "lora_up" in n) > 0  # up starts at zero: two steps moved it
    assert path.read_bytes() == before

    model = load_model(str(path), config_dir=folder, text_encoders=parts)
    assert quantized.has_quantized(model.pipe.transformer)
    kw = dict(steps=2, seed=0, width=32, height=32, guidance=3.5, progress=False)
    base = generate(model, "a square", **kw)
    with_lora = generate(model, "a square", loras=[LoraSpec(cfg.out, 4.0)], merge=False, **kw)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (base, with_lora))
    assert a.shape == (32, 32, 3) and np.abs(a - b).max() > 0


def test_an_sd3_gguf_file_takes_its_vae_and_encoders_from_the_folder(tmp_path):
    """city96's SD 3.5 GGUF holds the MMDiT only: the VAE comes from --text-encoders DIR with the
    text encoders; the pipeline generates."""
    import json

    from sd3_support import tiny_sd3_pipeline

    from lorakit.generate import generate
    from lorakit.models import load_model

    pipe = tiny_sd3_pipeline(transformer=SD3_WIDE)
    parts = tmp_path / "parts"
    pipe.save_pretrained(str(parts))
    folder = config_folder(pipe.transformer, tmp_path / "config")
    pipe.scheduler.save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    path = tmp_path / "sd3-tiny-Q8_0.gguf"
    write_gguf(original(KINDS["sd3"], pipe.transformer), path, "sd3", Q.Q8_0)
    model = load_model(str(path), config_dir=folder, text_encoders=parts)
    assert model.family == "sd3" and quantized.has_quantized(model.pipe.transformer)
    assert torch.equal(model.pipe.vae.decoder.conv_out.weight, pipe.vae.decoder.conv_out.weight)
    image = generate(model, "a square", steps=2, seed=0, width=32, height=32, guidance=3.0, progress=False).images[0]
    assert np.asarray(image).shape == (32, 32, 3)


def test_a_truncated_gguf_file_is_refused_in_one_line(files, tmp_path):
    from lorakit.errors import LoraKitError

    path = files[("flux", Q.Q8_0)][0]
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(LoraKitError, match="cut.gguf.*(not a readable GGUF file|cut short)"):
        ckpt = open_checkpoint(cut)
        KINDS["flux"].load(ckpt, files[("flux", Q.Q8_0)][1], torch.float32, "auto")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(LoraKitError, match="not a readable GGUF file"):
        open_checkpoint(tmp_path / "junk.gguf")
