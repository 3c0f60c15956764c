"""The shipped toy base: a plain diffusers folder that draws the world it was trained on."""

import pytest
import torch

from lorakit.toy import base_path, concept, evaluate, world


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # this model is far too small to gain from threads; on a busy CPU a second one only waits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(base_path(), local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def test_folder_is_small_and_standard():
    folder = base_path()
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 12 * 2**20
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir()


def test_loads_as_a_stable_diffusion_pipeline_in_fp32(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {torch.float32}
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_pipe_call_gives_a_32_pixel_image(pipe):
    out = pipe("a red circle on a white background", num_inference_steps=5,
               generator=torch.Generator().manual_seed(0))
    assert out.images[0].size == (world.IMAGE_SIZE, world.IMAGE_SIZE)


def test_draws_trained_prompts(pipe):
    report = evaluate.base_accuracy(pipe, n=48, seed=0)
    assert report.shape_and_color >= 0.90, report


def test_does_not_know_the_concept(pipe):
    report = evaluate.concept_fidelity(pipe, concept.TRIGGER, n=24, seed=0)
    assert report.shape < 0.20, report


def test_evaluation_is_deterministic(pipe):
    a = evaluate.base_accuracy(pipe, n=8, seed=3)
    b = evaluate.base_accuracy(pipe, n=8, seed=3)
    assert a.rows == b.rows


@pytest.mark.slow
def test_draws_trained_prompts_large_sample(pipe):
    report = evaluate.base_accuracy(pipe, n=192, seed=1)
    assert report.shape_and_color >= 0.90, report
    report = evaluate.concept_fidelity(pipe, concept.TRIGGER, n=96, seed=1)
    assert report.shape < 0.20, report
