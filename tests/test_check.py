"""`lorakit check`: each tool's verdict on each key equals what the tool's source does with it
(tests/data/check_rules.json: key patterns, the tool's file and commit, and the rule read there),
and diffusers' verdict equals a real `load_lora_weights` run, layer by layer and scale by scale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from check_support import random_modules, real_diffusers_load, tiny, write

from lorakit.check import a1111, check, comfyui, diffusers, filekeys, forge, kohya, musubi, universe
from lorakit.cli import main
from lorakit.formats import save_lora

RULES = json.loads((Path(__file__).parent / "data" / "check_rules.json").read_text())
TOOLS = {"comfyui": comfyui, "forge": forge, "a1111": a1111, "kohya": kohya, "musubi": musubi}
RANK = 4


def _tensors(stem: str, suffixes: list[str], given: dict | None = None) -> dict:
    """Random tensors of plausible shapes; `given` {suffix: shape list, or a number for a scalar}."""
    shapes = {"up": (8, RANK), "down": (RANK, 8), ".alpha": ()}
    out = {}
    for suffix in suffixes:
        key = stem + suffix
        if suffix in (given or {}):
            v = given[suffix]
            out[key] = torch.randn(*v) if isinstance(v, list) else torch.tensor(float(v))
        elif suffix == ".alpha":
            out[key] = torch.tensor(2.0)
        elif "hada_w1_b" in suffix or "hada_w2_b" in suffix:
            out[key] = torch.randn(RANK, 8)
        elif "hada" in suffix:
            out[key] = torch.randn(8, RANK)
        elif any(s in suffix for s in ("down", "lora_A")):
            out[key] = torch.randn(*shapes["down"])
        else:
            out[key] = torch.randn(*shapes["up"])
    return out


@pytest.mark.parametrize("row", RULES, ids=[f"{r['tool']}-{r['family']}-{i}" for i, r in enumerate(RULES)])
def test_each_tools_rule_as_its_source_has_it(row, tmp_path):
    tensors = {}
    for stem in row["stems"]:
        tensors.update(_tensors(stem, row["suffixes"], row.get("given")))
    fk = filekeys.read(write(tmp_path / "one.safetensors", tensors))
    u = universe.from_pipeline(row["family"], tiny(row["family"]))
    outcome = TOOLS[row["tool"]].load(fk, u)
    if row["expect"] == "refused":
        assert outcome.refused and not outcome.applied, (row["rule"], outcome)
        return
    applied = [s for s in row["stems"] if s in outcome.applied]
    if row["expect"] == "applied":
        assert applied == row["stems"], (row["rule"], row["source"], outcome.skipped[:3])
        assert all(outcome.applied[s] == pytest.approx(row["scale"]) for s in applied), outcome.applied
        assert outcome.skipped == []
    else:
        assert applied == [] and len(outcome.skipped) == len(tensors), (row["rule"], row["source"], outcome)


def _counts(report) -> dict[str, int | None]:
    return {r.name: (r.applied if r.runs else None) for r in report.results}


def _diffusers_matches_real(family, path, report):
    """diffusers' prediction (a meta-device run) equals a real CPU load, layer by layer and scale by scale."""
    u = universe.from_pipeline(family, tiny(family))
    predicted, _ = diffusers.adapted(u, path)
    truth = real_diffusers_load(family, path)
    live = {(p, n.removeprefix("text_model.")) for p, n in truth}
    assert {(p, n.removeprefix("text_model.")) for p, n in predicted} == live
    for layer, scale in truth.items():
        assert predicted[layer] == pytest.approx(scale)
    result = next(r for r in report.results if r.name == "diffusers")
    return result, truth


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_lorakit_files_of_every_layout(family, tmp_path):
    """kohya files: every tool applies every module as meant; diffusers files: diffusers all of
    them, ComfyUI exactly the modules whose diffusers path has no `.to_` (its key map spells
    those `.processor.to_`), A1111 and sd-scripts none (their names are kohya's)."""
    mods = random_modules(family)
    n = len(mods)
    kohya_file = save_lora(tmp_path / "k.safetensors", mods, {}, family=family, format="kohya", dtype=None)
    report = check(kohya_file, family, pipe=tiny(family))
    assert report.ok and report.modules == n
    assert _counts(report) == {"ComfyUI": n, "Forge": n, "A1111": n, "diffusers": n, "kohya sd-scripts": n,
                               "musubi-tuner": None}
    result, truth = _diffusers_matches_real(family, kohya_file, report)
    assert len(truth) == n and result.applied == n and not result.strength

    diff_file = save_lora(tmp_path / "d.safetensors", mods, {}, family=family, format="diffusers", dtype=None)
    report = check(diff_file, family, pipe=tiny(family))
    stems = filekeys.read(diff_file).modules()
    no_to = sum(1 for s in stems if not (s.startswith("unet.") and ".to_" in s))
    assert _counts(report) == {"ComfyUI": no_to, "Forge": no_to, "A1111": 0, "diffusers": n,
                               "kohya sd-scripts": 0, "musubi-tuner": None}
    assert 0 < no_to < n and not report.ok
    result, truth = _diffusers_matches_real(family, diff_file, report)
    assert len(truth) == n and not result.strength


