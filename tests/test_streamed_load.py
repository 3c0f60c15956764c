"""Streamed loads of the DiT single files (Flux.1, Chroma, SD 3.x) and of diffusers folders: the
transformer built on `meta` and filled a block at a time, in the target format. They must equal the
whole-state load bit for bit, never read the whole state before placing it, and quantize as
`quantize_linears` does on the loaded model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from stream_support import FLUX_WIDE, PREFIX, config_folder, kinds, original, transformer, write  # noqa: E402

from lorakit import quantized  # noqa: E402
from lorakit.models.checkpoint import open_checkpoint  # noqa: E402

KINDS = kinds()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{family: (model, config folder)} for the three tiny transformers."""
    root = tmp_path_factory.mktemp("streamed")
    return {name: (m := transformer(kind), config_folder(m, root / name)) for name, kind in KINDS.items()}


def whole_state_load(name: str, ckpt, config: Path, dtype):
    """How these files loaded before: the whole state dict read, converted (diffusers' own converter
    for SD3, the family's table for Flux and Chroma, checked against diffusers'), then the model."""
    import diffusers

    kind = KINDS[name]
    cls = getattr(diffusers, kind.cls)
    if name == "sd3":
        from lorakit.models.single_file import load_diffusers_part

        return load_diffusers_part(cls, ckpt, PREFIX, "transformer", config, dtype)
    model = cls.from_config(cls.load_config(str(config), subfolder="transformer"))
    state = {k[len(PREFIX):]: v for k, v in ckpt.read([PREFIX]).items()}
    model.load_state_dict(kind.to_diffusers(state), strict=True)
    return model.to(dtype)


def assert_same_model(ours, ref):
    a, b = ours.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k
    for (k, x), (_, y) in zip(ours.named_buffers(), ref.named_buffers()):  # persistent or not
        assert x.dtype == y.dtype and torch.equal(x, y), k


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("file_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_streamed_load_equals_the_whole_state_load(built, tmp_path, name, file_dtype, dtype):
    model, config = built[name]
    path = write(original(KINDS[name], model, DTYPES[file_dtype]), tmp_path / "t.safetensors")
    ours = KINDS[name].load(open_checkpoint(path), config, DTYPES[dtype])
    ref = whole_state_load(name, open_checkpoint(path), config, DTYPES[dtype])
    assert_same_model(ours, ref)
    if file_dtype == dtype == "fp32":  # and both are the model that was written
        assert_same_model(ours, model)


def test_files_without_the_comfyui_prefix_load_the_same(built, tmp_path):
    model, config = built["flux"]
    state = original(KINDS["flux"], model)
    bare = KINDS["flux"].load(open_checkpoint(write(state, tmp_path / "bare.safetensors", prefix="")), config,
                              torch.float32)
    assert_same_model(bare, model)


@pytest.mark.parametrize("name", list(KINDS))
def test_the_reader_never_holds_the_whole_state(built, tmp_path, monkeypatch, name):
    """Bytes read since the last group was placed in the model: at most one block's, never the file's."""
    from lorakit.models import checkpoint, placing

    model, config = built[name]
    path = write(original(KINDS[name], model), tmp_path / "t.safetensors")
    pending, peaks, total = [0], [], [0]
    real_tensor, real_place = checkpoint.Checkpoint.tensor, placing.place

    def tensor(self, key):
        t = real_tensor(self, key)
        pending[0] += t.numel() * t.element_size()
        total[0] += t.numel() * t.element_size()
        return t

    def place(*args, **kwargs):
        peaks.append(pending[0])
        pending[0] = 0
        return real_place(*args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpoint, "tensor", tensor)
    monkeypatch.setattr(placing, "place", place)
    KINDS[name].load(open_checkpoint(path), config, torch.float32)
    file_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert total[0] == file_bytes  # every tensor read once
    assert len(peaks) > 5 and max(peaks) < file_bytes / 3


def _quantized_reference(name, ckpt, config, fmt, dtype):
    ref = whole_state_load(name, ckpt, config, dtype)
    quantized.quantize_linears(ref, fmt, dtype)
    return ref


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("fmt", quantized.QUANTIZED)
def test_quantized_while_streaming_equals_quantizing_the_loaded_model(built, tmp_path, name, fmt):
    """Each Linear goes in as `quantize` makes it from the weight in the compute dtype: the same format
    and the same numbers as quantizing the whole loaded model afterwards; the rest stays plain."""
    model, config = built[name]
    if name == "flux":
        model = transformer(KINDS[name], config=FLUX_WIDE)
        config = config_folder(model, tmp_path / "wide")
    path = write(original(KINDS[name], model), tmp_path / "t.safetensors")
    dtype = torch.bfloat16
    ours = KINDS[name].load(open_checkpoint(path), config, dtype, fmt)
    ref = _quantized_reference(name, open_checkpoint(path), config, fmt, dtype)
    count = 0
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert quantized.format_of(a) == quantized.format_of(b), k
        assert torch.equal(quantized.dequantize(a), quantized.dequantize(b)), k
        count += quantized.is_quantized(a)
    if fmt != "nf4" or name == "flux":  # the tiny widths have no Linear nf4's blocks fit
        assert count > 3


@pytest.mark.parametrize("precision,weights", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                               ("fp32", torch.float32), ("auto", torch.float16)])
def test_plain_base_precisions_set_the_weights_dtype(built, tmp_path, precision, weights):
    model, config = built["sd3"]
    path = write(original(KINDS["sd3"], model), tmp_path / "t.safetensors")
    ours = KINDS["sd3"].load(open_checkpoint(path), config, torch.float16, precision)
    assert {p.dtype for p in ours.parameters()} == {weights}
    assert_same_model(ours, model.to(weights))


