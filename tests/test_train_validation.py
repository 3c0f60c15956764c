"""Validation: images held out of training, a validation loss that repeats bit for bit, and
--keep-best: the best file, its metadata and the report agree, and a resumed run keeps its best."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.data import Subset, holdout, scan
from lorakit.train import best
from lorakit.train.config import TrainConfig
from lorakit.train.loop import Trainer
from lorakit.train.validation import validation_loss
from evaluate_support import evaluation_world
from train_support import config, make_images, one_thread

_threads = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    return evaluation_world(root, held=make_images(root / "held", sizes=((32, 32), (40, 40)), seed=5))


def _trained(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.run()
    return trainer


def _evaluated(setup, out, **kw):
    return config(setup["model"], setup["data"], out, trigger="zzt", sample_steps=2, evaluate_n=1,
                  evaluate_prompts=setup["prompts"], clip_model=str(setup["clip"]), dino_model=str(setup["dino"]), **kw)


def test_held_out_images_never_train_and_the_seed_picks_them(setup, tmp_path):
    t = _trained(config(setup["model"], setup["data"], tmp_path, steps=1, validation_split=0.5))
    held = {it.path.name for it in t.data.validation}
    train = {it.path.name for it in t.data.instance}
    assert len(held) == 2 and held.isdisjoint(train) and held | train == {f"img{i}.png" for i in range(4)}
    seen = {s.item.path.name for m in range(16) for s in t.data.batch(m)[1]}
    assert seen == train  # 16 batches of one image: every training image, never a held-out one
    items = scan(Subset(setup["data"]))
    assert {it.path.name for it in holdout.split(items, 0.5, 0)} == held  # the same seed, the same images
    assert len({tuple(it.path.name for it in holdout.split(items, 0.5, s)) for s in range(6)}) > 1


def test_validation_loss_repeats_bit_for_bit_and_is_the_documented_mean(setup, tmp_path):
    """Two evaluations of the same weights give the same float; the figure is the plain MSE of ε at the
    timesteps 200, 400, 600, 800 (sd-scripts' spread), computed here again by hand from DDPM's formula."""
    t = _trained(config(setup["model"], setup["data"], tmp_path, steps=2, validation_data=setup["held"], lr=1e-2,
                        train_text_encoder=False))
    a, b = validation_loss(t), validation_loss(t)
    assert a == b and a > 0

    from lorakit.data import Sample, mix_seed

    ac = t.noise_scheduler.alphas_cumprod
    steps = torch.tensor([200, 400, 600, 800])
    errors = []
    t.network.eval()
    with torch.no_grad():
        for i, item in enumerate(t.data.validation):
            x = t._latents([Sample(item, t.data.placements[item.path], item.caption, False)]).float().repeat(4, 1, 1, 1)
            eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(mix_seed(0, i, 0x7A11D)))
            noisy = ac[steps].sqrt().view(-1, 1, 1, 1) * x + (1 - ac[steps]).sqrt().view(-1, 1, 1, 1) * eps
            cond = t._text([item.caption] * 4)
            pred = t.spec.predict(t.model.unet, noisy, steps, cond, {}, torch.float32)
            errors += ((pred - eps) ** 2).flatten(1).mean(1).tolist()
    assert len(errors) == 8 and a == pytest.approx(sum(errors) / 8, rel=1e-5)

    module = next(m for m in t.network.modules() if hasattr(m, "lora_up"))
    kept = module.lora_up.weight.detach().clone()
    with torch.no_grad():
        module.lora_up.weight.add_(0.05)
        moved = validation_loss(t)
        module.lora_up.weight.copy_(kept)
    assert moved != a and validation_loss(t) == a


def test_validating_during_training_changes_no_trained_weight(setup, tmp_path):
    common = dict(steps=2, lr=1e-2)
    plain = _trained(_evaluated(setup, tmp_path / "plain", **common))
    checked = _trained(_evaluated(setup, tmp_path / "checked", validation_data=setup["held"], evaluate_every=1,
                                  **common))
    a, b = load_file(plain.cfg.out), load_file(checked.cfg.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    board = json.loads((checked.run_dir / best.BOARD_FILE).read_text())
    assert [r["step"] for r in board["rows"]] == [1, 2] and all(r["val_loss"] > 0 for r in board["rows"])


def test_flow_matching_validation_uses_fixed_sigmas(tmp_path):
    """Flux: the four points 0.2 … 0.8 of the schedule, shifted as training shifts them, every time."""
    from flux_support import tiny_flux_pipeline

    tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    data = make_images(tmp_path / "data", sizes=((32, 32), (32, 32)))
    t = _trained(config(tmp_path / "flux", data, tmp_path, steps=1, validation_split=0.5, trigger="sks"))
    from lorakit.train.validation import schedule_points

    u = schedule_points(t)
    assert u.tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8])
    _, sigmas = t.flow.at(u, 0.5)
    assert torch.equal(sigmas, t.flow.at(u, 0.5)[1]) and (sigmas.diff() < 0).all()
    assert 0 < sigmas.min() < sigmas.max() < 1
    a, b = validation_loss(t), validation_loss(t)
    assert a == b and a > 0


def _md(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_keep_best_file_metadata_and_report_agree_and_resume_keeps_it(setup, tmp_path):
    common = dict(validation_split=0.25, evaluate_every=2, save_every=2, keep_best="drift", lr=1e-2)
    first = _trained(_evaluated(setup, tmp_path, steps=4, **common))
    run_dir = first.run_dir
    board = json.loads((run_dir / best.BOARD_FILE).read_text())
    rows = board["rows"]
    assert [r["step"] for r in rows] == [2, 4] and board["metric"] == "drift"
    lowest = min(r["drift"] for r in rows)
    assert board["best"] == next(r["step"] for r in rows if r["drift"] == lowest)  # the first to reach it
    best_file = best.best_path(first.cfg.out)
    assert best_file.name == "lora.best.safetensors"
    md = _md(best_file)
    winner = next(r for r in rows if r["step"] == board["best"])
    assert int(md["lorakit_best_step"]) == board["best"] and md["lorakit_best_metric"] == "drift"
    assert json.loads(md["lorakit_best_scores"]) == winner
    # the weights are the winning step's: the checkpoint written at that step (the final file at step 4)
    same_step = first.cfg.out if board["best"] == 4 else run_dir / f"lora-{board['best']:06d}.safetensors"
    a, b = load_file(best_file), load_file(same_step)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the last report holds the board, and its page marks the same row
    report = json.loads((run_dir / "evaluate" / "step-000004" / "report.json").read_text())
    assert report["checkpoints"]["best"] == board["best"] and report["checkpoints"]["rows"] == rows
    html = (run_dir / "evaluate" / "step-000004" / "report.html").read_text()
    marked = re.findall(r"<tr class=best><td>(\d+)</td>", html)
    assert marked == [str(board["best"])] and "★ best" in html and f"step {board['best']}: the lowest drift" in html

    before = best_file.read_bytes()
    resumed = _trained(_evaluated(setup, tmp_path, steps=6, resume=run_dir, **common))
    assert resumed.resumed_from == 4
    after = json.loads((run_dir / best.BOARD_FILE).read_text())
    assert [r["step"] for r in after["rows"]] == [2, 4, 6] and after["rows"][:2] == rows
    # the drift grows with training here (step 2 wins), so the resumed run's step 6 must not displace it
    assert board["best"] == 2 and after["rows"][2]["drift"] > winner["drift"]
    assert after["best"] == 2 and best_file.read_bytes() == before  # the best so far stays, file and all


def test_a_resumed_board_forgets_steps_after_its_state(tmp_path):
    board = best.Board("val-loss")
    for step, loss in ((2, 0.5), (4, 0.3), (6, 0.1)):
        board.add(best.Scores(step, loss))
    assert board.best == 6
    board.save(tmp_path)
    back = best.Board.load(tmp_path, "val-loss", up_to_step=4)
    assert [r.step for r in back.rows] == [2, 4] and back.best == 4
    assert back.add(best.Scores(5, 0.3)) and back.best == 5  # a tie goes to the later step
    assert not back.add(best.Scores(6, 0.35)) and back.best == 5
    assert back.add(best.Scores(7, 0.2)) and back.best == 7
    assert best.Board.load(tmp_path, "val-loss", up_to_step=0).rows == []  # a fresh run starts a new board


def test_combined_is_fidelity_minus_drift_with_ties_to_the_later_step():
    a = best.Scores(2, 0.30, fidelity=0.80, drift=0.10, measure="DINO", combined=0.70)
    b = best.Scores(4, 0.40, fidelity=0.90, drift=0.20, measure="DINO", combined=0.70)  # tied, higher loss
    c = best.Scores(6, 0.20, fidelity=0.95, drift=0.40, measure="DINO", combined=0.55)
    board = best.Board("combined")
    assert [board.add(s) for s in (a, b, c)] == [True, True, False] and board.best == 4
    assert "0.9 − 0.2 = 0.7" in board.why() and "ties go to the later step" in board.why()
    assert best.Board("combined", [a, b, c])._argbest() == 4  # a board read back picks alike
    assert best.rank_key(best.Scores(8, 0.1), "combined") == (-0.1,)  # no fidelity measure: the loss alone
    assert best.rank_key(best.Scores(8, None), "fidelity") is None


@pytest.mark.parametrize("flags, needle", [
    (["--validation-split", "0.1"], "holds out no image"),
    (["--validation-split", "0.9"], "leaves no training image"),
    (["--validation-split", "1.5"], "--validation-split must be in [0, 1)"),
    (["--validation-split", "nan"], "--validation-split must be in [0, 1)"),
    (["--validation-data", "{root}/nope"], "validation folder does not exist"),
    (["--validation-data", "{root}/empty"], "no images"),
    (["--validation-split", "0.5", "--validation-data", "{root}/held"], "not both"),
    (["--keep-best", "drift"], "--keep-best drift needs --evaluate-every"),
    (["--keep-best", "val-loss", "--evaluate-every", "2"], "needs held-out images"),
    (["--keep-best", "beauty", "--evaluate-every", "2"], "--keep-best must be one of"),
])
def test_bad_validation_input_is_one_line_exit_2(setup, tmp_path, capsys, flags, needle):
    (setup["root"] / "empty").mkdir(exist_ok=True)
    argv = ["train", "--model", setup["model"], "--data", setup["data"], "--out", tmp_path / "x.safetensors",
            "--resolution", "32", "--bucket-step", "8", "--steps", "1", "--no-progress", "--no-tensorboard",
            *[f.format(root=setup["root"]) for f in flags]]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and needle in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_the_train_toml_takes_the_validation_options(tmp_path, setup):
    toml = tmp_path / "train.toml"
    toml.write_text('[data]\nvalidation_data = "held"\n[output]\nkeep_best = "combined"\nevaluate_every = 50\n')
    cfg = TrainConfig.from_toml(toml)
    assert cfg.validation_data == tmp_path / "held" and cfg.keep_best == "combined" and cfg.evaluate_every == 50
    assert 'keep_best = "combined"' in cfg.to_toml()


def test_a_state_from_before_the_validation_options_resumes_when_they_are_off(tmp_path):
    from lorakit.errors import LoraKitError
    from lorakit.train import state

    new = ("validation_split", "validation_data", "keep_best")
    defaults = TrainConfig().fingerprint()
    old = {"step": 2, "config": {k: v for k, v in defaults.items() if k not in new}}
    state.check_compatible(old, defaults, tmp_path, steps_may_grow=False, defaults=defaults)
    wanted = {**defaults, "validation_split": 0.25}
    with pytest.raises(LoraKitError, match=r"validation_split \(not in the state\)"):
        state.check_compatible(old, wanted, tmp_path, steps_may_grow=False, defaults=defaults)