@pytest.mark.slow
def test_flux_and_sd3_files(tmp_path):
    """Flux.1 in diffusers' layout: ComfyUI and diffusers apply all but the T5 modules
    (`text_encoder_2.*`: neither maps them), sd-scripts and musubi-tuner none; Flux.1 in kohya's
    layout: musubi-tuner applies the transformer modules only. SD3 in sd-scripts' layout: diffusers
    attaches nothing. diffusers' verdicts equal its real runs."""
    mods = random_modules("flux")
    path = save_lora(tmp_path / "fd.safetensors", mods, {}, family="flux", format="diffusers", dtype=None)
    stems = filekeys.read(path).modules()
    n, t5 = len(stems), sum(1 for s in stems if s.startswith("text_encoder_2."))
    report = check(path, "flux", pipe=tiny("flux"))
    assert 0 < t5 < n
    assert _counts(report) == {"ComfyUI": n - t5, "Forge": n - t5, "A1111": None, "diffusers": n - t5,
                               "kohya sd-scripts": 0, "musubi-tuner": 0}
    result, truth = _diffusers_matches_real("flux", path, report)
    assert len(truth) > 0

    path = save_lora(tmp_path / "fk.safetensors", mods, {}, family="flux", format="kohya", dtype=None)
    report = check(path, "flux", pipe=tiny("flux"))
    unet = sum(1 for s in mods if s.startswith("lora_unet_"))
    assert _counts(report)["musubi-tuner"] == unet < len(mods)
    assert _counts(report)["ComfyUI"] == _counts(report)["kohya sd-scripts"] == len(mods)

    mods = random_modules("sd3")
    path = save_lora(tmp_path / "s.safetensors", mods, {}, family="sd3", format="kohya", dtype=None)
    report = check(path, "sd3", pipe=tiny("sd3"))
    counts = _counts(report)
    assert counts["ComfyUI"] == counts["kohya sd-scripts"] == len(mods) and counts["diffusers"] == 0
    _diffusers_matches_real("sd3", path, report)


# (family, layout) → {tool: the stems it applies, by the rule read in its source}; T5 stems are
# `text_encoder_2/3.*` (diffusers), `lora_te3_`/`lora_te2_` (kohya/OneTrainer) or `…t5xxl…` (ComfyUI)
def _t5(stem: str) -> bool:
    return stem.startswith(("text_encoder_3.", "lora_te3_")) or "t5xxl" in stem or ".block." in stem \
        or "_encoder_block_" in stem


DIT_LAYOUTS = {
    ("flux", "comfyui"): {"ComfyUI": lambda s: True, "kohya sd-scripts": lambda s: False},
    ("flux", "onetrainer"): {"ComfyUI": lambda s: True, "kohya sd-scripts": lambda s: s.startswith("lora_te1_"),
                             "musubi-tuner": lambda s: False},
    ("sd3", "diffusers"): {"ComfyUI": lambda s: not _t5(s), "diffusers": lambda s: not _t5(s),
                           "kohya sd-scripts": lambda s: False},
    ("sd3", "comfyui"): {"ComfyUI": lambda s: True, "kohya sd-scripts": lambda s: False},
    ("sd3", "onetrainer"): {"ComfyUI": lambda s: True,
                            "kohya sd-scripts": lambda s: s.startswith(("lora_te1_", "lora_te2_", "lora_te3_"))},
    ("chroma", "kohya"): {"ComfyUI": lambda s: not _t5(s), "kohya sd-scripts": lambda s: True},
    ("chroma", "diffusers"): {"ComfyUI": lambda s: not _t5(s), "diffusers": lambda s: not _t5(s)},
    ("chroma", "comfyui"): {"ComfyUI": lambda s: True, "kohya sd-scripts": lambda s: False},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DIT_LAYOUTS), ids=[f"{f}-{l}" for f, l in DIT_LAYOUTS])
