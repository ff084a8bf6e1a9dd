"""`bingo repro`: the paper's tables in miniature (docs/results.md).

One teacher (pretrained by bingo unless `--teacher` gives one), every bag file the tables need, and a
pool of runs (`repro.runs`: a method, its overrides, its bags) shared by the tables (`repro.tables`):
each run is trained and evaluated once per seed, whichever tables show it. In OUT:

    teacher/               the MoCo-v2 teacher; teacher/eval/PROTOCOLS/ its accuracies (the reference row)
    bags/NAME/             each bag file, with its report
    runs/NAME/seed-S/      each run, evaluated into eval/PROTOCOLS/
    tables/TABLE/          each table: results.json, results.md, accuracy.png, training curves
    results.md, results.json   every table done so far, the verdict on each claim, machine and wall times
    results/TABLE.png      each table's chart: accuracies, and accuracy against training time

`--tables` runs some tables only (the experiment in parts; tables marked `investigation: true` run
only when named); `--resume` continues: finished pieces are
reused, an interrupted training continues from its last checkpoint; `--report` only rewrites the report.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from bingo.config import Config, load_config
from bingo.errors import UserError
from bingo.experiments.compare import (
    Evaluation,
    compare_table,
    eval_folder,
    run_configs,
    summarise,
    train_and_evaluate,
    train_run,
)
from bingo.models.checkpoints import load_encoder
from bingo.plots import pyplot, save_figure
from bingo.report import flat_metrics
from bingo.stages.bags import run_bags
from bingo.stages.evaluate import evaluate_once
from bingo.stages.pretrain import run_pretrain
from bingo.training import file_digest, is_rank_zero, machine_info, prepare_run_folder, write_results

log = logging.getLogger("bingo")
RUN_KEYS, BAG_KEYS = {"method", "set", "bags"}, {"set", "model"}
TABLE_KEYS = {"title", "runs", "protocols", "note", "investigation"}
CLAIM_KEYS = {"claim", "table", "better", "worse", "metric", "paper"}
SHOWN = ("kNN@10 top-1", "kNN@200 top-1", "linear top-1", "semi 1% top-1", "semi 10% top-1", "train wall time (s)")


def run_repro(cfg: Config, out: Path, tables: list[str] | None = None, resume: bool = False,
              command: str = "bingo repro", report_only: bool = False) -> dict:
    """Train, evaluate and summarise the chosen tables (the paper's by default); then the report of every table done.

    Each finished table's wall time in this invocation goes to OUT/parts.json with `command`.
    `report_only`: rewrite the report from what OUT holds, training nothing.
    """
    started = time.perf_counter()
    tables = check_plan(cfg, tables)
    if report_only:
        if not (out / "config.yaml").exists():
            raise UserError(f"{out} holds no 'bingo repro' run to report on")
        evaluation = out / "teacher" / "eval" / eval_folder(cfg.repro.teacher_protocols) / "results.json"
        return write_report(cfg, out, _reference(json.loads(evaluation.read_text())) if evaluation.exists() else None)
    prepare_run_folder(out, cfg, resume)
    cfg = copy.deepcopy(cfg)
    cfg.teacher.checkpoint = str(teacher_file(cfg, out))
    reference = teacher_row(cfg, out)
    for table in tables:
        run_table(cfg, out, table)
        if is_rank_zero():
            log_part(out, command, table, time.perf_counter() - started)
            started = time.perf_counter()
    return write_report(cfg, out, reference) if is_rank_zero() else {}


def check_plan(cfg: Config, tables: list[str] | None) -> list[str]:
    """The tables to run, in the config's order; every name they use must exist (checked before any work).

    By default every table but those marked `investigation: true`, which run only when named.
    """
    repro = cfg.repro
    if not repro.tables:
        raise UserError("nothing to reproduce: repro.tables is empty (the repro preset defines the paper's tables)")
    unknown = [t for t in tables or [] if t not in repro.tables]
    if unknown:
        raise UserError(f"unknown table '{unknown[0]}'; choose from: {', '.join(repro.tables)}")
    for kind, specs, keys in (("bags", repro.bags, BAG_KEYS), ("runs", repro.runs, RUN_KEYS),
                              ("tables", repro.tables, TABLE_KEYS)):
        for name, spec in specs.items():
            extra = set(spec or {}) - keys
            if extra:
                raise UserError(f"repro.{kind}.{name} has unknown keys {sorted(extra)}; use {', '.join(sorted(keys))}")
    for name, spec in repro.bags.items():
        if (spec or {}).get("model") and spec["model"] not in repro.runs:
            raise UserError(f"repro.bags.{name}: model '{spec['model']}' is not a run in repro.runs")
    for name, spec in repro.runs.items():
        if (spec or {}).get("bags") and spec["bags"] not in repro.bags:
            raise UserError(f"repro.runs.{name}: bags '{spec['bags']}' is not in repro.bags")
    for name, spec in repro.tables.items():
        if not isinstance(spec.get("investigation", False), bool):
            raise UserError(f"repro.tables.{name}.investigation must be true or false, not "
                            f"{spec['investigation']!r}")
        missing = [run for run in spec.get("runs", []) if run not in repro.runs]
        if missing or not spec.get("runs"):
            raise UserError(f"repro.tables.{name}: " + (f"run '{missing[0]}' is not in repro.runs" if missing
                                                        else "no runs"))
    for claim in repro.claims:
        shown = repro.tables.get(claim.get("table"), {}).get("runs", [])
        if set(claim) - CLAIM_KEYS or not shown or any(claim.get(side) not in [*shown, "teacher"]
                                                        for side in ("better", "worse")):
            raise UserError(f"repro.claims: '{claim.get('claim')}' must name a table and two of its runs "
                            f"(keys: {', '.join(sorted(CLAIM_KEYS))})")
    chosen = tables or [name for name, spec in repro.tables.items() if not spec.get("investigation")]
    return [t for t in repro.tables if t in chosen]


def teacher_file(cfg: Config, out: Path) -> Path:
    """The teacher given by --teacher, or one pretrained (or resumed, or reused) in OUT/teacher."""

    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint)
    log.info("repro: the teacher (MoCo-v2)")
    return run_pretrain(cfg, out / "teacher", resume=True)


def teacher_row(cfg: Config, out: Path) -> dict | None:
    """The teacher's own accuracies (evaluated once, reused), the reference row of the tables."""

    if not is_rank_zero():
        return None
    protocols = tuple(cfg.repro.teacher_protocols)
    folder = out / "teacher" / "eval" / eval_folder(protocols)
    teacher = cfg.teacher.checkpoint
    return _reference(evaluate_once(cfg, folder, "teacher", protocols, file_digest(Path(teacher)),
                                    lambda: load_encoder(teacher, cfg.teacher, cfg.data), section="teacher"))


def _reference(results: dict) -> dict:
    """The teacher's accuracies from its evaluation's results."""

    (row,) = results["rows"].values()
    return flat_metrics(row)


def bag_file(cfg: Config, out: Path, name: str) -> Path:
    """Bag file NAME of repro.bags, built on first use (from the teacher, or from run `model`'s first-seed student)."""
    spec = cfg.repro.bags[name] or {}
    overrides = list(spec.get("set", []))
    if spec.get("model"):
        student = train_run(run_config(cfg, out, spec["model"]), cfg.compare.seeds[0], out / "runs" / spec["model"],
                            spec["model"])
        overrides.append(f"student.checkpoint={student}")
    bags_cfg = load_config(None, None, overrides, stage="bags", base=copy.deepcopy(cfg))
    log.info("repro: bags %s", name)
    return run_bags(bags_cfg, out / "bags" / name, resume=True)


def run_config(cfg: Config, out: Path, name: str) -> Config:
    """The resolved config of run NAME of repro.runs (its bag file built first)."""
    spec = dict(cfg.repro.runs[name] or {})
    overrides, bags = list(spec.pop("set", [])), spec.pop("bags", None)
    if bags:
        overrides = [f"distill.bags={bag_file(cfg, out, bags)}", *overrides]  # the file says how its bags were made
    compare_cfg = copy.deepcopy(cfg)
    compare_cfg.compare.runs = {name: {**spec, "set": overrides}}
    return run_configs(compare_cfg)[name]


def run_table(cfg: Config, out: Path, table: str) -> dict | None:
    """Train and evaluate every run of one table for every seed; its summary in OUT/tables/TABLE."""
    spec = cfg.repro.tables[table]
    protocols = tuple(spec.get("protocols") or cfg.compare.protocols)
    log.info("repro: table %s (%s)", table, spec.get("title", ""))
    configs = {name: run_config(cfg, out, name) for name in spec["runs"]}
    evaluation = Evaluation(cfg, protocols)
    per_run = {name: {seed: train_and_evaluate(run, seed, out / "runs" / name, name, evaluation)
                      for seed in cfg.compare.seeds} for name, run in configs.items()}
    if not is_rank_zero():
        return None
    return summarise(configs, per_run, cfg.compare.seeds, protocols, out / "runs", out / "tables" / table)


def verdict(better: list[float], worse: list[float]) -> tuple[str, float, float]:
    """'holds', 'does not hold' or 'within noise' for "better > worse": (verdict, difference, its standard error).

    The difference of the means counts when it exceeds twice its standard error (from the seeds' spreads;
    a side with one value, like the teacher's reference row, counts as exact).
    """
    difference = float(np.mean(better) - np.mean(worse))
    error = math.sqrt(sum(np.var(v, ddof=1) / len(v) if len(v) > 1 else 0.0 for v in (better, worse)))
    if len(better) < 2 and len(worse) < 2:
        return "one seed: no verdict", difference, error
    if abs(difference) <= 2 * error:
        return "within noise", difference, error
    return ("holds" if difference > 0 else "does not hold"), difference, error


def judge(cfg: Config, summaries: dict[str, dict], reference: dict | None) -> list[dict]:
    """Every claim whose table is done, on each of its metrics: both sides' mean ± std, the difference, the verdict.

    A claim is judged on its own `metric` if it names one, else on each of repro.metrics.
    """
    judged = []
    for claim in cfg.repro.claims:
        summary = summaries.get(claim["table"])
        if summary is None:
            continue
        for metric in [claim["metric"]] if claim.get("metric") else cfg.repro.metrics:
            sides = {side: _values(summary, claim[side], metric, reference) for side in ("better", "worse")}
            if not sides["better"] or not sides["worse"]:
                continue
            outcome, difference, error = verdict(sides["better"], sides["worse"])
            judged.append({**claim, "metric": metric, "verdict": outcome, "difference": round(difference, 2),
                           "standard_error": round(error, 2),
                           **{f"{side}_mean": round(float(np.mean(v)), 2) for side, v in sides.items()},
                           **{f"{side}_std": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 2)
                              for side, v in sides.items()}})
    return judged


