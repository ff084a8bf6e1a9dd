"""The seed spread behind the demo's verdicts: the demo's students trained and evaluated over 5 seeds.

    .venv/bin/python benchmarks/demo_seeds.py --out runs/demo-seeds [--seeds 0 1 2 3 4] [--set KEY=VALUE ...]

Runs `bingo demo --seed S` for every seed (each builds its own bags: a few seconds, and their report
and montage depend on the seed), then writes src/bingo/experiments/demo_seeds.json: each student's and reference's
accuracies per seed, with the command, commit, machine and the settings digest that the demo page
checks before using them. An interrupted run continues where it stopped (each seed's demo resumes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bingo.experiments.page import METRICS, SEEDS_FILE  # noqa: E402
from bingo.report import flat_metrics  # noqa: E402
from bingo.training import machine_info  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-seeds")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--file", type=Path, default=SEEDS_FILE, help="where the spread is written")
    args = parser.parse_args()
    sets = [x for kv in ["trainer.progress_bar=false", *args.overrides] for x in ("--set", kv)]
    results = {}
    for seed in args.seeds:
        out = args.out / f"seed-{seed}"
        if not (out / "results.json").is_file():
            resume = ["--resume"] if out.exists() else []
            subprocess.run([str(ROOT / ".venv" / "bin" / "bingo"), "demo", "--seed", str(seed), "--out", str(out),
                            *sets, *resume], check=True)
        results[seed] = json.loads((out / "results.json").read_text())
    digests = {r["settings"] for r in results.values()}
    if len(digests) != 1:
        sys.exit(f"the seeds' demos were run with different settings ({digests}); start again in an empty --out")
    names = [n for n in results[args.seeds[0]]["rows"] if all(n in results[s]["rows"] for s in args.seeds)]
    students = {name: {m: [flat_metrics(results[s]["rows"][name])[m] for s in args.seeds] for m in METRICS}
                for name in names}  # the rows every seed has (a demo re-rendered later may have dropped one)
    spread = {"command": " ".join(["python benchmarks/demo_seeds.py", *sys.argv[1:]]),
              "commit": machine_info()["commit"], "machine": results[args.seeds[0]]["machine"],
              "settings": digests.pop(), "seeds": args.seeds, "students": students}
    args.file.write_text(json.dumps(spread, indent=2) + "\n")
    for name, metrics in students.items():
        print(f"{name:45s} " + "  ".join(f"{m}: {np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}"
                                         for m, v in metrics.items()))
    print(f"written: {args.file}")


if __name__ == "__main__":
    main()