def test_dit_layouts_lorakit_writes(case, tmp_path):
    """Every layout lorakit writes for SD3, Flux.1 and Chroma: each tool applies the modules its
    source's key map holds (ComfyUI maps T5 of a family with CLIP-L only as lora_te2_/lora_te3_ and
    with T5 alone as lora_te1_; neither it nor diffusers reads diffusers-spelled T5 keys)."""
    family, layout = case
    path = save_lora(tmp_path / "f.safetensors", random_modules(family), {}, family=family, format=layout,
                     dtype=None)
    stems = filekeys.read(path).modules()
    report = check(path, family, pipe=tiny(family))
    counts = _counts(report)
    for tool, applies in DIT_LAYOUTS[case].items():
        assert counts[tool] == sum(1 for s in stems if applies(s)), (tool, report.text())
    assert any(_t5(s) for s in stems) or family == "flux"


def test_other_trainers_files(tmp_path):
    """Files as other trainers write them, made with their key rules: diffusers' old attention-
    processor file (`…attn1.processor.to_q_lora.down.weight`, `unet.save_attn_procs`) and a LyCORIS
    LoHa (`hada_w1_a`…): the verdicts follow each tool's rules; diffusers' equals its real run."""
    mods = random_modules("sd1")
    attn = {}
    for name, t in mods.items():
        if name.startswith("lora_unet_") and name.endswith(("_to_q", "_to_k", "_to_v", "_to_out_0")):
            from lorakit.formats.paths import kohya_to_path

            _, path = kohya_to_path(name)
            head, proj = path.rsplit(".", 1) if not path.endswith("to_out.0") else (path[:-len(".to_out.0")], "to_out")
            attn[f"{head}.processor.{proj}_lora.down.weight"] = t["lora_down.weight"]
            attn[f"{head}.processor.{proj}_lora.up.weight"] = t["lora_up.weight"]
    proc = write(tmp_path / "procs.safetensors", attn)
    n = len(attn) // 2
    report = check(proc, "sd1", pipe=tiny("sd1"))
    counts = _counts(report)
    assert counts["ComfyUI"] == n and counts["A1111"] == 0 and counts["kohya sd-scripts"] == 0
    result, truth = _diffusers_matches_real("sd1", proc, report)
    assert result.applied == len(truth)

    loha = {}
    for name, t in list(mods.items())[:6]:
        out_f, in_f = t["lora_up.weight"].shape[0], t["lora_down.weight"].shape[1]
        loha.update({f"{name}.hada_w1_a": torch.randn(out_f, 2), f"{name}.hada_w1_b": torch.randn(2, in_f),
                     f"{name}.hada_w2_a": torch.randn(out_f, 2), f"{name}.hada_w2_b": torch.randn(2, in_f),
                     f"{name}.alpha": torch.tensor(1.0)})
    report = check(write(tmp_path / "loha.safetensors", loha), "sd1", pipe=tiny("sd1"))
    assert _counts(report) == {"ComfyUI": 6, "Forge": 6, "A1111": 6, "diffusers": 0, "kohya sd-scripts": 0,
                               "musubi-tuner": None}


def _damaged(kind: str, mods: dict) -> tuple[dict, str]:
    """A kohya state dict with one kind of damage, and the module it hits."""
    state = {f"{n}.{k}": v for n, t in mods.items() for k, v in t.items()}
    victim = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert victim in mods
    if kind == "renamed block":
        new = victim.replace("down_blocks_0", "down_blocks_7")
    elif kind == "wrong prefix":
        new = victim.replace("lora_unet_", "lora_unet2_")
    else:
        new = victim
    if kind == "dropped alpha":
        del state[f"{victim}.alpha"]
    elif kind == "mixed layout":  # one module in diffusers' PEFT spelling
        from lorakit.formats.paths import kohya_to_path

        _, path = kohya_to_path(victim)
        state[f"unet.{path}.lora_A.weight"] = state.pop(f"{victim}.lora_down.weight")
        state[f"unet.{path}.lora_B.weight"] = state.pop(f"{victim}.lora_up.weight")
        del state[f"{victim}.alpha"]
    else:
        for sub in ("lora_down.weight", "lora_up.weight", "alpha"):
            state[f"{new}.{sub}"] = state.pop(f"{victim}.{sub}")
    return state, victim


