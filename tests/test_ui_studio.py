"""The web UI's parts without a browser: the path guard, the library's header-only cards, the
PNG-info parser, the dataset review and the prompt's LoRA tags."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lorakit.errors import LoraKitError
from lorakit.formats.st_io import write_safetensors
from lorakit.ui.guard import PathGuard

from test_caption import tiny_blip  # noqa: F401 - the fixture


def kohya_file(path, rank=4, context=768, metadata=None, te2=False):
    """A small kohya LoRA: two cross-attention modules of a block every UNet family has (and a CLIP-G
    text-encoder module)."""
    t = {}
    for name in ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
                 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v"):
        t[f"{name}.lora_down.weight"] = torch.zeros(rank, context)
        t[f"{name}.lora_up.weight"] = torch.zeros(320, rank)
        t[f"{name}.alpha"] = torch.tensor(float(rank))
    if te2:
        t["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(rank, 1280)
        t["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, rank)
    write_safetensors(path, t, metadata or {})
    return path


# --- the path guard ------------------------------------------------------------------------------
def test_guard_accepts_paths_inside_and_resolves_relative_ones_from_the_base(tmp_path):
    (tmp_path / "loras" / "sub").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    g = PathGuard([tmp_path / "loras", tmp_path / "data"])
    inside = tmp_path / "loras" / "sub" / "a.safetensors"
    assert g.check(str(inside), "f") == inside
    assert g.check("x.safetensors", "f") == tmp_path / "loras" / "x.safetensors"
    assert g.check("img", "f", base=tmp_path / "data") == tmp_path / "data" / "img"
    assert g.check(str(tmp_path / "loras" / "sub" / ".." / "b"), "f") == tmp_path / "loras" / "b"
    assert g.check(str(tmp_path / "data"), "f", kind="dir") == tmp_path / "data"


@pytest.mark.parametrize("bad", ["../secret.txt", "sub/../../secret.txt", "/etc/passwd", "~/x", "{tmp}/other/f"])
def test_guard_refuses_escapes(tmp_path, bad):
    (tmp_path / "loras" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    g = PathGuard([tmp_path / "loras"])
    with pytest.raises(LoraKitError, match="outside the folders this page may use"):
        g.check(bad.format(tmp=tmp_path), "LoRA file")


def test_guard_follows_symlinks_before_deciding(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.safetensors").write_bytes(b"x")
    os.symlink(tmp_path / "outside", tmp_path / "loras" / "link")
    os.symlink(tmp_path / "outside" / "f.safetensors", tmp_path / "loras" / "f.safetensors")
    g = PathGuard([tmp_path / "loras"])
    for inside_name in ("link/f.safetensors", "f.safetensors", str(tmp_path / "loras" / "link")):
        with pytest.raises(LoraKitError, match="outside"):
            g.check(inside_name, "LoRA file")
    # and a link from outside into an allowed folder is fine: what counts is where it leads
    os.symlink(tmp_path / "loras", tmp_path / "way-in")
    assert g.check(str(tmp_path / "way-in" / "new.safetensors"), "out") == tmp_path / "loras" / "new.safetensors"


def test_guard_messages_for_empty_missing_and_wrong_kind(tmp_path):
    g = PathGuard([tmp_path])
    (tmp_path / "f").write_text("x")
    with pytest.raises(LoraKitError, match="choose a path"):
        g.check("  ", "LoRA file")
    with pytest.raises(LoraKitError, match="no such file"):
        g.check("missing.safetensors", "LoRA file", exists=True)
    with pytest.raises(LoraKitError, match="is a file, not a folder"):
        g.check("f", "dataset folder", kind="dir")
    with pytest.raises(LoraKitError, match="NUL"):
        g.check("a\x00b", "f")
    with pytest.raises(LoraKitError, match="no folders"):
        PathGuard().check("a", "f")
    with pytest.raises(LoraKitError, match="not an existing folder"):
        g.allow(tmp_path / "nope")


def test_guard_models_toy_hub_ids_and_paths(tmp_path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    g = PathGuard([tmp_path / "models"])
    assert g.model("toy") == "toy"
    assert g.model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert g.model("m") == str(tmp_path / "models" / "m")  # a local name wins over a hub id look-alike
    with pytest.raises(LoraKitError, match="outside"):
        g.model("../models/../../etc")
    with pytest.raises(LoraKitError, match="outside"):
        g.model("/etc")


# --- the library ---------------------------------------------------------------------------------
def test_card_reads_family_rank_alpha_and_trigger_words(tmp_path):
    from lorakit.ui.library import read_card

    freq = {"10_zqx ring": {"zqx": 10, "ring": 8, "red": 3, "blue": 2, "green": 1, "grey": 1, "white": 1}}
    kohya_file(tmp_path / "ring.safetensors", rank=4, metadata={
        "modelspec.trigger_phrase": "zqx ring", "ss_tag_frequency": json.dumps(freq), "ss_network_dim": "4",
        "ss_network_alpha": "2.0"})
    card = read_card(tmp_path / "ring.safetensors")
    assert (card.name, card.family, card.format, card.rank, card.alpha) == ("ring", "sd1", "kohya", 4, "2")
    assert card.triggers == ["zqx ring", "zqx", "ring", "red", "blue", "green"]
    assert card.size == (tmp_path / "ring.safetensors").stat().st_size
    assert "ring · sd1 · kohya · r4/α2" in card.summary() and "zqx ring" in card.summary()
    kohya_file(tmp_path / "xl.safetensors", rank=8, context=2048, te2=True)
    xl = read_card(tmp_path / "xl.safetensors")
    assert (xl.family, xl.rank, xl.alpha, xl.triggers) == ("sdxl", 8, None, [])
    kohya_file(tmp_path / "v2.safetensors", rank=2, context=1024)
    assert read_card(tmp_path / "v2.safetensors").family == "sd2"


def test_listing_reads_headers_only(tmp_path):
    """200 LoRAs whose tensor data is cut off still list with their facts: no tensor byte is read."""
    from lorakit.formats import load_lora
    from lorakit.ui.library import Library

    for i in range(200):
        p = kohya_file(tmp_path / f"lora{i:03d}.safetensors", rank=4 + i % 3,
                       metadata={"modelspec.trigger_phrase": f"word{i}"})
        with open(p, "r+b") as f:
            header_len = int.from_bytes(f.read(8), "little")
            f.truncate(8 + header_len + 16)  # a few bytes of the first tensor; the rest is gone
    cards = Library().scan([tmp_path])
    assert len(cards) == 200 and all(c.error is None for c in cards)
    assert [c.rank for c in cards[:3]] == [4, 5, 6] and cards[7].triggers == ["word7"]
    assert {c.family for c in cards} == {"sd1"}
    with pytest.raises(LoraKitError, match="truncated"):
        load_lora(tmp_path / "lora000.safetensors")  # loading the tensors would have failed


def test_library_rescans_only_changed_files_and_lists_broken_ones(tmp_path, monkeypatch):
    from lorakit.ui import library as L

    kohya_file(tmp_path / "a.safetensors")
    (tmp_path / "sub").mkdir()
    kohya_file(tmp_path / "sub" / "b.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "a-run" / "state-000010").mkdir(parents=True)  # a training run's resume state: not a card
    kohya_file(tmp_path / "a-run" / "state-000010" / "model.safetensors")
    (tmp_path / "a-run" / "state-000010" / "lorakit_state.json").write_text("{}")
    lib = L.Library()
    reads = []
    original = L.read_card
    monkeypatch.setattr(L, "read_card", lambda p: reads.append(p.name) or original(p))
    cards = lib.scan([tmp_path])
    assert sorted(c.name for c in cards) == ["a", "b", "junk"]
    assert next(c for c in cards if c.name == "b").family == "sdxl"
    assert "unreadable" in next(c for c in cards if c.name == "junk").summary()
    reads.clear()
    lib.scan([tmp_path])
    assert reads == []
    kohya_file(tmp_path / "a.safetensors", rank=8)
    assert [c.rank for c in lib.scan([tmp_path]) if c.name == "a"] == [8] and reads == ["a.safetensors"]


def test_search_and_family_filter(tmp_path):
    from lorakit.ui.library import Library, search

    kohya_file(tmp_path / "ring.safetensors", metadata={"modelspec.trigger_phrase": "zqx"})
    kohya_file(tmp_path / "style.safetensors", context=2048)
    cards = Library().scan([tmp_path])
    assert [c.name for c in search(cards, "ZQX")] == ["ring"]
    assert [c.name for c in search(cards, "", "sdxl")] == ["style"]
    assert [c.name for c in search(cards, "ring", "sdxl")] == []
    assert len(search(cards, "", "all")) == 2


def test_preview_image_next_to_the_file(tmp_path):
    from PIL import Image

    from lorakit.ui.library import card_image, read_card

    kohya_file(tmp_path / "a.safetensors")
    card = read_card(tmp_path / "a.safetensors")
    assert card.preview is None and card_image(card).size == (192, 192)
    Image.new("RGB", (400, 200), (255, 0, 0)).save(tmp_path / "a.preview.png")
    assert card.preview == tmp_path / "a.preview.png"
    im = card_image(card)
    assert im.size == (192, 96) and im.getpixel((5, 5)) == (255, 0, 0)


# --- PNG info ------------------------------------------------------------------------------------
def test_png_info_round_trip(tmp_path):
    from PIL import Image

    from lorakit.generate import infotext, save_png
    from lorakit.ui.pnginfo import parse_parameters, read_parameters

    text = infotext("zqx ring, red <lora:ring:0.7>", "blurry, bad", 12, "dpm++2m_karras", 6.5, 1234, 512, 768,
                    "toy", "abc123", [("ring", 0.7, "0123456789ab"), ("style", 0.5, "ba9876543210")])
    save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", text)
    info = parse_parameters(read_parameters(tmp_path / "x.png"))
    assert info["prompt"] == "zqx ring, red <lora:ring:0.7> <lora:style:0.5>"
    assert info["negative"] == "blurry, bad"
    assert (info["steps"], info["guidance"], info["seed"], info["width"], info["height"]) == (12, 6.5, 1234, 512, 768)
    assert info["sampler"] == "dpm++2m_karras" and info["model"] == "toy"
    assert info["params"]["Lora hashes"] == "ring: 0123456789ab, style: ba9876543210"


def test_png_info_of_an_a1111_image_and_of_plain_images(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from lorakit.ui.pnginfo import parse_parameters, read_parameters

    a1111 = ("masterpiece, 1girl,\nsmiling <lora:face:1>\nNegative prompt: lowres,\nbad hands\n"
             'Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 42, Size: 832x1216, '
             'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "face: aabbccddeeff", Version: v1.10.1')
    meta = PngInfo()
    meta.add_text("parameters", a1111)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=meta)
    info = parse_parameters(read_parameters(tmp_path / "a.png"))
    assert info["prompt"] == "masterpiece, 1girl,\nsmiling <lora:face:1>"
    assert info["negative"] == "lowres,\nbad hands"
    assert (info["steps"], info["sampler"], info["seed"], info["width"], info["height"]) == (30, "euler_a", 42, 832,
                                                                                            1216)
    assert info["params"]["Schedule type"] == "Automatic"
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(LoraKitError, match="no generation settings"):
        read_parameters(tmp_path / "plain.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(LoraKitError, match="cannot read the image"):
        read_parameters(tmp_path / "bad.png")
    assert parse_parameters("just a prompt")["prompt"] == "just a prompt"


# --- the dataset review --------------------------------------------------------------------------
def test_dataset_review_flags_what_the_trainer_refuses(tmp_path):
    from PIL import Image

    from lorakit.ui import dataset as D

    Image.new("RGB", (512, 512)).save(tmp_path / "big.png")
    (tmp_path / "big.txt").write_text("zqx, ring,  red\n")
    Image.new("RGB", (100, 120)).save(tmp_path / "small.png")
    (tmp_path / "small.txt").write_text("zqx, ring")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "orphan.txt").write_text("lost")
    (tmp_path / "3_zqx").mkdir()
    Image.new("RGB", (300, 300)).save(tmp_path / "3_zqx" / "x.png")
    entries = {e.image.name: e for e in D.review(tmp_path, 512)}
    assert sorted(entries) == ["big.png", "broken.jpg", "small.png", "x.png"]
    assert entries["big.png"].problem is None and entries["big.png"].caption == "zqx, ring, red"
    assert "100×120 is too small for its 448×576 bucket" in entries["small.png"].problem
    assert "cannot read image" in entries["broken.jpg"].problem
    assert entries["x.png"].problem is None and entries["x.png"].caption_path is None
    at_128 = {e.image.name: e.problem for e in D.review(tmp_path, 128)}
    assert at_128["small.png"] is None and "cannot read" in at_128["broken.jpg"]
    assert [p.name for p in D.orphan_captions(tmp_path)] == ["orphan.txt"]
    assert D.tag_counts(list(entries.values()))[:2] == [("zqx", 2), ("ring", 2)]


def test_caption_save_is_atomic_and_keeps_the_existing_extension(tmp_path):
    from PIL import Image

    from lorakit.ui import dataset as D

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "b.caption").write_text("old")
    assert D.save_caption(tmp_path / "a.png", "  new   caption\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_text() == "new caption\n"
    assert D.save_caption(tmp_path / "b.png", "zqx, ring") == tmp_path / "b.caption"
    assert (tmp_path / "b.caption").read_text() == "zqx, ring\n" and not (tmp_path / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.txt", "b.caption", "b.png"]  # no temp left
    with pytest.raises(LoraKitError, match="no such image"):
        D.save_caption(tmp_path / "c.png", "x")


# --- the prompt's LoRA tags ----------------------------------------------------------------------
def test_prompt_tags_edit_in_place():
    from lorakit.ui.generate_tab import prompt_tags, set_tag

    p = "a cat <lora:ring:0.5>, red <lora:style>"
    assert prompt_tags(p) == [("ring", 0.5), ("style", 1.0)]
    assert set_tag(p, "ring", 0.75) == "a cat <lora:ring:0.75>, red <lora:style>"
    assert set_tag(p, "new", 1) == p + " <lora:new:1>"
    assert set_tag(p, "style", None) == "a cat <lora:ring:0.5>, red"
    assert set_tag("", "a", 1.25) == "<lora:a:1.25>"


def test_studio_settings_add_folders_unless_locked(tmp_path):
    from lorakit.ui.studio import Studio

    (tmp_path / "l").mkdir()
    (tmp_path / "d").mkdir()
    s = Studio(out_dir=tmp_path / "out")
    s.add_folders(str(tmp_path / "l"), str(tmp_path / "d"))
    assert s.lora_dirs == [tmp_path / "l"] and s.data_dirs == [tmp_path / "d"]
    assert s.guard.check("x", "f", base=s.first("data")) == tmp_path / "d" / "x"
    locked = Studio(lora_dirs=[tmp_path / "l"], locked=True)
    with pytest.raises(LoraKitError, match="fixed"):
        locked.add_folders(str(tmp_path / "d"), "")
    with pytest.raises(LoraKitError, match="not an existing folder"):
        s.add_folders(str(tmp_path / "nope"), "")
    s.remember_model("a/b")
    assert s.model_choices()[:2] == ["toy", "a/b"]


# --- the tabs' handlers, guarded by the page's folders --------------------------------------------
@pytest.fixture
def studio(tmp_path):
    from lorakit.ui.studio import Studio

    for d in ("loras", "data", "elsewhere"):
        (tmp_path / d).mkdir()
    return Studio(lora_dirs=[tmp_path / "loras"], data_dirs=[tmp_path / "data"], out_dir=tmp_path / "out")


def test_tools_pick_from_the_library_and_write_inside_it(studio, tmp_path):
    from lorakit.ui import tools_tab as T

    from conftest import tiny_model_with_lora

    tiny_model_with_lora(tmp_path / "data")
    shutil.copy(tmp_path / "data" / "a.safetensors", tmp_path / "loras" / "a.safetensors")
    assert json.loads(T.inspect(studio, "a.safetensors"))["family"] == "sd1"
    assert "wrote" in T.resize(studio, str(tmp_path / "loras" / "a.safetensors"), 4, "", "small/r4.safetensors")
    assert json.loads(T.inspect(studio, "small/r4.safetensors"))["ranks"]["max"] == 4
    assert "wrote" in T.convert(studio, "a.safetensors", "diffusers", "d.safetensors")
    with pytest.raises(LoraKitError, match="2 LoRAs but 1 weights"):
        T.merge(studio, ["a.safetensors", "small/r4.safetensors"], "0.5", 0, "", "m.safetensors")
    assert "wrote" in T.merge(studio, ["a.safetensors", "small/r4.safetensors"], "0.5, 0.5", 0, "", "m.safetensors")
    assert sorted(c.name for c in studio.cards()) == ["a", "d", "m", "r4"]
    for call in (lambda: T.inspect(studio, "../elsewhere/a.safetensors"),
                 lambda: T.convert(studio, "a.safetensors", "kohya", str(tmp_path / "elsewhere" / "x.safetensors")),
                 lambda: T.merge(studio, ["a.safetensors"], "", 0, str(tmp_path / "elsewhere"), "m2.safetensors"),
                 lambda: T.extract(studio, "toy", str(tmp_path / "elsewhere"), 4, 0, "e.safetensors")):
        with pytest.raises(LoraKitError, match="outside the folders"):
            call()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_dataset_handlers_open_edit_and_caption(studio, tmp_path):
    from PIL import Image

    from lorakit.ui import dataset_tab as T

    for i in range(3):
        Image.new("RGB", (64, 64), (40 * i, 0, 0)).save(tmp_path / "data" / f"im{i}.png")
    (tmp_path / "data" / "im0.txt").write_text("zqx, ring")
    items, paths, report, counts, folder = T.open_folder(studio, ".", 64)  # relative: from the first data folder
    assert folder == str(tmp_path / "data") and len(items) == 3 and items[0][1] == "zqx, ring"
    assert "2 without a caption file" in report and "No problems found" in report
    assert counts == [["zqx", 1], ["ring", 1]]
    assert T.caption_of(paths, 0) == (str(tmp_path / "data" / "im0.png"), "zqx, ring")
    msg, items, *_ = T.save(studio, paths[1], "zqx, a red ring", folder, 64)
    assert (tmp_path / "data" / "im1.txt").read_text() == "zqx, a red ring\n" and items[1][1] == "zqx, a red ring"
    _, _, report, *_ = T.open_folder(studio, folder, 512)
    assert "64×64 is too small" in report
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"")
    with pytest.raises(LoraKitError, match="outside"):
        T.save(studio, str(tmp_path / "elsewhere" / "x.png"), "pwned", folder, 64)
    with pytest.raises(LoraKitError, match="outside"):
        T.open_folder(studio, "../elsewhere", 64)
    with pytest.raises(LoraKitError, match="outside"):
        T.caption(studio, folder, "", False, str(tmp_path / "elsewhere"), 64)


def test_dataset_blip_captioning_from_the_page(studio, tmp_path, tiny_blip):
    from PIL import Image

    from lorakit.ui import dataset_tab as T

    shutil.copytree(tiny_blip, tmp_path / "data" / "blip")  # a model the page may use: under a data folder
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 30 * i, 0)).save(tmp_path / "data" / f"im{i}.png")
    (tmp_path / "data" / "im1.txt").write_text("hand written")
    msg, items, *_ = T.caption(studio, ".", "zqx", False, "blip", 64)
    assert msg == "1 caption(s) written"
    assert (tmp_path / "data" / "im0.txt").read_text().startswith("zqx, ")
    assert (tmp_path / "data" / "im1.txt").read_text() == "hand written"
    assert items[0][1].startswith("zqx, ") and items[1][1] == "hand written"


def test_family_from_widths_when_the_metadata_is_silent(tmp_path):
    """Many modules (more than the shapes read) and no metadata: the families decide from widths."""
    from lorakit.formats.st_io import write_safetensors
    from lorakit.ui.library import read_card

    for context, family in ((768, "sd1"), (1024, "sd2"), (2048, "sdxl")):
        t = {}
        for i in range(40):
            name = f"lora_unet_up_blocks_1_attentions_{i}_transformer_blocks_0_attn2_to_k"
            t[f"{name}.lora_down.weight"] = torch.zeros(2, context)
            t[f"{name}.lora_up.weight"] = torch.zeros(8, 2)
        write_safetensors(tmp_path / f"{family}.safetensors", t, {})
        card = read_card(tmp_path / f"{family}.safetensors")
        assert (card.family, card.rank, card.error) == (family, 2, None)


def test_train_form_paths_are_guarded(studio, tmp_path):
    from lorakit.ui.train_tab import guarded_form

    form = ["toy", ".", "zqx", "my.safetensors", "attn", 4, 4, 0, 10, 1e-3, 1, 32, "adamw", "constant", False,
            "", "", "", 0, 0, "", ""]
    checked = guarded_form(studio, form)
    assert checked[1] == str(tmp_path / "data") and checked[3] == str(tmp_path / "loras" / "my.safetensors")
    for index, value in ((1, str(tmp_path / "elsewhere")), (3, "../elsewhere/x.safetensors"),
                         (16, "/etc"), (0, str(tmp_path / "elsewhere"))):
        bad = list(form)
        bad[index] = value
        with pytest.raises(LoraKitError, match="outside the folders"):
            guarded_form(studio, bad)
    bad = list(form)
    bad[21] = "no-such-run"
    with pytest.raises(LoraKitError, match="resume folder: no such file"):
        guarded_form(studio, bad)


# options whose help speaks of files or folders but whose value is none
NOT_PATHS = {"allow_pickle": "a switch", "repeats": "a count", "save_format": "a layout's name",
             "class_prompt": "a prompt, or a .txt file of them: guarded apart (guard_config)"}


def test_path_options_are_found_by_their_types():
    """The guard's list comes from the config's field types: it holds every known path option, and
    no option whose help speaks of a file or folder is typed otherwise (a new one typed `str`
    would escape the guard)."""
    import re
    from dataclasses import fields

    from lorakit.train.config import MODEL_OPTIONS, PATH_OPTIONS, TrainConfig

    assert {"data", "out", "run_dir", "resume", "class_data", "cache_dir", "sample_prompts", "evaluate_prompts",
            "text_encoders", "config_dir"} <= set(PATH_OPTIONS)
    assert set(MODEL_OPTIONS) == {"model", "clip_model", "dino_model"}
    speaks = {f.name for f in fields(TrainConfig)
              if re.search(r"\b(files?|folders?|director(y|ies)|paths?)\b", f.metadata["help"])}
    assert speaks - set(PATH_OPTIONS) - set(MODEL_OPTIONS) == set(NOT_PATHS)


def _train_form(studio):
    from lorakit.ui.train_tab import guarded_form

    return guarded_form(studio, ["toy", ".", "zqx", "my.safetensors", "attn", 4, 4, 0, 10, 1e-3, 1, 32, "adamw",
                                 "constant", False, "", "", "zqx a ring", 0, 0, "", ""])


def _path_options():
    from lorakit.train.config import MODEL_OPTIONS, PATH_OPTIONS

    return PATH_OPTIONS + MODEL_OPTIONS


@pytest.mark.parametrize("option", _path_options())
def test_every_path_option_in_the_toml_box_is_guarded(studio, tmp_path, option):
    """Each option typed as a path or a model, set in the TOML box to a folder outside the page's:
    refused before anything is written (evaluate_prompts, text_encoders, config_dir, clip_model and
    dino_model once went through unchecked)."""
    from lorakit.ui.train_tab import guard_config, train_config

    form = _train_form(studio)
    form[20] = f'{option} = "{tmp_path / "elsewhere"}"'
    with pytest.raises(LoraKitError, match=f"training option {option}: outside the folders"):
        train_config(*form, check=lambda c: guard_config(studio, c))
    assert not any((tmp_path / "elsewhere").iterdir())  # nothing written before the check
    form[20] = ""
    cfg = train_config(*form, check=lambda c: guard_config(studio, c))
    assert cfg.sample_prompts == tmp_path / "loras" / "my-run" / "sample_prompts.txt"


def test_relative_toml_box_paths_are_the_ones_the_guard_checked(studio, tmp_path):
    """A relative path passes the guard as one inside the page's folders: training must use that
    very path, not the same name under the server's working folder."""
    from lorakit.ui.train_tab import guard_config, train_config

    form = _train_form(studio)
    form[20] = 'cache_dir = "cache"\nevaluate_prompts = "prompts.txt"\nclip_model = "none"'
    cfg = train_config(*form, check=lambda c: guard_config(studio, c))
    assert cfg.cache_dir == tmp_path / "loras" / "cache" and cfg.evaluate_prompts == tmp_path / "loras" / "prompts.txt"
    assert cfg.clip_model == "none"  # the evaluation's word for "skip", no path


