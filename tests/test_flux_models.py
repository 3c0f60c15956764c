"""Loading Flux.1: a BFL single-file transformer with the other parts from --text-encoders DIR, a
diffusers folder, the clear errors; and saving the transformer back as a BFL file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flux_support import tiny_flux_pipeline  # noqa: E402

from lorakit.families.flux import naming as flux_naming  # noqa: E402
from lorakit.errors import LoraKitError  # noqa: E402
from lorakit.families.flux.family import FAMILY  # noqa: E402
from lorakit.models import load_model  # noqa: E402
FLOW_MATCHING = "flow_matching"


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def files(pipe, tmp_path_factory):
    """A BFL transformer file, a folder with the other parts, a config folder for the tiny width."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("flux")
    save_file({k: v.contiguous() for k, v in flux_naming.diffusers_state_to_bfl(pipe.transformer.state_dict()).items()},
              str(root / "flux1-tiny.safetensors"))
    parts = root / "parts"
    pipe.save_pretrained(str(parts))
    config = root / "config"
    (config / "transformer").mkdir(parents=True)
    (config / "transformer" / "config.json").write_text(json.dumps(dict(pipe.transformer.config)))
    pipe.scheduler.save_pretrained(str(config / "scheduler"))
    (config / "model_index.json").write_text((FAMILY.config_dir(variant="dev") / "model_index.json").read_text())
    return root / "flux1-tiny.safetensors", parts, config


def test_bfl_single_file_with_text_encoders_folder(pipe, files):
    ckpt, parts, config = files
    model = load_model(str(ckpt), config_dir=config, text_encoders=parts)
    assert model.family == "flux" and model.prediction_type == FLOW_MATCHING and model.kind == "single_file"
    assert type(model.pipe).__name__ == "FluxPipeline"
    ours, theirs = model.pipe.transformer.state_dict(), pipe.transformer.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert model.pipe.transformer.config.guidance_embeds  # dev: the guidance embedding is there
    assert torch.equal(model.pipe.text_encoder_2.shared.weight, pipe.text_encoder_2.shared.weight)
    assert model.pipe.tokenizer_2 is not None and model.pipe.vae is not None


def test_bfl_file_with_comfyui_prefix_loads_the_same(pipe, files, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt, parts, config = files
    save_file({"model.diffusion_model." + k: v for k, v in load_file(str(ckpt)).items()},
              str(tmp_path / "prefixed.safetensors"))
    model = load_model(str(tmp_path / "prefixed.safetensors"), config_dir=config, text_encoders=parts,
                       components=("unet",))
    assert torch.equal(model.pipe.transformer.proj_out.weight, pipe.transformer.proj_out.weight)


def test_missing_parts_are_named(files, tmp_path):
    ckpt, parts, config = files
    with pytest.raises(LoraKitError, match="T5-XXL \\(text_encoder_2\\).*--text-encoders"):
        load_model(str(ckpt), config_dir=config, text_encoders=tmp_path)
    with pytest.raises(LoraKitError, match="must be a folder"):
        load_model(str(ckpt), config_dir=config, text_encoders=tmp_path / "nope")


def test_config_that_does_not_fit_is_an_error(files, tmp_path):
    ckpt, parts, config = files
    bad = tmp_path / "bad"
    (bad / "transformer").mkdir(parents=True)
    cfg = json.loads((config / "transformer" / "config.json").read_text())
    cfg["num_single_layers"] = 3
    (bad / "transformer" / "config.json").write_text(json.dumps(cfg))
    (bad / "model_index.json").write_text((config / "model_index.json").read_text())
    with pytest.raises(LoraKitError, match="do not fit the config"):
        load_model(str(ckpt), config_dir=bad, text_encoders=parts, components=("unet",))


def test_diffusers_folder_and_missing_t5_tokenizer(pipe, files, tmp_path):
    import shutil

    _, parts, _ = files
    model = load_model(str(parts))
    assert model.family == "flux" and model.prediction_type == FLOW_MATCHING
    assert torch.equal(model.pipe.transformer.x_embedder.weight, pipe.transformer.x_embedder.weight)
    shutil.copytree(parts, tmp_path / "copy")
    shutil.rmtree(tmp_path / "copy" / "tokenizer_2")
    with pytest.raises(LoraKitError, match="tokenizer_2"):
        load_model(str(tmp_path / "copy"))


def test_shipped_configs_build_dev_and_schnell():
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from lorakit.families.flux.family import FAMILY

    for variant, guidance in (("dev", True), ("schnell", False)):
        folder = FAMILY.config_dir(variant=variant)
        cfg = FluxTransformer2DModel.load_config(str(folder), subfolder="transformer")
        with init_empty_weights():
            tr = FluxTransformer2DModel.from_config(cfg)
        assert tr.config.guidance_embeds is guidance and FAMILY.variant_of_config(tr.config) == variant
        assert sum(p.numel() for p in tr.parameters()) == (11_901_408_320 if guidance else 11_891_178_560)


def test_save_as_bfl_file_round_trips(pipe, files, tmp_path):
    from lorakit.models.saver import save_model

    _, parts, config = files
    out = save_model(pipe, tmp_path / "out.safetensors", dtype=None)
    model = load_model(str(out), config_dir=config, text_encoders=parts, components=("unet",))
    ours, theirs = model.pipe.transformer.state_dict(), pipe.transformer.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
