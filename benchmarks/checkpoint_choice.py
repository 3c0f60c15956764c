"""Does the checkpoint `--keep-best` picks hold up on prompts it was not chosen on?

For each seed, trains the toy demo's LoRA (`lorakit demo`'s recipe) with a quarter of its concept
images held out (`--validation-split 0.25`), an evaluation every `--every` steps and
`--keep-best combined`, so the run writes lora.safetensors (the last step) and
lora.best.safetensors (the picked step). Both are then scored on a fresh seed's prompts and noise
(seed + 100: colours, backgrounds and base scenes the choice never saw), as the demo scores:
- concept fidelity: 48 trigger prompts drawn as the concept shape;
- base accuracy kept: 96 base-world prompts drawn right, against the base model alone;
- combined: fidelity − base accuracy lost, the same definition --keep-best used on its own prompts.
Seeds run one at a time, each in its own process with one torch thread. Prints a table and writes
benchmarks/results/checkpoint_choice.json.

    python benchmarks/checkpoint_choice.py [--seeds 0-4] [--every 100] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "src"))
sys.path.insert(0, str(HERE))
from _common import seeds_arg  # noqa: E402

FRESH = 100  # the fresh prompts' seed is the training seed + FRESH

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from checkpoint_choice import one_seed
print(json.dumps(one_seed(*json.loads(sys.argv[2]))))
"""


def _scores(model_source, lora, n_concept, n_base, seed, base_precision):
    from lorakit.devices import load_model_for_inference
    from lorakit.formats import load_network
    from lorakit.train.demo import evaluate

    model = load_model_for_inference(model_source, "cpu", "auto", base_precision)
    model.pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        load_network(model.parts(), lora).merge()
    return evaluate(model.pipe, n_concept, n_base, seed)


def _trained(board_path: Path, steps: int) -> bool:
    """Whether a run in this folder already reached its last evaluation (a rerun only scores it again)."""
    try:
        return json.loads(board_path.read_text())["rows"][-1]["step"] == steps
    except (OSError, ValueError, KeyError, IndexError):
        return False


def one_seed(out, seed, steps, every, split, n_concept, n_base, evaluate_n) -> dict:
    """Train (unless done) and score one seed; the result is also kept as OUT/result.json."""
    from lorakit.train import best
    from lorakit.train.demo import demo_config
    from lorakit.train.loop import run

    done = Path(out) / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    cfg = demo_config(Path(out), steps, seed, progress=False, evaluate_every=every, keep_best="combined",
                      validation_split=split, evaluate_n=evaluate_n, clip_model="none", dino_model="none",
                      tensorboard=False)
    board_path = cfg.resolved_run_dir() / best.BOARD_FILE
    if not _trained(board_path, steps):
        run(cfg)
    board = json.loads(board_path.read_text())
    fresh = seed + FRESH
    base = _scores("toy", None, n_concept, n_base, fresh, cfg.base_precision)
    out = {"seed": seed, "fresh_seed": fresh, "board": board, "base": base}
    for name, path in (("last", cfg.out), ("best", best.best_path(cfg.out))):
        s = _scores("toy", path, n_concept, n_base, fresh, cfg.base_precision)
        lost = base["base_accuracy"] - s["base_accuracy"]
        out[name] = {**s, "kept": s["base_accuracy"] / base["base_accuracy"],
                     "combined": s["concept_fidelity"] - lost}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    from lorakit.train.demo import DEFAULT_STEPS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=seeds_arg, default=list(range(5)))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--every", type=int, default=100, help="evaluate (and maybe keep) every N steps")
    p.add_argument("--split", type=float, default=0.25, help="share of the concept images held out")
    p.add_argument("--evaluate-n", type=int, default=4, help="seeds per prompt in each evaluation")
    p.add_argument("--work", type=Path, default=Path("/tmp/lorakit-checkpoint-choice"))
    p.add_argument("--quick", action="store_true", help="seed 0, 4 steps, 2 + 2 images: checks the script runs")
    args = p.parse_args()
    n_concept, n_base, name = 48, 96, "checkpoint_choice"
    if args.quick:
        args.seeds, args.steps, args.every, n_concept, n_base, args.evaluate_n = [0], 4, 2, 2, 2, 1
        name += "_quick"
    import os

    env = {**os.environ, "PYTHONPATH": str(HERE.parents[0] / "src"), "PYTHONWARNINGS": "ignore"}
    results = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        job = [str(args.work / f"seed-{seed}"), seed, args.steps, args.every, args.split, n_concept, n_base,
               args.evaluate_n]
        proc = subprocess.run([sys.executable, "-c", WORKER, str(HERE), json.dumps(job)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"seed {seed}: picked step {r['board']['best']}; combined on fresh prompts: picked "
              f"{r['best']['combined']:.3f}, last {r['last']['combined']:.3f} ({r['seconds']:.0f} s)", flush=True)

    print(f"\n{args.steps} steps, an evaluation every {args.every}, {args.split:g} of the concept images held out, "
          f"--keep-best combined; scored on seed + {FRESH}: {n_concept} trigger prompts, {n_base} base prompts\n")
    print("| seed | picked step | fidelity picked / last | base kept picked / last | combined picked / last |\n"
          "|---:|---:|---:|---:|---:|")
    for r in results:
        b, last = r["best"], r["last"]
        print(f"| {r['seed']} | {r['board']['best']} of {args.steps} | {b['concept_fidelity']:.1%} / "
              f"{last['concept_fidelity']:.1%} | {b['kept']:.1%} / {last['kept']:.1%} | "
              f"{b['combined']:.3f} / {last['combined']:.3f} |")
    held = all(r["best"]["combined"] >= r["last"]["combined"] for r in results)
    mean = lambda key: sum(r[key]["combined"] for r in results) / len(results)  # noqa: E731
    print(f"| **mean** | | | | {mean('best'):.3f} / {mean('last'):.3f} |")
    print(f"\npicked ≥ last on every seed: {'yes' if held else 'NO'}; wall {time.perf_counter() - t0:.0f} s")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{name}.json").write_text(json.dumps(
        {"quick": args.quick, "steps": args.steps, "every": args.every, "split": args.split,
         "evaluate_n": args.evaluate_n, "fresh_offset": FRESH, "n": {"concept": n_concept, "base": n_base},
         "picked_at_least_as_good_on_every_seed": held, "seeds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