def test_evaluate_tab_guards_its_files(studio, tmp_path):
    from lorakit.ui import evaluate_tab as T

    with pytest.raises(LoraKitError, match="choose the LoRA"):
        T.sweep(studio, "toy", [], "a cat", "", "0,1", 1, 1, 5.0, 0, "ddim", "")
    with pytest.raises(LoraKitError, match="LoRA file: outside"):
        T.sweep(studio, "toy", [str(tmp_path / "elsewhere" / "a.safetensors")], "a cat", "", "0,1", 1, 1, 5.0, 0,
                "ddim", "")
    (tmp_path / "loras" / "a.safetensors").write_bytes(b"x")
    with pytest.raises(LoraKitError, match="grid file: outside"):
        T.sweep(studio, "toy", ["a.safetensors"], "a cat", "", "0,1", 1, 1, 5.0, 0, "ddim", "../elsewhere/g.png")


def test_a_dataset_toml_cannot_lead_out_of_the_folders(studio, tmp_path):
    from lorakit.ui.train_tab import guard_config, guarded_form, train_config

    (tmp_path / "data" / "set.toml").write_text(f'[[subsets]]\nimage_dir = "{tmp_path / "elsewhere"}"\n')
    form = guarded_form(studio, ["toy", "set.toml", "zqx", "my.safetensors", "attn", 4, 4, 0, 10, 1e-3, 1, 32,
                                 "adamw", "constant", False, "", "", "", 0, 0, "", ""])
    with pytest.raises(LoraKitError, match="image folder of set.toml: outside"):
        train_config(*form, check=lambda c: guard_config(studio, c))
