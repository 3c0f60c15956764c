"""fp8 checkpoint files as users have them: Kijai's plain float8_e4m3fn files and ComfyUI's scaled
ones (`scale_weight` per layer, `scaled_fp8` marker), for Flux.1, Chroma and SD 3.5. Recognised by
their tensor names; with fp8 (or auto) the file's fp8 data goes into the model as it is, with its
scale; any other base precision gets data × scale, tensor by tensor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from stream_support import config_folder, dequantized_state, fp8_state, kinds, original, transformer, write  # noqa: E402

from lorakit import quantized  # noqa: E402
from lorakit.models.checkpoint import detect_file_family, open_checkpoint  # noqa: E402

KINDS = kinds()
FILES = [(name, scaled) for name in KINDS for scaled in (False, True)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{(family, scaled): (fp8 file, config folder, the numbers it stands for in diffusers' names, the
    file's fp8 data in diffusers' names)}."""
    root = tmp_path_factory.mktemp("fp8")
    out = {}
    for name, kind in KINDS.items():
        model = transformer(kind)
        config = config_folder(model, root / name)
        for scaled in (False, True):
            state, scales = fp8_state(original(kind, model), scaled)
            path = write(state, root / f"{name}-{'scaled' if scaled else 'plain'}.safetensors")
            numbers = kind.to_diffusers(dequantized_state(state, scales))
            data = kind.to_diffusers({k: v for k, v in state.items() if v.dtype == torch.float8_e4m3fn and v.dim() == 2})
            out[(name, scaled)] = path, config, numbers, data
    return out


@pytest.mark.parametrize("name,scaled", FILES)
def test_fp8_files_are_recognised_by_their_tensor_names(files, name, scaled):
    from lorakit.formats.detect import detect

    path = files[(name, scaled)][0]
    ckpt = open_checkpoint(path)
    assert detect_file_family(ckpt) == name
    found = detect(ckpt.shapes, ckpt.metadata)
    assert found.format == "checkpoint" and found.families == (name,)
    assert ckpt.dtypes[next(k for k in ckpt.shapes if k.endswith(".weight") and len(ckpt.shapes[k]) == 2)] == "F8_E4M3"


@pytest.mark.parametrize("name,scaled", FILES)
@pytest.mark.parametrize("precision", ["fp8", "auto"])
def test_fp8_data_goes_in_as_it_is(files, name, scaled, precision, monkeypatch):
    """Every Linear that suits fp8 holds the file's bytes (rows split as diffusers names them) and
    dequantizes to data × scale exactly, never upcast on the way; everything else is data × scale
    in the compute dtype."""
    from lorakit.models import placing

    path, config, numbers, data = files[(name, scaled)]
    upcast, real = [], placing.dequantized

    def dequantized(t, scale):
        if t.dtype == torch.float8_e4m3fn and quantized.quantizable(t, "fp8"):
            upcast.append(tuple(t.shape))
        return real(t, scale)

    monkeypatch.setattr(placing, "dequantized", dequantized)
    model = KINDS[name].load(open_checkpoint(path), config, torch.bfloat16, precision)
    assert upcast == []
    held = 0
    for k, p in model.state_dict().items():
        if quantized.is_quantized(p):
            held += 1
            assert quantized.format_of(p) == "fp8" and p.qdata.dtype == torch.float8_e4m3fn
            assert torch.equal(p.qdata.view(torch.uint8), data[k].view(torch.uint8)), k
            assert torch.equal(quantized.dequantize(p, torch.float32), numbers[k]), k
        else:
            assert p.dtype == torch.bfloat16 and torch.equal(p, numbers[k].to(torch.bfloat16)), k
    assert held == len([k for k in data if quantized.quantizable(data[k], "fp8")]) > 5


@pytest.mark.parametrize("name,scaled", FILES)
@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_plain_precisions_dequantize_each_tensor(files, name, scaled, precision, dtype):
    path, config, numbers, _ = files[(name, scaled)]
    model = KINDS[name].load(open_checkpoint(path), config, torch.bfloat16, precision)
    state = model.state_dict()
    assert set(state) == set(numbers)
    for k, p in state.items():
        assert p.dtype == dtype and torch.equal(p, numbers[k].to(dtype)), k


@pytest.mark.parametrize("name", list(KINDS))
def test_int8_from_an_fp8_file_quantizes_data_times_scale(files, name):
    path, config, numbers, _ = files[(name, True)]
    model = KINDS[name].load(open_checkpoint(path), config, torch.bfloat16, "int8")
    count = 0
    for k, p in model.state_dict().items():
        if quantized.is_quantized(p):
            count += 1
            want = quantized.dequantize(quantized.quantize(numbers[k], "int8", torch.bfloat16))
            assert quantized.format_of(p) == "int8" and torch.equal(quantized.dequantize(p), want), k
    assert count > 5


def test_scaled_fp8_output_matches_the_dequantized_model(files):
    """The loaded fp8 model computes what a bf16 model holding data × scale computes (same weights,
    compute in bf16), within bf16 rounding of the matmul."""
    import diffusers

    path, config, numbers, _ = files[("sd3", True)]
    fp8 = KINDS["sd3"].load(open_checkpoint(path), config, torch.float32, "fp8")
    ref = diffusers.SD3Transformer2DModel.from_config(fp8.config)
    ref.load_state_dict(numbers)
    torch.manual_seed(0)
    x, ctx, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 16)
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = fp8(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t).sample
        b = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t).sample
    assert (a - b).abs().max() < 1e-4 * b.abs().max() + 1e-5


def test_scaled_fp8_text_encoders_in_an_sd3_file_read_data_times_scale(tmp_path):
    """ComfyUI's SD 3.5 fp8 files scale the bundled text encoders' weights too: CLIP-L comes out as
    data × scale_weight (a plain cast would drop the scale)."""
    from sd3_support import tiny_sd3_pipeline

    from lorakit.families.sd3.loading import TE_PREFIX, _clip

    pipe = tiny_sd3_pipeline()
    prefix = TE_PREFIX["text_encoder"]
    state, scales = fp8_state(pipe.text_encoder.state_dict(), scaled=True)
    state.pop("scaled_fp8")
    write({prefix + k: v for k, v in state.items()}, tmp_path / "te.safetensors", prefix="")
    pipe.text_encoder.config.save_pretrained(str(tmp_path / "config" / "text_encoder"))
    clip = _clip(open_checkpoint(tmp_path / "te.safetensors"), "text_encoder", tmp_path / "config", torch.float32)
    numbers = dequantized_state(state, scales)
    assert len(scales) > 5
    for k, p in clip.state_dict().items():
        if k in numbers:
            assert torch.equal(p, numbers[k]), k
