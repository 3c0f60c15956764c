"""Training writes what A1111's and Forge's Lora page read: NAME.json (user metadata), NAME.preview.png
(after samples) and `modelspec.thumbnail`; read here the way their source (tests/data) reads them."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from lorakit import families
from lorakit.train.loop import Trainer, run
from train_support import config, make_images, one_thread, tiny_model_dir

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)
A1111 = json.loads((Path(__file__).parent / "data" / "a1111_lora_user_metadata.json").read_text())


def _as_a1111_reads(lora: Path, metadata: dict) -> dict:
    """What the Lora page makes of a file, in the steps its source takes (tests/data gives file and commit)."""
    user = json.loads(Path(os.path.splitext(lora)[0] + ".json").read_text(encoding="utf8"))
    path = os.path.splitext(lora)[0]
    previews = [p for ext in ("png", "jpg", "jpeg", "webp", "gif") for p in (f"{path}.{ext}", f"{path}.preview.{ext}")
                if os.path.exists(p)]
    weight = user.get("preferred weight", 0.0)
    prompt = f"<lora:{metadata.get('ss_output_name', lora.stem)}:{weight if weight else 'DEFAULT'}>"
    if user.get("activation text"):
        prompt += " " + user["activation text"]
    version = user.get("sd version")
    if version not in A1111["sd_versions"]["a1111"]:
        version = ("SDXL" if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_") else
                   "SD2" if str(metadata.get("ss_v2", "")) == "True" else "SD1" if metadata else "Unknown")
    return {"user": user, "prompt": prompt, "version": version, "preview": previews[0] if previews else None,
            "slider": float(user.get("preferred weight", 0.0))}


def _metadata(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("a1111")
    model = tiny_model_dir(root, "sd1")
    data = make_images(root / "data")
    return run(config(model, data, root / "s", out=root / "s" / "dog.safetensors", trigger="zqx dog",
                      sample_every=1, sample_steps=1, comment="a test dog", lr=0.5))


def test_sidecar_fields_are_those_a1111_reads(trained):
    result = trained
    lora = Path(result.out)
    user = json.loads(lora.with_suffix(".json").read_text())
    assert set(user) == set(A1111["user_metadata_keys"]["keys"]) >= set(A1111["read_keys"]["keys"])
    assert user == {"description": "a test dog", "sd version": "SD1", "activation text": "zqx dog",
                    "preferred weight": 1.0, "negative text": "", "notes": user["notes"]}
    assert "2 steps" in user["notes"]
    seen = _as_a1111_reads(lora, _metadata(lora))
    assert seen["prompt"] == "<lora:dog:1.0> zqx dog" and seen["version"] == "SD1" and seen["slider"] == 1.0
    assert seen["preview"] == str(lora.with_name("dog.preview.png"))


def test_preview_and_thumbnail_are_the_last_samples_first_image(trained):
    """Samples at steps 1 and 2: the preview is the first cell of step 2's grid (not step 1's)."""
    result = trained
    lora = Path(result.out)
    grid = np.asarray(Image.open(result.run_dir / "samples" / "step-000002.png").convert("RGB"))
    preview = np.asarray(Image.open(lora.with_name("dog.preview.png")).convert("RGB"))
    assert preview.shape == (32, 32, 3) and np.array_equal(preview, grid[:32, :32])  # the grid's first cell
    first = np.asarray(Image.open(result.run_dir / "samples" / "step-000001.png").convert("RGB"))
    assert not np.array_equal(first[:32, :32], preview)
    uri = _metadata(lora)["modelspec.thumbnail"]
    head, _, data = uri.partition(",")
    assert head == "data:image/png;base64"
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert np.array_equal(thumb, preview)  # 32 px: under the 256 px cap, not scaled


def test_without_samples_no_preview_and_no_thumbnail(trained, tmp_path):
    """The same run's calls with no sample image taken (as a run without --sample-every has none)."""
    import shutil

    result = trained
    lora = tmp_path / "cat.safetensors"
    shutil.copy(result.out, lora)
    runner = SimpleNamespace(cfg=SimpleNamespace(out=lora, model="m", trigger=None, comment=None), step=1,
                             spec=families.get("sd1"), last_sample=None)
    assert Trainer._thumbnail(runner) == {}
    Trainer._a1111_files(runner)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.json", "cat.safetensors"]
    seen = _as_a1111_reads(lora, _metadata(lora))
    assert seen["preview"] is None and seen["user"]["activation text"] == ""
    assert seen["prompt"] == "<lora:dog:1.0>"  # the alias: ss_output_name of the copied file


def test_thumbnail_is_scaled_to_256():
    from lorakit.formats.a1111_files import thumbnail_uri

    uri = thumbnail_uri(Image.new("RGB", (1024, 512), (200, 10, 10)))
    im = Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))
    assert im.size == (256, 128) and im.getpixel((5, 5)) == (200, 10, 10)


@pytest.mark.parametrize("family,version", [("sd1", "SD1"), ("sd2", "SD2"), ("sdxl", "SDXL"), ("sd3", "Unknown"),
                                            ("flux", "Unknown"), ("chroma", "Unknown")])
def test_sd_version_per_family(family, version):
    """A member of A1111's SdVersion (and Forge's), and the same as A1111 guesses from lorakit's
    metadata where it guesses right (SD 1.x/2.x/XL)."""
    spec = families.get(family)
    assert spec.a1111_sd_version == version
    assert version in A1111["sd_versions"]["a1111"] and version in A1111["sd_versions"]["forge"]
    if version != "Unknown":
        md = {"ss_base_model_version": spec.base_model_version(False), "ss_v2": str(spec.is_v2)}
        guessed = ("SDXL" if md["ss_base_model_version"].startswith("sdxl_") else
                   "SD2" if md["ss_v2"] == "True" else "SD1")
        assert guessed == version
    assert {f.a1111_sd_version for f in families.all()} <= set(A1111["sd_versions"]["a1111"])
