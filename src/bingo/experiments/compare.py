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
from bingo.eval.engine import check_protocols, eval_datasets, transfer_datasets
from bingo.experiments.plans import RunSpec, compare_runs
from bingo.methods import needs_teacher
from bingo.models.checkpoints import load_encoder
from bingo.plots import plot_runs, pyplot, save_figure
from bingo.report import flat_metrics
from bingo.stages.distill import run_distill
from bingo.stages.evaluate import evaluate_once
from bingo.training import file_digest, is_rank_zero, prepare_run_folder, write_results

log = logging.getLogger("bingo")


def run_configs(cfg: Config, runs: dict[str, RunSpec] | None = None) -> dict[str, Config]:
    """One config per compared run (compare.runs, or `runs`): the shared config with the run's method and its
    own overrides."""
    return {name: run_config(cfg, spec) for name, spec in (runs or compare_runs(cfg.compare)).items()}


def run_config(cfg: Config, spec: RunSpec, extra: tuple[str, ...] = (), section: str = "compare.runs") -> Config:
    """The shared config with one run's method, `extra` overrides and its own, checked for what it needs."""
    where = f"{section}.{spec.name}"
    run = run_settings(cfg, spec, extra)
    if needs_teacher(run) and not run.teacher.checkpoint:
        raise UserError(f"{where} ({spec.method}) distils from a teacher: pass --teacher FILE")
    if spec.method == "bingo" and not run.distill.bags:
        raise UserError(f"{where} (bingo) needs bags: pass --bags FILE (built by 'bingo bags')")
    if "csv" not in run.trainer.loggers:
        run.trainer.loggers = [*run.trainer.loggers, "csv"]  # the loss curves come from the CSV logs
    return run


def run_settings(cfg: Config, spec: RunSpec, extra: tuple[str, ...] = ()) -> Config:
    """The shared config with one run's method, `extra` overrides and its own, unchecked."""
    return load_config(None, None, [f"distill.method={spec.method}", *extra, *spec.overrides], stage="distill",
                       base=copy.deepcopy(cfg))


def run_compare(cfg: Config, out: Path, resume: bool = False) -> dict:
    """Train and evaluate every run for every seed (reusing finished ones), then summarise."""
    configs = run_configs(cfg)  # a bad run spec fails before anything is written
    protocols = tuple(cfg.compare.protocols)
    evaluation = Evaluation(cfg, protocols)
    prepare_run_folder(out, cfg, resume)
    per_run = {name: {seed: train_and_evaluate(run, seed, out / name, name, evaluation) for seed in cfg.compare.seeds}
               for name, run in configs.items()}
    if not is_rank_zero():  # the other processes of a distributed job only help train
        return {}
    summary = summarise(configs, per_run, cfg.compare.seeds, protocols, {name: out / name for name in configs}, out)
    print(compare_table(summary))
    return summary


class Evaluation:
    """The protocols every compared run is evaluated by, with the data sets they read (loaded once)."""

    def __init__(self, cfg: Config, protocols: tuple[str, ...]):
        self.protocols = protocols
        self.datasets = eval_datasets(cfg)
        check_protocols(cfg, protocols, True, self.datasets[0])
        self.transfer = transfer_datasets(cfg) if "transfer" in protocols else None

    @property
    def folder(self) -> str:
        """Name of a run's evaluation folder (see eval_folder)."""
        return eval_folder(self.protocols)


def eval_folder(protocols: tuple[str, ...] | list[str]) -> str:
    """Name of a model's evaluation folder: one per set of protocols, so tables with other protocols share runs."""
    return "+".join(protocols)


def train_and_evaluate(run: Config, seed: int, root: Path, name: str, evaluation: Evaluation) -> dict | None:
    """Train one run for one seed in `root/seed-S` and evaluate it; its accuracies and training time.

    None on the other processes of a distributed job, which only help train.
    """
    student = train_run(run, seed, root, name)
    if not is_rank_zero():
        return None
    return evaluate_run(run, seed, student, name, evaluation)


def train_run(run: Config, seed: int, root: Path, name: str) -> Path:
    """The student of one run for one seed, in root/seed-S: reused when trained with the same settings, resumed
    when interrupted, else trained (a folder trained with other settings is refused)."""
    log.info("compare: %s, seed %d", name, seed)
    return run_distill(seeded_config(run, seed), root / f"seed-{seed}", resume=True)


def evaluate_run(run: Config, seed: int, student: Path, name: str, evaluation: Evaluation) -> dict:
    """A trained student's accuracies by the evaluation's protocols (reused when done) and its training time."""

    seeded = seeded_config(run, seed)
    results = evaluate_once(seeded, student.parent / "eval" / evaluation.folder, f"{name} seed {seed}",
                            evaluation.protocols, file_digest(student),
                            lambda: load_encoder(student, seeded.student, seeded.data),
                            datasets=evaluation.datasets, transfer=evaluation.transfer)
    (row,) = results["rows"].values()
    return {**flat_metrics(row),
            "train wall time (s)": json.loads((student.parent / "results.json").read_text()).get("wall_time_s")}


def seeded_config(run: Config, seed: int) -> Config:
    """A copy of a run's config with its seed set."""
    seeded = copy.deepcopy(run)
    seeded.seed = seed
    return seeded


def summarise(configs: dict[str, Config], per_run: dict[str, dict[int, dict]], seeds: list[int],
              protocols: tuple[str, ...], run_folders: dict[str, Path], out: Path) -> dict:
    """results.json, results.md, accuracy.png and the training curves of the runs (each in its folder/seed-S)."""
    summary = {"runs": {name: {"method": configs[name].distill.method, "seeds": values,
                               "mean": _stat(values, np.mean), "std": _stat(values, _spread)}
                        for name, values in per_run.items()},
               "seeds": list(seeds), "protocols": list(protocols)}
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, summary)
    (out / "results.md").write_text(compare_table(summary) + "\n")
    bar_chart(summary, out / "accuracy.png")
    plot_runs({f"{name} seed {seed}": run_folders[name] / f"seed-{seed}" for name in per_run for seed in seeds}, out)
    return summary


def _spread(values: list[float]) -> float:
    """Sample standard deviation (0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _stat(seeds: dict[int, dict], reduce: Callable[[list[float]], float]) -> dict[str, float]:
    names = [k for k in next(iter(seeds.values())) if all(seeds[s].get(k) is not None for s in seeds)]
    return {k: round(float(reduce([seeds[s][k] for s in seeds])), 3) for k in names}


def compare_table(summary: dict, columns: list[str] | None = None) -> str:
    """Markdown: one row per run, mean ± std over seeds of `columns` (default: each top-1 accuracy and the training
    time)."""
    first = next(iter(summary["runs"].values()))
    columns = columns or [k for k in first["mean"] if "top-5" not in k]
    lines = ["| run | method | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    for name, run in summary["runs"].items():
        cells = [f"{run['mean'][k]:.1f} ± {run['std'][k]:.1f}" if k in run["mean"] else "-" for k in columns]
        lines.append(f"| {name} | {run['method']} | {len(run['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(summary: dict, path: Path) -> None:
    """One group of bars per top-1 accuracy, one bar per run, from zero, error bars of one standard deviation."""
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
    axis.set_ylim(0, 100)  # bars from zero
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # outside the data
    axis.set_title(f"mean ± std over {len(summary['seeds'])} seed(s)", fontsize=9)
    save_figure(figure, path)
