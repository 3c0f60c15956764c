"""The demo over many seeds: does its quality hold for every seed, not one?

Runs `lorakit demo` (the real `train` path and the demo's scoring: 48 trigger prompts for concept
fidelity, 96 base prompts for base accuracy) once per seed, each in its own process with one
torch thread (the toy model is fastest on one), `--jobs` at a time. Prints per seed the concept
fidelity, the base accuracy kept and the seconds, then the minimum and the mean, and writes
benchmarks/results/demo_seeds.json (with every seed's report and which base prompts failed).

    python benchmarks/demo_seeds.py [--seeds 0-9] [--jobs 2] [--steps N] [--set key=value ...]

`--set` overrides a training option of the demo's recipe (a TrainConfig field, e.g.
`--set min_snr_gamma=0`), to compare recipes on the same seeds. With `--jobs 2` two seeds share
the machine, so each seed's seconds are longer than a lone `lorakit demo` run's.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "src"))
sys.path.insert(0, str(HERE))
from _common import seeds_arg  # noqa: E402

from lorakit.train.demo import DEFAULT_STEPS  # noqa: E402

WORKER = """
import json, sys, torch
torch.set_num_threads(1)
from lorakit.train.demo import run_demo
out, seed, steps, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sizes = json.loads(sys.argv[5])
r = run_demo(out, steps=steps, seed=seed, progress=False, **sizes, **overrides)
"""


def parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=seeds_arg, default=list(range(10)))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default: the demo's, {DEFAULT_STEPS})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", type=Path, default=Path("/tmp/lorakit-demo-seeds"))
    p.add_argument("--name", default="demo_seeds", help="name of the JSON file under benchmarks/results/")
    p.add_argument("--quick", action="store_true", help="seed 0, 4 steps, 2 + 2 images scored: checks the script runs")
    args = p.parse_args()
    sizes = {}
    if args.quick:
        args.seeds, args.steps, sizes = [0], 4, {"n_concept": 2, "n_base": 2}
        args.name += "_quick"
    overrides = parse_set(args.overrides)
    env = {"PYTHONPATH": str(HERE.parents[0] / "src"), "PYTHONWARNINGS": "ignore"}
    import os

    env = {**os.environ, **env}
    pending, running, results = list(args.seeds), {}, {}
    t0 = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            out = args.work / f"seed-{seed}"
            cmd = [sys.executable, "-c", WORKER, str(out), str(seed), str(args.steps), json.dumps(overrides),
                   json.dumps(sizes)]
            running[seed] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), time.perf_counter(), out)
        time.sleep(0.5)
        for seed, (proc, start, out) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[seed]
            if proc.returncode != 0:
                sys.exit(f"seed {seed}: the demo failed (exit {proc.returncode})")
            r = json.loads((out / "report.json").read_text())
            results[seed] = {"fidelity": r["after"]["concept_fidelity"], "kept": r["base_accuracy_kept"],
                             "seconds": round(time.perf_counter() - start, 1), "report": r}
            print(f"seed {seed}: fidelity {results[seed]['fidelity']:.1%}, base kept {results[seed]['kept']:.1%}, "
                  f"{results[seed]['seconds']:.0f} s", flush=True)
    rows = [results[s] for s in args.seeds]
    fid, kept, secs = ([r[k] for r in rows] for k in ("fidelity", "kept", "seconds"))
    print(f"\nrecipe overrides: {overrides or 'none (the demo as shipped)'}; {args.steps} steps, {args.jobs} at a time\n")
    print("| seed | concept fidelity | base accuracy kept | seconds |\n|---:|---:|---:|---:|")
    for s, r in zip(args.seeds, rows):
        print(f"| {s} | {r['fidelity']:.0%} | {r['kept']:.0%} | {r['seconds']:.0f} |")
    print(f"| **minimum** | {min(fid):.0%} | {min(kept):.0%} | {min(secs):.0f} |")
    print(f"| **mean** | {statistics.mean(fid):.1%} | {statistics.mean(kept):.1%} | {statistics.mean(secs):.0f} |")
    met = min(fid) >= 0.95 and min(kept) >= 0.95
    print(f"\ngoals (every seed: fidelity ≥ 95 %, base kept ≥ 95 %): {'met' if met else 'NOT met'}; "
          f"wall {time.perf_counter() - t0:.0f} s")
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{args.name}.json").write_text(json.dumps(
        {"quick": args.quick, "overrides": overrides, "steps": args.steps, "jobs": args.jobs, "seeds": {str(s): results[s] for s in args.seeds},
         "min": {"fidelity": min(fid), "kept": min(kept)}, "mean": {"fidelity": statistics.mean(fid),
                                                                      "kept": statistics.mean(kept)},
         "met": met}, indent=2))


if __name__ == "__main__":
    main()