@pytest.mark.parametrize("kind", ["renamed block", "wrong prefix", "dropped alpha", "mixed layout"])
def test_damaged_files(kind, tmp_path):
    """One damaged module among n: the rule tools skip exactly it (a dropped alpha: none skip it,
    and with alpha 2 of rank 4 elsewhere, lorakit means scale 1 there as kohya's tools do, while
    diffusers applies the file's most common alpha to it; a mixed layout: diffusers keeps the one
    PEFT-spelled module and drops the rest); diffusers' verdict equals its real run."""
    mods = random_modules("sd1")
    n = len(mods)
    state, victim = _damaged(kind, mods)
    path = write(tmp_path / "damaged.safetensors", state)
    report = check(path, "sd1", pipe=tiny("sd1"))
    counts = _counts(report)
    result, truth = _diffusers_matches_real("sd1", path, report)
    if kind == "dropped alpha":
        assert counts == {"ComfyUI": n, "Forge": n, "A1111": n, "diffusers": n, "kohya sd-scripts": n,
                          "musubi-tuner": None}
        assert [s for s, _, _ in result.strength] == [victim]
        assert result.strength[0][1:] == (pytest.approx(0.5), pytest.approx(1.0))
        assert all(not r.strength for r in report.results if r.name != "diffusers")
    elif kind == "mixed layout":
        assert counts["A1111"] == n - 1 and counts["kohya sd-scripts"] == n - 1
        assert counts["ComfyUI"] == n - 1  # unet.….attn2.to_k: ComfyUI maps `.processor.to_k` only
        # diffusers reads a file with any PEFT key as PEFT and drops every kohya key, without a word
        assert counts["diffusers"] == len(truth) == 1
    else:
        assert counts == {"ComfyUI": n - 1, "Forge": n - 1, "A1111": n - 1, "diffusers": len(truth),
                          "kohya sd-scripts": n - 1, "musubi-tuner": None}
    assert not report.ok


def test_cli_exit_codes_and_fix(tmp_path, capsys):
    mods = random_modules("sd1")
    good = save_lora(tmp_path / "k.safetensors", mods, {}, family="sd1", format="kohya", dtype=None)
    diff = save_lora(tmp_path / "d.safetensors", mods, {}, family="sd1", format="diffusers", dtype=None)
    # against the real-size SD1 base, a toy-width file fails diffusers' shape check only
    assert main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    assert "A1111: 84/84 modules, strength as meant" in out.replace(str(len(mods)), "84")
    # against the model it was made for (a diffusers folder: only its configs are read), all of it
    tiny("sd1").save_pretrained(tmp_path / "tiny-sd1")
    assert main(["check", str(good), "--model", str(tmp_path / "tiny-sd1")]) == 0
    assert "every tool applies every module as meant" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "none.safetensors")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {tmp_path / 'none.safetensors'}: no such file"]
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    assert main(["check", str(tmp_path / "bad.safetensors")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    write(tmp_path / "model.safetensors", {"model.diffusion_model.out.2.weight": torch.zeros(4, 4)})
    assert main(["check", str(tmp_path / "model.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'model.safetensors'}: not a LoRA file: no LoRA "
                                               "keys found (keys like model.diffusion_model.out.2.weight)")
    fixed = tmp_path / "fixed.safetensors"
    assert main(["check", "--fix", str(diff), "--for", "a1111", "--out", str(fixed)]) == 0
    assert capsys.readouterr().out.strip() == f"{fixed}: A1111: {len(mods)}/{len(mods)} modules, strength as meant"
    report = check(fixed, "sd1", pipe=tiny("sd1"))
    assert report.ok
    assert main(["check", "--fix", str(diff), "--for", "musubi", "--out", str(fixed)]) == 2
    capsys.readouterr()
    # convert prints one check line per tool after the file it wrote
    assert main(["convert", str(good), "--to", "diffusers", "--out", str(tmp_path / "c.safetensors")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines[1:]] == ["ComfyUI", "Forge", "A1111", "diffusers",
                                                                  "kohya sd-scripts", "musubi-tuner"]
    assert lines[3].startswith("check: A1111: 0/")


@pytest.mark.slow
def test_train_prints_the_check_of_what_it_wrote(tmp_path, capsys):
    """After writing, `train` prints one check line per tool, against the model it trained on."""
    from train_support import make_images, tiny_model_dir

    model = tiny_model_dir(tmp_path, "sd1")
    data = make_images(tmp_path / "photos")
    out = tmp_path / "lora.safetensors"
    code = main(["train", "--model", str(model), "--data", str(data), "--out", str(out), "--resolution", "32",
                 "--bucket-step", "8", "--rank", "4", "--steps", "1", "--no-progress", "--no-tensorboard",
                 "--save-dtype", "fp32"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and lines[-1] == str(out)
    checks = [line for line in lines if line.startswith("check: ")]
    n = len(filekeys.read(out).modules())
    assert checks[:5] == [f"check: {t}: {n}/{n} modules, strength as meant"
                          for t in ("ComfyUI", "Forge", "A1111", "diffusers", "kohya sd-scripts")]
    assert checks[5] == "check: musubi-tuner: does not run this model family"
