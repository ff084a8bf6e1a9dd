"""`bingo compare`: several methods (or variants) with one teacher, bags, student, schedule and evaluation.

Each (run, seed) trains in its own folder, `OUT/NAME/seed-S`, and is evaluated into
`OUT/NAME/seed-S/eval`. Finished runs and evaluations are reused; an interrupted one resumes from
its last checkpoint. The summary is `results.json`, `results.md`, `accuracy.png`, and the training
curves of `bingo plot` (`losses.png`, `training.png`, and `monitor.png` when the monitor ran).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bingo.config import Config, load_config
from bingo.errors import UserError
from bingo.methods import METHODS, needs_teacher
from bingo.models.checkpoints import load_encoder
from bingo.plots import plot_runs, pyplot, save_figure
from bingo.report import flat_metrics
from bingo.training import is_rank_zero, prepare_run_folder, write_results

log = logging.getLogger("bingo")


def run_configs(cfg: Config) -> dict[str, Config]:
    """One config per compared run: the shared config with the run's method and its own overrides."""
    if not cfg.compare.runs:
        raise UserError("nothing to compare: pass --methods NAME ... or compare.runs in a --config file")
    configs = {}
    for name, spec in cfg.compare.runs.items():
        spec = spec or {}
        unknown = set(spec) - {"method", "set"}
        if unknown:
            raise UserError(f"compare.runs.{name} has unknown keys {sorted(unknown)}; use 'method' and 'set'")
        method = spec.get("method", name)
        if method not in METHODS:
            raise UserError(f"compare.runs.{name}: unknown method '{method}'; choose one of: {', '.join(METHODS)}")
        run = load_config(None, None, [f"distill.method={method}", *spec.get("set", [])], stage="distill",
                          base=copy.deepcopy(cfg))
        if needs_teacher(run) and not run.teacher.checkpoint:
            raise UserError(f"compare.runs.{name} ({method}) distils from a teacher: pass --teacher FILE")
        if method == "bingo" and not run.distill.bags:
            raise UserError(f"compare.runs.{name} (bingo) needs bags: pass --bags FILE (built by 'bingo bags')")
        if "csv" not in run.trainer.loggers:
            run.trainer.loggers = [*run.trainer.loggers, "csv"]  # the loss curves come from the CSV logs
        configs[name] = run
    return configs


def run_compare(cfg: Config, out: Path, resume: bool = False) -> dict:
    """Train and evaluate every run for every seed (reusing finished ones), then summarise."""
    from bingo.pipeline import (
        STUDENT_FILE,
        check_protocols,
        eval_datasets,
        evaluate_into,
        run_distill,
        transfer_datasets,
    )

    configs = run_configs(cfg)  # a bad run spec fails before anything is written
    protocols = tuple(cfg.compare.protocols)
    datasets = eval_datasets(cfg)
    check_protocols(cfg, protocols, True, datasets[0])
    transfer = transfer_datasets(cfg) if "transfer" in protocols else None
    prepare_run_folder(out, cfg, resume)
    per_run: dict[str, dict[int, dict]] = {}
    for name, run in configs.items():
        for seed in cfg.compare.seeds:
            folder = out / name / f"seed-{seed}"
            seeded = copy.deepcopy(run)
            seeded.seed = seed
            student = folder / STUDENT_FILE
            if not student.exists():
                log.info("compare: training %s, seed %d", name, seed)
                run_distill(seeded, folder, resume=(folder / "config.yaml").exists())
            if not is_rank_zero():  # the other processes of a distributed job only help train
                continue
            evaluation = folder / "eval" / "results.json"
            if not evaluation.exists():
                log.info("compare: evaluating %s, seed %d", name, seed)
                encoder = load_encoder(student, seeded.student, seeded.data)
                evaluate_into(seeded, encoder, f"{name} seed {seed}", protocols, evaluation.parent, datasets, transfer)
            (row,) = json.loads(evaluation.read_text())["rows"].values()
            per_run.setdefault(name, {})[seed] = {
                **flat_metrics(row),
                "train wall time (s)": json.loads((folder / "results.json").read_text()).get("wall_time_s")}
    if not is_rank_zero():
        return {}
    summary = {"runs": {name: {"method": configs[name].distill.method, "seeds": seeds,
                               "mean": _stat(seeds, np.mean), "std": _stat(seeds, _spread)}
                        for name, seeds in per_run.items()},
               "seeds": list(cfg.compare.seeds), "protocols": list(cfg.compare.protocols)}
    write_results(out, summary)
    (out / "results.md").write_text(compare_table(summary) + "\n")
    bar_chart(summary, out / "accuracy.png")
    plot_runs({f"{name} seed {seed}": out / name / f"seed-{seed}" for name in per_run for seed in cfg.compare.seeds},
              out)
    print(compare_table(summary))
    return summary


def _spread(values: list[float]) -> float:
    """Sample standard deviation (0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _stat(seeds: dict[int, dict], reduce: Callable[[list[float]], float]) -> dict[str, float]:
    names = [k for k in next(iter(seeds.values())) if all(seeds[s].get(k) is not None for s in seeds)]
    return {k: round(float(reduce([seeds[s][k] for s in seeds])), 3) for k in names}


def compare_table(summary: dict) -> str:
    """Markdown: one row per run, mean ± std over seeds for each top-1 accuracy and the training time."""
    first = next(iter(summary["runs"].values()))
    columns = [k for k in first["mean"] if "top-5" not in k]
    lines = ["| run | method | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    for name, run in summary["runs"].items():
        cells = [f"{run['mean'][k]:.1f} ± {run['std'][k]:.1f}" if k in run["mean"] else "-" for k in columns]
        lines.append(f"| {name} | {run['method']} | {len(run['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: dict, path: Path) -> None:
    """One group of bars per top-1 accuracy, one bar per run, error bars of one standard deviation."""
    plt = pyplot()
    runs = list(summary["runs"])
    metrics = [k for k in summary["runs"][runs[0]]["mean"] if "top-1" in k]
    width = 0.8 / len(runs)
    figure, axis = plt.subplots(figsize=(1.2 + 1.6 * len(metrics) + 0.3 * len(runs), 3.6))
    for i, name in enumerate(runs):
        run = summary["runs"][name]
        axis.bar(np.arange(len(metrics)) + i * width, [run["mean"].get(k, np.nan) for k in metrics], width,
                 yerr=[run["std"].get(k, 0) for k in metrics], capsize=3, label=name)
    axis.set_xticks(np.arange(len(metrics)) + width * (len(runs) - 1) / 2, metrics)
    axis.set_ylabel("accuracy (%)")
    low = min(summary["runs"][n]["mean"].get(k, 100) for n in runs for k in metrics)
    axis.set_ylim(max(0, low - 10), None)
    axis.legend(fontsize=8, ncols=min(4, len(runs)))
    axis.set_title(f"mean ± std over {len(summary['seeds'])} seed(s)", fontsize=9)
    save_figure(figure, path)