def test_build_pipeline_takes_base_precision(built, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lorakit.families.flux.family import FAMILY

    model, config = built["flux"]
    FlowMatchEulerDiscreteScheduler().save_pretrained(str(config / "scheduler"))
    path = write(original(KINDS["flux"], model), tmp_path / "t.safetensors")
    pipe = FAMILY.pipeline_from_checkpoint(open_checkpoint(path), config, dtype=torch.bfloat16,
                                           prediction_type="flow_matching", components=("unet",),
                                           base_precision="int8")
    assert quantized.format_of(pipe.transformer.transformer_blocks[0].attn.to_q.weight) == "int8"
    assert pipe.transformer.transformer_blocks[0].attn.norm_q.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_diffusers_folder_denoiser_quantized_as_read(tmp_path, fmt):
    import diffusers

    from lorakit.models.streamed import load_denoiser

    model = transformer(KINDS["flux"])
    model.save_pretrained(str(tmp_path / "transformer"))
    ours = load_denoiser(tmp_path / "transformer", "FluxTransformer2DModel", torch.bfloat16, fmt)
    ref = diffusers.FluxTransformer2DModel.from_pretrained(str(tmp_path / "transformer"), torch_dtype=torch.bfloat16)
    n = quantized.quantize_linears(ref, fmt, torch.bfloat16)
    assert n > 5 and sum(quantized.is_quantized(p) for p in ours.parameters()) == n
    for (k, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert quantized.format_of(a) == quantized.format_of(b), k
        assert torch.equal(quantized.dequantize(a), quantized.dequantize(b)), k


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_unet_single_files_stream_equal_to_diffusers_load(tmp_path, monkeypatch, family, dtype):
    """SD 1.x/2.x/XL: the UNet read a tensor at a time equals diffusers' from_single_file, bit for bit."""
    from models_support import write_config_dir

    from lorakit.families.unet import loading
    from lorakit.families.unet.loading import UNET, load_unet
    from lorakit.families.unet.original_layout import unet_to_original
    from lorakit.models.single_file import load_diffusers_part
    from lorakit.models.tiny import tiny_pipeline

    import diffusers

    pipe = tiny_pipeline(family)
    config = write_config_dir(pipe, tmp_path / "config")
    path = write(unet_to_original(pipe.unet.state_dict(), pipe.unet.config), tmp_path / "u.safetensors", prefix="")
    with monkeypatch.context() as m:  # streamed, not diffusers' whole-state fallback
        m.setattr(loading, "load_diffusers_part", None)
        ours = load_unet(open_checkpoint(path), config, DTYPES[dtype])
    ref = load_diffusers_part(diffusers.UNet2DConditionModel, open_checkpoint(path), UNET, "unet", config,
                              DTYPES[dtype])
    assert_same_model(ours, ref)
    int8 = load_unet(open_checkpoint(path), config, torch.bfloat16, "int8")
    n = quantized.quantize_linears(ref.to(torch.bfloat16), "int8", torch.bfloat16)
    assert n > 3 and sum(quantized.is_quantized(p) for p in int8.parameters()) == n


def test_a_big_text_encoder_is_read_into_its_quantized_format(tmp_path, monkeypatch):
    """T5 from the parts folder of a single file goes tensor by tensor into int8 (the bf16 encoder is
    never built through transformers' loader) and holds what quantizing the plainly loaded one holds."""
    from flux_support import tiny_flux_pipeline

    from lorakit import families, quantized
    from lorakit.families.dit import loading as dit_loading
    from lorakit.families.flux.loading import save_single_file
    from lorakit.models import load_model

    pipe = tiny_flux_pipeline()
    pipe.save_pretrained(tmp_path / "parts")
    flux = families.get("flux")
    save_single_file(pipe, tmp_path / "flux.safetensors", flux)
    through_library = []
    original = dit_loading._load
    monkeypatch.setattr(dit_loading, "_load", lambda part, where, sub, *a, **k: (
        through_library.append(sub), original(part, where, sub, *a, **k))[1])
    model = load_model(tmp_path / "flux.safetensors", dtype=torch.bfloat16, text_encoders=tmp_path / "parts",
                       config_dir=tmp_path / "parts", base_precision="int8")
    assert "text_encoder_2" not in through_library and "text_encoder" in through_library
    t5 = model.pipe.text_encoder_2
    reference = pipe.text_encoder_2.to(torch.bfloat16)
    quantized.quantize_linears(reference, "int8", torch.bfloat16)
    ours, theirs = dict(t5.named_parameters()), dict(reference.named_parameters())
    assert set(ours) == set(theirs)
    held = [n for n, p in ours.items() if quantized.is_quantized(p)]
    assert held and all(quantized.is_quantized(theirs[n]) for n in held)
    for name in ours:
        assert torch.equal(quantized.dequantize(ours[name]), quantized.dequantize(theirs[name])), name
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
