"""The web UI in a real browser (Debian's headless Chromium driven by Playwright), on the toy
model: the library, Generate with a LoRA slider and PNG info, caption editing, training with
Stop and Resume, and bad paths. Each tab's screenshot is taken; `LORAKIT_UPDATE_SCREENSHOTS=1`
copies them to docs/ (the README shows them)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT = 60_000  # ms; the machine is shared and slow, a step may take a while

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A library with a toy LoRA (trigger `zqx`) and an SDXL one, and a dataset of four captioned images."""
    from lorakit.formats import save_lora
    from lorakit.lora import LoRANetwork
    from lorakit.ui import actions as A
    from train_support import make_images

    root = tmp_path_factory.mktemp("studio")
    loras, data = root / "loras", make_images(root / "data")
    loras.mkdir()
    toy = A.cached_model("toy")  # the server shares this process: Generate finds it loaded
    net = LoRANetwork.create(toy.parts(), rank=4, alpha=4)
    freq = {"8_zqx": {"zqx": 8, "ring": 8, "red": 3}}
    save_lora(loras / "ring.safetensors", net.kohya_modules(),
              {"modelspec.trigger_phrase": "zqx", "ss_tag_frequency": json.dumps(freq)}, family="sd1")
    from test_ui_studio import kohya_file

    kohya_file(loras / "xlstyle.safetensors", context=2048, te2=True,
               metadata={"modelspec.trigger_phrase": "xlstyle", "ss_base_model_version": "sdxl_base_v1-0"})
    return root