def _values(summary: dict, run: str, metric: str, reference: dict | None) -> list[float]:
    """A run's value of `metric` for each seed (the teacher: its one reference value)."""
    if run == "teacher":
        return [reference[metric]] if reference and metric in reference else []
    return [seed[metric] for seed in summary["runs"].get(run, {}).get("seeds", {}).values() if metric in seed]


def log_part(out: Path, command: str, table: str, seconds: float) -> None:
    """Append a finished table (the command that ran it, its wall time there) to OUT/parts.json."""
    path = out / "parts.json"
    parts = json.loads(path.read_text()) if path.exists() else []
    parts.append({"command": command, "table": table, "wall_time_s": round(seconds, 1),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(parts, indent=2))


def compute_seconds(out: Path) -> float:
    """The wall time of every piece OUT holds: teacher, bags, trainings and evaluations (reused ones once)."""
    pieces = [out / "teacher", *(out / "bags").glob("*"), *(out / "runs").glob("*/seed-*")]
    files = [f for piece in pieces for f in [piece / "results.json", *piece.glob("eval/*/results.json")]]
    return round(sum(json.loads(f.read_text()).get("wall_time_s", 0.0) for f in files if f.exists()), 1)


def write_report(cfg: Config, out: Path, reference: dict | None) -> dict:
    """OUT/results.json and OUT/results.md: every table done so far, each claim's verdict, machine, wall times."""
    summaries = {t: json.loads((out / "tables" / t / "results.json").read_text()) for t in cfg.repro.tables
                 if (out / "tables" / t / "results.json").exists()}
    parts = json.loads((out / "parts.json").read_text()) if (out / "parts.json").exists() else []
    report = {"machine": machine_info(), "seeds": list(cfg.compare.seeds), "metrics": list(cfg.repro.metrics),
              "teacher": reference, "tables": summaries, "claims": judge(cfg, summaries, reference), "parts": parts,
              "wall_time_s": round(sum(p["wall_time_s"] for p in parts), 1), "compute_s": compute_seconds(out)}
    write_results(out, report)
    for table, summary in summaries.items():
        table_chart(summary, reference, out / "results" / f"{table}.png")
    (out / "results.md").write_text(report_markdown(cfg, report))
    return report


def table_chart(summary: dict, reference: dict | None, path: Path) -> None:
    """Left: each run's accuracies (mean ± std over seeds; teacher dashed). Right: accuracy against training time."""

    plt = pyplot()
    runs = summary["runs"]
    metrics = [m for m in SHOWN if "top-1" in m and all(m in run["mean"] for run in runs.values())]
    figure, (bars, times) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        x = np.arange(len(runs)) + i * width
        bars.bar(x, [run["mean"][metric] for run in runs.values()], width,
                 yerr=[run["std"][metric] for run in runs.values()], capsize=3, label=metric, color=f"C{i}")
        if reference and metric in reference:
            bars.axhline(reference[metric], color=f"C{i}", linestyle="--", linewidth=1, label=f"teacher {metric}")
    bars.set_xticks(np.arange(len(runs)) + width * (len(metrics) - 1) / 2, list(runs), rotation=30, ha="right",
                    fontsize=8)
    low = min(run["mean"][m] - run["std"][m] for run in runs.values() for m in metrics)
    bars.set_ylim(max(0, low - 5), None)
    bars.set_ylabel("accuracy (%)")
    bars.legend(fontsize=7)
    metric, clock = metrics[-1], "train wall time (s)"
    for i, (name, run) in enumerate(runs.items()):
        if clock in run["mean"]:
            times.errorbar(run["mean"][clock] / 60, run["mean"][metric], yerr=run["std"][metric],
                           xerr=run["std"][clock] / 60, fmt="o", capsize=3, color=f"C{i % 10}", label=name)
    times.set_xlabel("training time per run (min)")
    times.set_ylabel(metric + " (%)")
    times.legend(fontsize=7)
    figure.suptitle(f"mean ± std over {len(summary['seeds'])} seeds", fontsize=9)
    save_figure(figure, path)


def report_markdown(cfg: Config, report: dict) -> str:
    """The report as Markdown: claims first, then one section per table."""
    machine = report["machine"]
    lines = ["# The paper's tables in miniature", "", f"Machine: {machine['cpu']}, "
             f"{machine['cores']} cores, {machine['gpu'] or 'no GPU'}, torch "
             f"{report['machine']['torch']}. Time: {report['compute_s'] / 60:.0f} min, the sum of every training, "
             f"bag building and evaluation it holds; the parts below ran for {report['wall_time_s'] / 60:.0f} min "
             "(a part that was interrupted is not listed).", "",
             "## Claims", "", "| claim | metric | better | worse | difference | verdict | paper |",
             "|---|---|---|---|---|---|---|"]
    for previous, c in zip([{}, *report["claims"]], report["claims"], strict=False):
        claim = "" if previous.get("claim") == c["claim"] else c["claim"]  # one claim, several metrics: named once
        lines.append(f"| {claim} | {c['metric']} | {c['better']} {c['better_mean']:.1f} ± {c['better_std']:.1f} "
                     f"| {c['worse']} {c['worse_mean']:.1f} ± {c['worse_std']:.1f} | {c['difference']:+.1f} "
                     f"± {c['standard_error']:.1f} | {c['verdict']} | {c.get('paper', '-') if claim else ''} |")
    for table, summary in report["tables"].items():
        spec = cfg.repro.tables[table]
        lines += ["", f"## {spec.get('title', table)}", "", table_markdown(summary, report["teacher"]), "",
                  f"![{table}](results/{table}.png)"]
        if spec.get("note"):
            lines += ["", spec["note"]]
    lines += ["", "## Commands", "", "| table | wall time (min) | finished | command |", "|---|---|---|---|"]
    lines += [f"| {p['table']} | {p['wall_time_s'] / 60:.1f} | {p['finished']} | `{p['command']}` |"
              for p in report["parts"]]
    return "\n".join(lines) + "\n"


def table_markdown(summary: dict, reference: dict | None) -> str:
    """One table: mean ± std over seeds of the shown accuracies and training time; the teacher's row below."""
    columns = [k for k in SHOWN if any(k in run["mean"] for run in summary["runs"].values())]
    text = compare_table({**summary, "runs": {name: {**run, "mean": {k: run["mean"][k] for k in columns
                                                                      if k in run["mean"]}}
                                              for name, run in summary["runs"].items()}})
    if reference and any(k in reference for k in columns):
        text += "\n| teacher (reference) | moco | 1 | " + " | ".join(
            f"{reference[k]:.1f}" if k in reference else "-" for k in columns) + " |"
    return text
