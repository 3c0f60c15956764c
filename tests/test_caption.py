"""`lorakit caption` with a tiny random BLIP saved to a folder (no hub)."""

from __future__ import annotations

import pytest
from PIL import Image

from lorakit.cli import main


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    root = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "on", "white", "photo", "of"]
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(root / "vocab.txt"))
    tok.bos_token = "[CLS]"  # BLIP starts generation from bos
    proc = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tok)
    torch.manual_seed(0)
    config = BlipConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        text_config=dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, encoder_hidden_size=16, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, max_position_embeddings=64),
        projection_dim=16)
    BlipForConditionalGeneration(config).save_pretrained(root / "model")
    proc.save_pretrained(root / "model")
    return root / "model"


def test_caption_writes_a_file_per_image_and_keeps_existing(tiny_blip, tmp_path):
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (200, 10 * i, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img2.txt").write_text("hand written\n")
    assert main(["caption", str(tmp_path), "--model", str(tiny_blip), "--prefix", "sks dog",
                 "--max-length", "8"]) == 0
    for i in range(2):
        text = (tmp_path / f"img{i}.txt").read_text()
        assert text.startswith("sks dog, ") and len(text.strip()) > len("sks dog, ")
    assert (tmp_path / "img2.txt").read_text() == "hand written\n"
    assert main(["caption", str(tmp_path), "--model", str(tiny_blip), "--overwrite", "--ext", ".caption"]) == 0
    assert len(list(tmp_path.glob("*.caption"))) == 3


@pytest.mark.parametrize("setup,needle", [("missing", "not a folder"), ("empty", "no images"),
                                          ("broken", "cannot read")])
def test_caption_bad_input(tiny_blip, tmp_path, capsys, setup, needle):
    folder = tmp_path / "data"
    if setup != "missing":
        folder.mkdir()
    if setup == "broken":
        (folder / "x.png").write_bytes(b"not a png")
    assert main(["caption", str(folder), "--model", str(tiny_blip)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and str(folder) in err


def test_caption_model_not_available_offline(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["caption", str(tmp_path), "--model", str(tmp_path / "no-model")]) == 2
    assert "BLIP" in capsys.readouterr().err