@pytest.fixture(scope="module")
def server(folders):
    from lorakit.ui.app import build_app
    from lorakit.ui.studio import Studio

    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studio = Studio(lora_dirs=[folders / "loras"], data_dirs=[folders / "data"], out_dir=folders / "out")
    app = build_app(studio).queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` (or `make browser`) installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(WAIT)
        page.goto(server)
        page.wait_for_selector("#lib-cards button.thumbnail-item")
        page.shots = tmp_path_factory.mktemp("shots")
        yield page
        browser.close()


def box(page, elem_id):
    """A textbox's text field (gradio renders one as a textarea or an input)."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=file]):not([type=number])"
                        f":not([type=range]):not([type=checkbox])").first


def fill_settled(page, elem_id, text, tries=10):
    """Fill a textbox that a panel being opened may re-render once more with its default value."""
    for _ in range(tries):
        box(page, elem_id).fill(text)
        page.wait_for_timeout(300)
        if box(page, elem_id).input_value() == text:
            return
    raise AssertionError(f"#{elem_id} would not keep {text!r}")


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def tab(page, name):
    page.get_by_role("tab", name=name, exact=True).click()


def shot(page, name):
    """A 1280×800 screenshot of the tab; copied to docs/ with LORAKIT_UPDATE_SCREENSHOTS=1."""
    from PIL import Image

    path = page.shots / f"ui-{name}.png"
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path))
    with Image.open(path) as im:
        assert im.size == (1280, 800) and len(im.convert("L").getcolors(1 << 16)) > 8  # not blank
    if os.environ.get("LORAKIT_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        Image.open(path).convert("RGB").quantize(64).save(DOCS / path.name, optimize=True)


def error_toast(page, text):
    toast = page.locator("[data-testid=toast-text]", has_text=text)
    toast.first.wait_for()
    message = toast.first.inner_text()
    # close what is still there (a toast may already be fading out: no waiting for it)
    page.locator("[data-testid=toast-close]").evaluate_all("els => els.forEach(e => e.click())")
    return message


def wait_text(page, selector, text, timeout=WAIT):
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                           arg=[selector, text], timeout=timeout)


def wait_value(page, elem_id, text, timeout=WAIT):
    """Until the textbox's value contains TEXT (a textarea's value is not in innerText)."""
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.value || '').includes(t)",
                           arg=[f"#{elem_id} textarea", text], timeout=timeout)


def test_library_lists_the_loras_with_their_trigger_words(page):
    wait_text(page, "#lib-count", "2 of 2 LoRAs")
    captions = page.locator("#lib-cards .caption-label").all_inner_texts()
    assert captions[0].startswith("ring · sd1 · kohya · r4/α4") and captions[0].endswith("zqx, ring, red")
    assert captions[1].startswith("xlstyle · sdxl · kohya · r4") and "xlstyle" in captions[1]
    box(page, "lib-search").fill("zqx")
    box(page, "lib-search").press("Enter")
    wait_text(page, "#lib-count", "1 of 2 LoRAs")
    assert page.locator("#lib-cards .caption-label").all_inner_texts() == [captions[0]]
    box(page, "lib-search").fill("")
    box(page, "lib-search").press("Enter")
    wait_text(page, "#lib-count", "2 of 2 LoRAs")


PROMPT = "a red circle on a white background <lora:ring:0.6>"


def test_card_to_generate_slider_images_and_png_info(page, folders):
    page.locator("#lib-cards button.thumbnail-item").nth(0).click()
    wait_text(page, "#lib-details", "added to Generate")
    tab(page, "Generate")
    page.wait_for_selector("#lora-slider-0")
    assert box(page, "gen-prompt").input_value().endswith("<lora:ring:1>")
    assert "ring" in page.inner_text("#lora-slider-0")
    page.fill("#lora-slider-0 input[type=range]", "0.6")
    page.wait_for_function("document.querySelector('#gen-prompt textarea').value.endsWith('<lora:ring:0.6>')")
    page.click("#gen-go")
    page.wait_for_function("document.querySelectorAll('#gen-gallery img').length >= 2")
    info = box(page, "gen-info").input_value()
    assert info.startswith(PROMPT) and 'Lora hashes: "ring: ' in info
    assert "Seed: 0" in info and "Model: toy" in info
    saved = sorted((folders / "out").glob("*.png"))
    assert len(saved) == 3  # two images and their grid, each with its PNG info

    # the PNG-info round trip: drop the saved image and get its settings back
    box(page, "gen-prompt").fill("something else")
    page.locator("#gen-pnginfo input[type=file]").set_input_files(str(saved[0]))
    expect(box(page, "gen-prompt")).to_have_value(PROMPT)
    assert "Sampler: Euler a" in box(page, "gen-info").input_value()

    # the strength sweep: same seed, one image per strength
    page.get_by_text("Strength sweep (same seed, one image per strength)").click()
    fill_settled(page, "gen-strengths", "0, 1")
    page.click("#gen-sweep")
    page.wait_for_function("[...document.querySelectorAll('#gen-gallery .caption-label')].map(e => e.innerText)"
                           ".join('|') === 'ring 0|ring 1'")
    assert box(page, "gen-info").input_value().count("<lora:ring:") == 2
    shot(page, "generate")

    # tags typed by hand are checked too: another family's LoRA, a name not in the library
    for tag, says in (("<lora:xlstyle:1>", "xlstyle is a LoRA for sdxl; the loaded model is sd1"),
                      ("<lora:nope:1>", "no LoRA named 'nope' in the library")):
        box(page, "gen-prompt").fill(f"a red circle {tag}")
        page.click("#gen-go")
        assert says in error_toast(page, says.split(";")[0])

    # a LoRA for another family is marked on its card and refused
    tab(page, "Library")
    page.click("#lib-refresh")
    page.wait_for_function("[...document.querySelectorAll('#lib-cards .caption-label')]"
                           ".some(e => e.innerText.includes('not for the loaded sd1 model'))")
    page.locator("#lib-cards button.thumbnail-item").nth(1).click()
    assert "xlstyle is a LoRA for sdxl; the loaded model is sd1" in error_toast(page, "xlstyle")

    # a preview drawn on request lands next to the file, where A1111 looks for it
    page.locator("#lib-cards button.thumbnail-item").nth(0).click()
    wait_text(page, "#lib-details", "<lora:ring:")
    page.click("#lib-preview")
    wait_text(page, "#lib-details", "ring.preview.png")
    assert (folders / "loras" / "ring.preview.png").is_file()


def test_caption_edit_is_saved_to_the_file(page, folders):
    tab(page, "Dataset")
    page.click("#ds-open")
    wait_text(page, "#ds-report", "4 images")
    report = page.inner_text("#ds-report")  # at the default 512 px the 32 px images are flagged
    assert "The trainer would refuse" in report and "32×32 is too small for its 512×512 bucket" in report
    page.fill("#ds-resolution input", "32")
    page.click("#ds-open")
    wait_text(page, "#ds-report", "No problems found")
    page.locator("#ds-gallery button.thumbnail-item").nth(2).click()
    page.wait_for_function("document.querySelector('#ds-image textarea, #ds-image input').value.endsWith('img2.png')")
    assert box(page, "ds-caption").input_value() == "a square, colour 2, plain background"
    box(page, "ds-caption").fill("zqx, a ring, red")
    page.click("#ds-save")
    wait_text(page, "#ds-saved", "saved")
    assert (folders / "data" / "img2.txt").read_text() == "zqx, a ring, red\n"
    page.wait_for_function("[...document.querySelectorAll('#ds-gallery .caption-label')]"
                           ".some(e => e.innerText === 'zqx, a ring, red')")
    shot(page, "dataset")


def test_training_shows_the_loss_stops_resumes_and_lands_in_the_library(page, folders):
    page.click("#ds-use")
    tab(page, "Train")
    page.wait_for_function("document.querySelector('#train-data textarea, #train-data input').value.endsWith('data')")
    page.get_by_text("Samples, saving, more options").click()
    extra = box(page, "train-extra")
    extra.wait_for()
    settings = {"train-out": "studio-lora.safetensors",
                "train-extra": "resolution = 32\nbucket_step = 16\nrank = 4\nlr = 0.001\nsample_every = 20\n"
                               "sample_steps = 4\n"
                               "tensorboard = false\nprogress = false\nsave_dtype = 'fp32'"}
    page.fill("#train-steps input", "40")
    for elem_id, value in settings.items():
        box(page, elem_id).fill(value)
    for elem_id, value in settings.items():  # still there once the accordion has rendered
        expect(box(page, elem_id)).to_have_value(value)
    expect(page.locator("#train-steps input")).to_have_value("40")
    page.click("#train-go")
    page.wait_for_function("document.querySelector('#train-loss img') || "  # the curve, once steps are done
                           "/failed|Error/.test(document.querySelector('#train-status textarea').value)"
                           " || document.querySelector('[data-testid=toast-text]')")
    toasts = page.locator("[data-testid=toast-text]").all_inner_texts()
    status = box(page, "train-status").input_value()
    assert not toasts and "failed" not in status, (toasts, status)
    page.click("#train-stop")
    wait_value(page, "train-status", "stopped at step")
    status = box(page, "train-status").input_value()
    stopped_at = int(status.split("stopped at step ")[1].split(";")[0])
    assert 0 < stopped_at < 40
    run_dir = folders / "loras" / "studio-lora-run"
    assert any(run_dir.glob("state-*")) and not (folders / "loras" / "studio-lora.safetensors").exists()
    page.click("#train-resume-go")
    wait_value(page, "train-status", "done in")
    status = box(page, "train-status").input_value()
    assert "step 40/40" in status and "in the library as studio-lora" in status
    assert (folders / "loras" / "studio-lora.safetensors").is_file()
    page.wait_for_selector("#train-samples img")  # the latest sample grid (step 40), shown as a picture
    assert (folders / "loras" / "studio-lora-run" / "samples" / "step-000040.png").is_file()
    shot(page, "train")
    tab(page, "Library")
    wait_text(page, "#lib-count", "3 of 3 LoRAs")
    captions = page.locator("#lib-cards .caption-label").all_inner_texts()
    assert any(c.startswith("studio-lora · sd1 · kohya · r4") for c in captions)
    page.locator("#lib-cards button.thumbnail-item").nth(captions.index(
        next(c for c in captions if c.startswith("studio-lora")))).click()
    wait_text(page, "#lib-details", "added to Generate")
    shot(page, "library")


def test_bad_paths_give_messages_and_the_server_keeps_serving(page, folders):
    tab(page, "Tools")
    for bad in ("../../etc/passwd", "/etc/passwd"):
        box(page, "tools-inspect-file").fill(bad)
        page.click("#tools-inspect")
        assert "outside the folders this page may use" in error_toast(page, "outside")
    box(page, "tools-inspect-file").fill("nothing-here.safetensors")
    page.click("#tools-inspect")
    assert "no such file" in error_toast(page, "no such file")
    tab(page, "Dataset")
    box(page, "ds-folder").fill("/etc")
    page.click("#ds-open")
    assert "dataset folder: outside" in error_toast(page, "outside")
    tab(page, "Tools")  # still serving: a good path works after the bad ones
    box(page, "tools-inspect-file").fill("ring.safetensors")
    page.click("#tools-inspect")
    wait_text(page, "#tools-report", '"family": "sd1"')
    shot(page, "tools")


def test_settings_add_a_library_folder(page, folders):
    import shutil

    more = folders / "more-loras"
    more.mkdir()
    shutil.copy(folders / "loras" / "ring.safetensors", more / "ring-copy.safetensors")
    tab(page, "Settings")
    box(page, "settings-lora").fill(str(folders / "nowhere"))
    page.click("#settings-apply")
    assert "not an existing folder" in error_toast(page, "not an existing folder")
    box(page, "settings-lora").fill(str(more))
    page.click("#settings-apply")
    wait_text(page, "#settings-folders", str(more))
    tab(page, "Library")
    wait_text(page, "#lib-count", "4 of 4 LoRAs")
    assert any(c.startswith("ring-copy · sd1") for c in page.locator("#lib-cards .caption-label").all_inner_texts())
