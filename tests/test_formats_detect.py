"""Which family a LoRA file is for, from every key: the same answer in `lorakit inspect` and on the
UI library's card, and, where the file truly cannot tell, the families it fits named, never a guess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import flux_parts, tiny_flux_pipeline  # noqa: E402
from sd3_support import sd3_parts, tiny_sd3_pipeline  # noqa: E402

from lorakit import families  # noqa: E402
from lorakit.cli import main  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.formats import load_network, save_lora  # noqa: E402
from lorakit.lora import LoRANetwork  # noqa: E402
from lorakit.models.tiny import tiny_pipeline  # noqa: E402
from lorakit.ui.generate_tab import family_clash  # noqa: E402
from lorakit.ui.library import read_card  # noqa: E402


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline()


def without_metadata(path: Path, keep=lambda key: True) -> Path:
    """The file as a trainer that writes no metadata leaves it (and only the keys `keep` wants)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    save_file({k: v for k, v in state.items() if keep(k)}, str(path))
    return path


def lora_file(path: Path, parts, layout: str, **create) -> Path:
    net = LoRANetwork.create(parts, rank=2, alpha=1.0, **create)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return without_metadata(save_lora(path, net.kohya_modules(), format=layout, family=parts.family))


def inspect(path: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def refused(path: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main(["inspect", str(path), *extra]) == 2
    return capsys.readouterr().err


def real_width_file(path: Path, names_widths: dict[str, int], rank: int = 2) -> Path:
    """Modules at real-model widths (down [r, in], up [in, r]), written directly: small whatever the width."""
    state = {}
    for name, width in names_widths.items():
        down, up = (("lora_A.weight", "lora_B.weight") if "." in name else ("lora_down.weight", "lora_up.weight"))
        state[f"{name}.{down}"] = torch.full((rank, width), 0.01)
        state[f"{name}.{up}"] = torch.full((width, rank), 0.01)
    save_file(state, str(path))
    return path


# --- kohya files without metadata: every name counts, not only the text encoders' --------------------
def test_metadata_less_kohya_sd3_and_flux_files_are_theirs_in_the_library_and_inspect(sd3, flux, tmp_path, capsys):
    """sd-scripts' SD3 file (CLIP-L, CLIP-G and joint blocks) and Flux file (CLIP-L and double/single
    blocks) with no metadata: the card once called both SDXL from their `lora_te1_`/`lora_te2_` names
    alone, and the Generate tab then refused them on their own base model."""
    for family, pipe, parts in (("sd3", sd3, sd3_parts(sd3)), ("flux", flux, flux_parts(flux))):
        path = lora_file(tmp_path / f"{family}.safetensors", parts, "kohya", text_encoder=True)
        report = inspect(path, capsys)
        card = read_card(path)
        assert (card.format, card.family) == ("kohya", family) and (report["format"], report["family"]) == (
            "kohya", family)
        assert report["candidates"] == [family] and card.candidates == ()
        assert family_clash(card, family) is None and family_clash(card, "sdxl") is not None
        assert len(load_network(parts, path).adapters) == report["modules"]


# --- diffusers files whose names several families share --------------------------------------------------
def test_sd3_diffusers_file_of_clip_only_names_sdxl_and_sd3(sd3, tmp_path, capsys):
    """An SD3 diffusers file adapting CLIP-L and CLIP-G only: SDXL has the same two encoders under the
    same names and widths, so the file fits both and says so; it loads on SD3 (it was refused there
    as an SDXL LoRA) and is refused on SD 1.x naming both."""
    path = lora_file(tmp_path / "clip.safetensors", sd3_parts(sd3), "diffusers", unet=False, text_encoder=True)
    report = inspect(path, capsys)
    card = read_card(path)
    assert (report["format"], report["family"], card.family) == ("diffusers", None, None)
    assert report["candidates"] == ["sdxl", "sd3"] and card.candidates == ("sdxl", "sd3")
    assert family_clash(card, "sd3") is None and "sdxl or sd3" in family_clash(card, "sd1")
    assert len(load_network(sd3_parts(sd3), path).adapters) == report["modules"] == 24
    with pytest.raises(LoraKitError, match="this LoRA is for SDXL or SD3, the model is SD1"):
        load_network(_sd1_parts(), path)
    # at the real widths (CLIP-L 768, CLIP-G 1280) it is no less ambiguous
    real = real_width_file(tmp_path / "real.safetensors", {
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": 768,
        "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": 1280})
    assert inspect(real, capsys)["candidates"] == ["sdxl", "sd3"] and read_card(real).candidates == ("sdxl", "sd3")


def _sd1_parts():
    from lorakit.lora import ModelParts

    pipe = tiny_pipeline("sd1")
    return ModelParts("sd1", pipe.unet, [pipe.text_encoder], dict(pipe.unet.config))


_DOUBLE_BLOCK = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")


# Chroma's double blocks are Flux.1's under the same names and widths: a file of them alone fits both
@pytest.mark.parametrize("family,width,fits", [("flux", 3072, ["flux", "chroma", "flux2"]), ("sd3", 1536, ["sd3"]),
                                               ("sd3", 2432, ["sd3"])])
def test_double_block_diffusers_file_at_real_width_is_the_family_of_that_width(family, width, fits, tmp_path, capsys):
    """`transformer.transformer_blocks.N.attn.to_q` is a Flux double block and an SD3 joint block
    alike; the hidden width tells them apart (Flux.1, Chroma, Flux.2 klein 4B 3072; SD 3.x 1536 or 2432). A Flux file of
    double blocks only and no metadata was read as SD3. Where the width fits several families,
    `--family` and the model at hand settle it."""
    path = real_width_file(tmp_path / "d.safetensors",
                           {f"transformer.transformer_blocks.0.{m}": width for m in _DOUBLE_BLOCK})
    told = ("--family", family) if len(fits) > 1 else ()
    if told:
        labels = [families.get(f).label for f in fits]  # Flux.2 klein 4B is 3072 wide as well
        assert f"fit {', '.join(labels[:-1])} and {labels[-1]} alike" in refused(path, capsys)
        assert read_card(path).family is None and read_card(path).candidates == tuple(fits)
    report = inspect(path, capsys, *told)
    assert (report["format"], report["family"]) == ("diffusers", family)
    assert len(fits) > 1 or read_card(path).family == family
    fused = "lora_unet_double_blocks_0_img_attn_qkv" if family == "flux" else "lora_unet_joint_blocks_0_x_block_attn_qkv"
    assert report["modules"] == 2 and report["parts"] == {"unet": 2}
    from lorakit.formats import load_lora

    assert fused in load_lora(path, family=family).modules
    if family == "flux":  # the model: a real-width Flux.1 double block on the meta device
        from diffusers import FluxTransformer2DModel

        from lorakit.lora import ModelParts

        with torch.device("meta"):
            tr = FluxTransformer2DModel(num_layers=1, num_single_layers=0)
        assert fused in load_network(ModelParts("flux", tr, [], dict(tr.config)), path).adapters


def test_tiny_flux_double_block_file_names_both_families_and_loads_on_either_model(flux, tmp_path, capsys):
    """At a tiny model's width nothing tells a Flux double block from an SD3 joint block: inspect
    says so, naming both (exit 2), `--family` settles it, and the model at hand does too."""
    path = lora_file(tmp_path / "double.safetensors", flux_parts(flux), "diffusers",
                     text_encoder=False)
    without_metadata(path, lambda k: k.startswith("transformer.transformer_blocks."))
    err = refused(path, capsys)
    assert "double.safetensors: its keys and widths fit SD3 and Flux.1 alike" in err and "--family" in err
    assert "Traceback" not in err
    card = read_card(path)
    assert (card.family, card.candidates) == (None, ("sd3", "flux"))
    assert inspect(path, capsys, "--family", "flux")["family"] == "flux"
    net = load_network(flux_parts(flux), path)
    assert net.adapters and all(n.startswith("lora_unet_double_blocks_") for n in net.adapters)
    with pytest.raises(LoraKitError, match="this LoRA is for SD3 or Flux.1, the model is SD1"):
        load_network(_sd1_parts(), path)


# --- truly ambiguous kohya files -------------------------------------------------------------------------
CLIP_L = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"


def test_clip_l_only_kohya_file_names_every_family_it_fits(tmp_path, capsys):
    """What is truly ambiguous: SDXL, SD3 and Flux.1 all take CLIP-L (768 wide) as their first text
    encoder, which kohya names `lora_te1_`, so a LoRA of those modules alone (sd-scripts'
    --network_train_text_encoder_only) fits all three. `lora_te_` names the single encoder of SD 1.x
    and 2.x, and 768 is SD 1.x's width: that file tells. CLIP-G (`lora_te2_`, 1280) fits SDXL and SD3,
    T5 (`lora_te3_`, 4096) SD3, Flux.1 and Chroma."""
    cases = {"te1": ({CLIP_L: 768}, ["sdxl", "sd3", "flux"]),
             "te": ({CLIP_L.replace("te1", "te"): 768}, ["sd1"]),
             "te1te2": ({CLIP_L: 768, CLIP_L.replace("te1", "te2"): 1280}, ["sdxl", "sd3"]),
             "t5": ({"lora_te3_encoder_block_0_layer_0_SelfAttention_q": 4096}, ["sd3", "flux", "chroma"])}
    for name, (modules, fits) in cases.items():
        path = real_width_file(tmp_path / f"{name}.safetensors", modules)
        report = inspect(path, capsys)
        card = read_card(path)
        assert report["family"] == card.family == (fits[0] if len(fits) == 1 else None), name
        assert report["candidates"] == fits and list(card.candidates or (card.family,)) == fits, name
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "te1.safetensors")]) == 0
    assert "ambiguous: SDXL, SD3 or Flux.1" in capsys.readouterr().out.replace("\n", " ")
    assert "sdxl|sd3|flux ?" in read_card(tmp_path / "te1.safetensors").summary()

