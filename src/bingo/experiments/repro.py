"""`bingo repro`: the paper's tables in miniature (docs/results.md).

One teacher (pretrained by bingo unless `--teacher` gives one), every bag file the tables need, and a
pool of runs (`repro.runs`: a method, its overrides, its bags) shared by the tables (`repro.tables`):
each run is trained and evaluated once per seed, whichever tables show it. In OUT:

    teacher/               the MoCo-v2 teacher; teacher/eval/PROTOCOLS/ its accuracies (a reference row)
    references/NAME/       the other references: raw pixels and the student with random weights
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
import dataclasses
import glob
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bingo.config import Config, ModelConfig, load_config
from bingo.data.datasets import build_dataset
from bingo.errors import UserError
from bingo.experiments import compare
from bingo.experiments.compare import Evaluation, compare_table, eval_folder, summarise, train_and_evaluate, train_run
from bingo.experiments.plans import BagSpec, ReproPlan, RunSpec, TableSpec
from bingo.experiments.stats import holm, paired_comparison
from bingo.methods import needs_teacher
from bingo.methods.flops import step_flops_per_sample
from bingo.models.checkpoints import load_encoder
from bingo.plots import pyplot, save_figure
from bingo.report import flat_metrics
from bingo.stages.bags import run_bags
from bingo.stages.common import random_encoder, slug
from bingo.stages.evaluate import evaluate_once
from bingo.stages.pretrain import run_pretrain
from bingo.training import file_digest, git_commit, is_rank_zero, machine_info, prepare_run_folder, write_results
from bingo.zoo import resolve_checkpoint

log = logging.getLogger("bingo")
SHOWN = ("kNN@10 top-1", "kNN@200 top-1", "linear top-1", "linear top-5", "semi 1% top-1", "semi 10% top-1",
         "transfer", "train wall time (s)", "train TFLOP (counted)")  # "transfer": each transfer set's top-1
FLOPS = SHOWN[-1]


def shown_columns(rows: list[dict]) -> list[str]:
    """The SHOWN columns that any of `rows` (metric -> value) holds, in SHOWN's order."""
    present = dict.fromkeys(key for row in rows for key in row)
    expanded = [key for column in SHOWN for key in
                ([k for k in present if k.startswith("transfer ") and k.endswith(" top-1")] if column == "transfer"
                 else [column])]
    return [key for key in expanded if key in present]


def run_repro(cfg: Config, out: Path, tables: list[str] | None = None, resume: bool = False,
              command: str = "bingo repro", report_only: bool = False, report_from: Path | None = None) -> dict:
    """Train, evaluate and summarise the chosen tables (the paper's by default); then the report of every table done.

    Each finished table's wall time in this invocation goes to OUT/parts.json with `command`.
    `report_only`: rewrite the report from what OUT holds, training nothing; `report_from`: from that
    results.json alone (a published one), into OUT.
    """
    started = time.perf_counter()
    plan = ReproPlan.load(cfg.repro)
    tables = plan.chosen_tables(tables)
    if report_from is not None:
        if (out / "config.yaml").exists():
            raise UserError(f"{out} holds a 'bingo repro' run; re-render a results.json into another --out")
        return render_report(plan, read_report(report_from), out)
    if report_only:
        if not (out / "config.yaml").exists():
            raise UserError(f"{out} holds no 'bingo repro' run to report on")
        return write_report(cfg, plan, out, evaluated_references(out, plan))
    prepare_run_folder(out, cfg, resume)
    cfg = copy.deepcopy(cfg)
    cfg.teacher.checkpoint = str(teacher_file(cfg, out))
    references = reference_rows(cfg, plan, out)
    for table in tables:
        run_table(cfg, plan, out, plan.tables[table])
        if is_rank_zero():
            log_part(out, command, table, time.perf_counter() - started)
            started = time.perf_counter()
    return write_report(cfg, plan, out, references) if is_rank_zero() else {}


def teacher_file(cfg: Config, out: Path) -> Path:
    """The teacher given by --teacher, or one pretrained (or resumed, or reused) in OUT/teacher."""

    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint)
    log.info("repro: the teacher (MoCo-v2)")
    return run_pretrain(cfg, out / "teacher", resume=True)


REFERENCES = ("teacher", "raw pixels", "random student")  # the rows every table is read against


def reference_folders(out: Path, plan: ReproPlan) -> dict[str, Path]:
    """Where each reference's evaluation lies (the teacher's beside it, the others in OUT/references)."""
    protocols = eval_folder(plan.teacher_protocols)
    return {"teacher": out / "teacher" / "eval" / protocols,
            **{name: out / "references" / slug(name) / protocols for name in REFERENCES[1:]}}


def reference_rows(cfg: Config, plan: ReproPlan, out: Path) -> dict[str, dict] | None:
    """The accuracies of the references, each evaluated once (reused): the teacher, raw pixels, and the student
    with random weights (BatchNorm at its initialisation), as `plan.teacher_protocols` measure them."""
    if not is_rank_zero():
        return None
    folders = reference_folders(out, plan)
    models = {"raw pixels": ("pixels", lambda: None),
              "random student": ("random-init", lambda: random_encoder(cfg, cfg.student, calibrated=False))}
    return {"teacher": teacher_row(cfg, plan, folders["teacher"], "teacher"),
            **{name: _reference(evaluate_once(cfg, folders[name], name, plan.teacher_protocols, model, build))
               for name, (model, build) in models.items()}}


def teacher_row(cfg: Config, plan: ReproPlan, folder: Path, label: str, protocols: tuple[str, ...] = ()) -> dict:
    """The accuracies of cfg's teacher by `protocols` (default `plan.teacher_protocols`), evaluated into `folder`
    once (reused)."""
    teacher = cfg.teacher.checkpoint
    return _reference(evaluate_once(cfg, folder, label, protocols or plan.teacher_protocols, file_digest(Path(teacher)),
                                    lambda: load_encoder(teacher, cfg.teacher, cfg.data), "teacher"))


def evaluated_references(out: Path, plan: ReproPlan) -> dict[str, dict]:
    """The references OUT holds evaluations of (for --report)."""
    return {name: _reference(json.loads((folder / "results.json").read_text()))
            for name, folder in reference_folders(out, plan).items() if (folder / "results.json").exists()}


def _reference(results: dict) -> dict:
    """A reference's accuracies from its evaluation's results."""
    (row,) = results["rows"].values()
    return flat_metrics(row)


def bag_file(cfg: Config, plan: ReproPlan, out: Path, bag: BagSpec) -> Path:
    """A bag file of the plan, built on first use (from the teacher, or from run `model`'s first-seed student)."""
    overrides = list(bag.overrides)
    if bag.model:
        student = train_run(run_config(cfg, plan, out, plan.runs[bag.model]), cfg.compare.seeds[0],
                            out / "runs" / bag.model, bag.model)
        overrides.append(f"student.checkpoint={student}")
    bags_cfg = load_config(None, None, overrides, stage="bags", base=copy.deepcopy(cfg))
    log.info("repro: bags %s", bag.name)
    return run_bags(bags_cfg, out / "bags" / bag.name, resume=True)


def run_config(cfg: Config, plan: ReproPlan, out: Path, run: RunSpec) -> Config:
    """The resolved config of one run of the plan (its bag file built first: the file says how its bags were made)."""
    bags = (f"distill.bags={bag_file(cfg, plan, out, plan.bags[run.bags])}",) if run.bags else ()
    return compare.run_config(cfg, run, bags, section="repro.runs")


def run_table(cfg: Config, plan: ReproPlan, out: Path, table: TableSpec) -> dict | None:
    """Train and evaluate every run of one table for every seed; its summary in OUT/tables/TABLE.

    A table with teachers trains each run that uses a teacher once under each of them (row RUN@TEACHER, in
    OUT/teachers/TEACHER/runs/RUN), the others once; its summary also holds each teacher's accuracies.
    """
    protocols = table.protocols or tuple(cfg.compare.protocols)
    log.info("repro: table %s (%s)", table.name, table.title)
    rows: dict[str, tuple[Config, Path]] = {}  # row -> (run config, folder of its seeds)
    teachers = {}
    for teacher in table.teachers or (None,):
        teacher_cfg, root = teacher_setting(cfg, plan, out, teacher)
        if teacher is not None:
            teachers[teacher] = teacher_row(teacher_cfg, plan, root / "teacher" / "eval" /
                                            eval_folder(plan.teacher_protocols), f"teacher {teacher}")
        for name in table.runs:
            run = run_config(teacher_cfg, plan, root, plan.runs[name])
            row = f"{name}@{teacher}" if teacher is not None and needs_teacher(run) else name
            rows.setdefault(row, (run, (root if row != name else out) / "runs" / name))
    evaluation = Evaluation(cfg, protocols)
    per_run = {row: {seed: train_and_evaluate(run, seed, folder, row, evaluation) for seed in cfg.compare.seeds}
               for row, (run, folder) in rows.items()}
    if not is_rank_zero():
        return None
    summary = summarise({row: run for row, (run, _) in rows.items()}, per_run, cfg.compare.seeds, protocols,
                        {row: folder for row, (_, folder) in rows.items()}, out / "tables" / table.name)
    own = own_references(cfg, plan, out, [run for run, _ in rows.values()], protocols)
    if teachers or own:
        summary |= ({"teachers": teachers} if teachers else {}) | ({"references": own} if own else {})
        write_results(out / "tables" / table.name, summary)
    return summary


def own_references(cfg: Config, plan: ReproPlan, out: Path, runs: list[Config],
                   protocols: tuple[str, ...]) -> dict[str, dict]:
    """The reference rows a table measures for itself, each evaluated once (reused): by the table's protocols that the
    plan's references do not use (the semi-supervised one: the teacher and the random student fine-tuned; raw pixels
    have no network to fine-tune), and, when every run trains the same student backbone and it is not the plan's
    (another architecture, width or stem), that student with random weights by every protocol. {} when neither."""
    extra = tuple(p for p in protocols if p not in plan.teacher_protocols)
    student = runs[0].student
    own_student = len({backbone(run.student) for run in runs}) == 1 and backbone(student) != backbone(cfg.student)
    rows = {}
    if extra:
        rows["teacher"] = teacher_row(cfg, plan, out / "teacher" / "eval" / eval_folder(extra), "teacher", extra)
    if extra or own_student:
        student_cfg = copy.deepcopy(cfg)
        if own_student:
            student_cfg.student = copy.deepcopy(student)
        chosen = (*plan.teacher_protocols, *extra) if own_student else extra
        name = f"random student {student.arch} width {student.width}" if own_student else "random student"
        folder = out / "references" / slug(name) / eval_folder(chosen)
        rows["random student"] = _reference(evaluate_once(
            student_cfg, folder, name, chosen, "random-init",
            lambda: random_encoder(student_cfg, student_cfg.student, calibrated=False)))
    return rows


def backbone(model: ModelConfig) -> tuple:
    """What a network's backbone is built from (its head aside): architecture, width, stem width, stem."""
    return model.arch, model.width, model.stem_width, model.stem


def table_references(references: dict[str, dict], summary: dict) -> dict[str, dict]:
    """The references a table is read against: the plan's, each with the accuracies the table measured of its own."""
    return references | {name: references.get(name, {}) | row for name, row in summary.get("references", {}).items()}


def teacher_setting(cfg: Config, plan: ReproPlan, out: Path, name: str | None) -> tuple[Config, Path]:
    """The config of the runs under teacher `name` of repro.teachers (None: the repro teacher), and the folder
    their bag files and runs go to (OUT itself for the repro teacher: its runs are shared with the other tables)."""
    spec = plan.teachers[name] if name is not None else None
    if spec is None or spec.is_repro_teacher:
        return cfg, out
    root = out / "teachers" / name
    teacher_cfg = copy.deepcopy(cfg)
    if spec.checkpoint:
        teacher_cfg.teacher.checkpoint = resolve_checkpoint(spec.checkpoint)
        return teacher_cfg, root
    recipe = load_config(spec.preset, None, list(spec.overrides), stage="pretrain", base=copy.deepcopy(cfg))
    recipe.trainer, recipe.seed, recipe.teacher.checkpoint = copy.deepcopy(cfg.trainer), cfg.seed, ""  # how it runs
    log.info("repro: teacher %s (MoCo-v2%s)", name, f", preset {spec.preset}" if spec.preset else "")
    teacher_cfg.teacher.checkpoint = str(run_pretrain(recipe, root / "teacher", resume=True))
    return teacher_cfg, root


def judge(plan: ReproPlan, summaries: dict[str, dict], references: dict[str, dict]) -> list[dict]:
    """Every claim whose table is done, on each of its metrics: both sides' mean ± std, the paired difference with
    its 95% interval, the p-value Holm-corrected over all of them, the detectable effect, the verdict.

    A claim is judged on its own `metric` if it names one, else on each of repro.metrics.
    """
    judged, comparisons = [], []
    for claim in plan.claims:
        summary = summaries.get(claim.table)
        if summary is None:
            continue
        for metric in [claim.metric] if claim.metric else plan.metrics:
            sides = {side: _values(summary, getattr(claim, side), metric, references.get("teacher"))
                     for side in ("better", "worse")}
            if not sides["better"] or not sides["worse"]:
                continue
            for side, other in (("better", "worse"), ("worse", "better")):  # the teacher's value: exact, every seed
                if getattr(claim, side) == "teacher":
                    sides[side] = dict.fromkeys(sides[other], sides[side]["reference"])
            comparison = paired_comparison(sides["better"], sides["worse"], claim.margin)
            stated = {k: v for k, v in dataclasses.asdict(claim).items() if v is not None}  # as the plan gives it
            comparisons.append(comparison)
            judged.append({**stated, "metric": metric, **{key: _rounded(value, 6 if key == "p" else 2) for key, value
                                                           in dataclasses.asdict(comparison).items()},
                           **{f"{side}_mean": round(float(np.mean(list(v.values()))), 2) for side, v in sides.items()},
                           **{f"{side}_std": round(float(np.std(list(v.values()), ddof=1)) if len(set(v.values())) > 1
                                                   else 0.0, 2) for side, v in sides.items()}})
    for entry, comparison, corrected in zip(judged, comparisons, holm([c.p for c in comparisons]), strict=True):
        entry |= {"p_holm": _rounded(corrected, 6), "verdict": comparison.verdict(corrected)}
    return judged


def _rounded(value: float | int | None, digits: int = 2) -> float | int | None:
    """A number for results.json: rounded, NaN as None."""
    if value is None or isinstance(value, int):
        return value
    return None if math.isnan(value) else round(value, digits)


def _values(summary: dict, run: str, metric: str, reference: dict | None) -> dict[str, float]:
    """A run's value of `metric` for each seed (seed -> value; the teacher: its one reference value)."""
    if run == "teacher":
        return {"reference": reference[metric]} if reference and metric in reference else {}
    seeds = summary["runs"].get(run, {}).get("seeds", {})
    return {str(seed): values[metric] for seed, values in seeds.items() if metric in values}


def log_part(out: Path, command: str, table: str, seconds: float) -> None:
    """Append a finished table (the command that ran it, its wall time there) to OUT/parts.json."""
    path = out / "parts.json"
    parts = json.loads(path.read_text()) if path.exists() else []
    parts.append({"command": command, "table": table, "wall_time_s": round(seconds, 1),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit()})
    path.write_text(json.dumps(parts, indent=2))


def compute_seconds(out: Path) -> float:
    """The wall time of every piece OUT holds: teachers, references, bags, trainings and evaluations (reused ones
    once)."""
    pieces = [root / "teacher" for root in (out, *(out / "teachers").glob("*"))]
    pieces += [*out.glob("bags/*"), *out.glob("runs/*/seed-*"), *out.glob("teachers/*/bags/*"),
               *out.glob("teachers/*/runs/*/seed-*")]
    return _seconds(pieces) + _seconds([], (out / "references").glob("*/*/results.json"))


def investigation_seconds(out: Path, plan: ReproPlan) -> float:
    """The part of compute_seconds spent on the runs that only investigations show (trainings and evaluations)."""
    paper = {run_of(run) for table in plan.tables.values() if not table.investigation for run in table.runs}
    only = {run_of(run) for table in plan.tables.values() if table.investigation for run in table.runs} - paper
    return _seconds([piece for name in sorted(only) for piece in out.glob(f"runs/{glob.escape(name)}/seed-*")])


def _seconds(pieces: list[Path], files: Iterable[Path] = ()) -> float:
    """The recorded wall time of pieces (their results.json and their evaluations') and of result files, summed."""
    files = [*files, *(f for piece in pieces for f in [piece / "results.json", *piece.glob("eval/*/results.json")])]
    return round(sum(json.loads(f.read_text()).get("wall_time_s", 0.0) for f in files if f.exists()), 1)


def current_tables(plan: ReproPlan, out: Path) -> dict[str, dict]:
    """The summaries of the plan's tables that OUT holds, but those made by another plan (their rows are not the
    table's runs now: shown again only once the table is run again)."""
    summaries = {}
    for table in plan.tables.values():
        path = out / "tables" / table.name / "results.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        if {run_of(row) for row in summary["runs"]} == set(table.runs):
            summaries[table.name] = summary
        else:
            log.info("table %s in %s was made by another plan; not shown until it runs again (--tables %s)",
                     table.name, out, table.name)
    return summaries


def write_report(cfg: Config, plan: ReproPlan, out: Path, references: dict[str, dict] | None) -> dict:
    """OUT/results.json and OUT/results.md: every table done so far, each claim's verdict, machine, wall times."""
    summaries = current_tables(plan, out)
    parts = json.loads((out / "parts.json").read_text()) if (out / "parts.json").exists() else []
    references = references or {}
    report = {"machine": machine_info(), "seeds": list(cfg.compare.seeds), "teacher": references.get("teacher"),
              "references": references, "tables": summaries, "parts": parts,
              "wall_time_s": round(sum(p["wall_time_s"] for p in parts), 1), "compute_s": compute_seconds(out),
              "investigations_s": investigation_seconds(out, plan),
              "intro": plan.intro, "flops": counted_flops(cfg, plan, summaries)}
    return render_report(plan, report, out)


def counted_flops(cfg: Config, plan: ReproPlan, summaries: dict[str, dict]) -> dict[str, float]:
    """Each shown run's counted training arithmetic in TFLOP: its step's FLOPs per sample (methods.flops) times the
    samples of an epoch times its epochs (the same under every teacher: RUN@TEACHER counts as RUN)."""
    images = len(build_dataset(cfg.data, "train"))
    names = dict.fromkeys(run_of(row) for summary in summaries.values() for row in summary["runs"])
    flops = {}
    for name in names:
        run = compare.run_settings(cfg, plan.runs[name])
        flops[name] = float(f"{step_flops_per_sample(run) * images * run.distill.optim.epochs / 1e12:.4g}")
    return flops


def run_of(row: str) -> str:
    """The run of a table row: RUN@TEACHER (a run under one of a table's teachers) or RUN."""
    return row.split("@")[0]


REPORT_KEYS = ("machine", "seeds", "teacher", "tables", "parts", "wall_time_s", "compute_s")  # what a page is made of


def render_report(plan: ReproPlan, report: dict, out: Path) -> dict:
    """OUT/results.json, results.md and results/TABLE.png from a report's data, every claim judged by the plan."""
    references = report.get("references") or ({"teacher": report["teacher"]} if report["teacher"] else {})
    report = {key: report[key] for key in REPORT_KEYS} | {"references": references, "metrics": list(plan.metrics),
                                                         "claims": judge(plan, report["tables"], references),
                                                         "intro": report.get("intro", ""),
                                                         "flops": report.get("flops", {}),
                                                         "investigations_s": report.get("investigations_s", 0.0)}
    for summary in report["tables"].values():  # the counted arithmetic beside the wall time, one value per run
        for name, run in summary["runs"].items():
            if run_of(name) in report["flops"]:
                run["mean"][FLOPS], run["std"][FLOPS] = report["flops"][run_of(name)], 0.0
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, report)
    for table, summary in report["tables"].items():
        table_chart(summary, table_references(references, summary), out / "results" / f"{table}.png")
        if has_gains(summary):
            gain_chart(summary, plan.metrics, out / "results" / f"{table}-gain.png")
    (out / "results.md").write_text(report_markdown(plan, report))
    return report


def read_report(path: Path) -> dict:
    """A report's data from its results.json (as `bingo repro` writes it), checked in one line."""
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path} as a 'bingo repro' results.json ({err}); pass the results.json of a "
                        "repro folder") from None
    missing = [key for key in REPORT_KEYS if key not in report] if isinstance(report, dict) else list(REPORT_KEYS)
    if missing:
        raise UserError(f"{path} is not a 'bingo repro' results.json: it lacks {', '.join(missing)}")
    return report


def table_chart(summary: dict, references: dict[str, dict], path: Path) -> None:
    """Left: each run's accuracies (mean ± std over seeds) from zero, the references as lines (one style each, the
    metric's colour). Right: accuracy against training cost (counted FLOPs, else wall time). Legends outside the
    data."""
    plt = pyplot()
    runs = summary["runs"]
    metrics = [m for m in shown_columns([run["mean"] for run in runs.values()])
               if "top-1" in m and all(m in run["mean"] for run in runs.values())]
    figure, (bars, times) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        x = np.arange(len(runs)) + i * width
        bars.bar(x, [run["mean"][metric] for run in runs.values()], width,
                 yerr=[run["std"][metric] for run in runs.values()], capsize=3, label=metric, color=f"C{i}")
        for (name, row), style in zip(references.items(), ("--", ":", "-."), strict=False):
            if metric in row:
                bars.axhline(row[metric], color=f"C{i}", linestyle=style, linewidth=1, label=f"{name}, {metric}")
    bars.set_xticks(np.arange(len(runs)) + width * (len(metrics) - 1) / 2, list(runs), rotation=30, ha="right",
                    fontsize=8)
    bars.set_ylim(0, 100)
    bars.set_ylabel("accuracy (%)")
    bars.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.35), ncols=3, frameon=False)
    counted = all(FLOPS in run["mean"] for run in runs.values())  # the cost that does not depend on the machine
    metric, clock, scale = metrics[-1], *((FLOPS, 1) if counted else ("train wall time (s)", 60))
    for i, (name, run) in enumerate(runs.items()):
        if clock in run["mean"]:
            times.errorbar(run["mean"][clock] / scale, run["mean"][metric], yerr=run["std"][metric],
                           xerr=run["std"][clock] / scale, fmt="o", capsize=3, color=f"C{i % 10}", label=name)
    times.set_xlabel("training arithmetic per run (TFLOP, counted)" if counted else "training time per run (min)")
    times.set_ylabel(metric + " (%)")
    times.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    figure.suptitle(f"mean ± std over {len(summary['seeds'])} seeds", fontsize=9)
    save_figure(figure, path)


def _paper_time(report: dict) -> str:
    """', of which the paper's tables N min and the runs of investigations alone M min', where the data says."""
    extra = report.get("investigations_s") or 0.0
    return (f", of which the paper's tables {(report['compute_s'] - extra) / 60:.0f} min and the runs only "
            f"investigations show {extra / 60:.0f} min" if extra else "")


def report_markdown(plan: ReproPlan, report: dict) -> str:
    """The report as Markdown: its introduction, the verdicts in short, the claims, one section per table."""
    intro = report.get("intro", "").strip()
    lines = ["# Results: the paper's tables in miniature", "", *([intro, ""] if intro else []),
             *verdicts_in_short(plan, report), "", f"Machine: {_machine(report['machine'])}. Time: "
             f"{report['compute_s'] / 60:.0f} min, the sum of every training, bag building and evaluation it holds"
             f"{_paper_time(report)}; the parts below ran for {report['wall_time_s'] / 60:.0f} min (a part that was "
             "interrupted is not listed).", "",
             "## Claims", "", CLAIMS_RULE, "",
             "| claim | metric | better | worse | paired difference [95% CI] | p (Holm) | detectable | verdict "
             "| paper |", "|---|---|---|---|---|---|---|---|---|"]
    for previous, c in zip([{}, *report["claims"]], report["claims"], strict=False):
        claim = "" if previous.get("claim") == c["claim"] else c["claim"]  # one claim, several metrics: named once
        claim += f" (margin {c['margin']:g})" if claim and c.get("margin") else ""
        lines.append(f"| {claim} | {c['metric']} | {c['better']} {c['better_mean']:.1f} ± {c['better_std']:.1f} "
                     f"| {c['worse']} {c['worse_mean']:.1f} ± {c['worse_std']:.1f} | {_interval(c)} "
                     f"| {_number(c['p_holm'], '.3f')} | {_number(c['detectable'], '.1f')} | {c['verdict']} "
                     f"| {c.get('paper', '-') if claim else ''} |")
    for table, summary in report["tables"].items():
        spec = plan.tables[table]
        references = table_references(report["references"], summary)
        lines += ["", f"## {spec.title or table}", "", table_markdown(summary, references), "",
                  f"![{table}](results/{table}.png)"]
        if has_gains(summary):
            lines += ["", GAIN_RULE, "", *(gain_markdown(summary, metric) for metric in plan.metrics),
                      f"![{table}: gain against the teacher's lead](results/{table}-gain.png)"]
        if spec.note:
            lines += ["", spec.note]
    lines += ["", "## Commands", "", "| table | wall time (min) | finished | commit | command |",
              "|---|---|---|---|---|"]
    lines += [f"| {p['table']} | {p['wall_time_s'] / 60:.1f} | {p['finished']} | {p.get('commit', '-')} "
              f"| `{p['command']}` |" for p in report["parts"]]
    return "\n".join(lines) + "\n"


def verdicts_in_short(plan: ReproPlan, report: dict) -> list[str]:
    """'**In short.**': how many claims hold, are reversed or stay inconclusive, which hold or are reversed, and the
    tables of the plan not run yet."""
    claims = report["claims"]
    counts = {verdict: sum(c["verdict"] == verdict for c in claims) for verdict in ("holds", "reversed")}
    lines = [f"**In short.** Of {len(claims)} claim rows judged (each claim on each of its metrics), "
             f"{counts['holds']} hold, {counts['reversed']} are reversed and {len(claims) - sum(counts.values())} "
             "are inconclusive or without a verdict."]
    for verdict in ("holds", "reversed"):
        lines += [f"- **{verdict}**: {c['claim']} ({c['metric']}: {_interval(c)})" for c in claims
                  if c["verdict"] == verdict]
    missing = [name for name in plan.chosen_tables(None) if name not in report["tables"]]
    if missing:
        lines += ["", f"Not run yet: table{'s' if len(missing) > 1 else ''} {', '.join(missing)} (their claims are "
                  "not judged above)."]
    return lines


def _machine(machine: dict) -> str:
    """'CPU, N cores, GPU, torch V' from `training.machine_info` (or the keys an older bingo wrote)."""
    cpu = machine.get("cpu") or machine.get("processor", "unknown CPU")
    gpu = machine.get("gpu") or machine.get("device") or "no GPU"
    return f"{cpu}, {machine.get('cores') or machine.get('cpu_cores')} cores, {gpu}, torch {machine.get('torch')}"


CLAIMS_RULE = ("Seeds are paired (every run of a seed starts from the same student weights): the difference is the "
               "mean of the per-seed differences, with its 95% t interval; p is the paired t-test's, corrected by "
               "Holm over every row below; a claim holds or is reversed at corrected p < 0.05, else it is "
               "inconclusive. A claim with a margin m ('at least as good as') tests difference > -m. 'detectable': "
               "the smallest true difference this number of seeds finds with 80% power.")


def _interval(c: dict) -> str:
    """'+1.2 [-0.3, +2.7]' (no interval under two seeds)."""
    if c["low"] is None:
        return f"{c['difference']:+.1f}"
    return f"{c['difference']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_markdown(summary: dict, references: dict[str, dict]) -> str:
    """One table: mean ± std over seeds of the shown accuracies and training time; the references' rows below."""
    columns = shown_columns([run["mean"] for run in summary["runs"].values()])
    text = compare_table(summary, columns)
    methods = {"teacher": "moco", "raw pixels": "-", "random student": "-"}
    for name, row in references.items():
        if any(k in row for k in columns):
            text += f"\n| {name} (reference) | {methods.get(name, '-')} | 1 | " + " | ".join(
                f"{row[k]:.1f}" if k in row else "-" for k in columns) + " |"
    return text


GAIN_RULE = ("Each teacher's lead is its accuracy minus the baseline's (the row trained without a teacher, mean over "
             "seeds); each student's gain is its paired difference from the baseline, mean over seeds with its 95% "
             "interval.")


def has_gains(summary: dict) -> bool:
    """Whether a table shows gains over a baseline: it has teachers and a row that none of them trains."""
    return bool(summary.get("teachers")) and any("@" not in name for name in summary["runs"])


def teacher_gains(summary: dict, metric: str) -> tuple[str | None, list[dict]]:
    """The baseline row (the first that no teacher trains) and, per teacher and row under it: the teacher's lead
    over the baseline on `metric` and the row's paired gain over the baseline (none without a baseline)."""
    runs = summary["runs"]
    baseline = next((name for name in runs if "@" not in name), None)
    if baseline is None:
        return None, []
    base_seeds = {seed: values[metric] for seed, values in runs[baseline]["seeds"].items() if metric in values}
    gains = []
    for teacher, accuracy in summary["teachers"].items():
        for name, run in runs.items():
            if name.endswith(f"@{teacher}") and metric in accuracy:
                seeds = {seed: values[metric] for seed, values in run["seeds"].items() if metric in values}
                gain = paired_comparison(seeds, base_seeds)
                gains.append({"teacher": teacher, "run": run_of(name), "teacher_value": accuracy[metric],
                              "lead": accuracy[metric] - float(np.mean(list(base_seeds.values()))),
                              **{key: _rounded(getattr(gain, key)) for key in ("difference", "low", "high")}})
    return baseline, gains


def gain_markdown(summary: dict, metric: str) -> str:
    """One row per teacher (weakest first): its accuracy and lead, each student's gain [95% CI] over the baseline."""
    baseline, gains = teacher_gains(summary, metric)
    runs = list(dict.fromkeys(g["run"] for g in gains))
    teachers = sorted(dict.fromkeys(g["teacher"] for g in gains), key=lambda t: summary["teachers"][t][metric])
    lines = [f"| teacher | teacher {metric} | lead over {baseline} | " + " | ".join(f"{run}: gain" for run in runs)
             + " |", "|" + "---|" * (3 + len(runs))]
    for teacher in teachers:
        cells = {g["run"]: g for g in gains if g["teacher"] == teacher}
        first = next(iter(cells.values()))
        lines.append(f"| {teacher} | {first['teacher_value']:.1f} | {first['lead']:+.1f} | " + " | ".join(
            _interval(cells[run]) if run in cells else "-" for run in runs) + " |")
    return "\n".join(lines) + "\n"


def gain_chart(summary: dict, metrics: tuple[str, ...], path: Path) -> None:
    """Per metric: each student's gain over the baseline (95% CI) against its teacher's lead, one colour per
    method, zero marked; legend outside the data."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1.6, 3.6), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        baseline, gains = teacher_gains(summary, metric)
        for i, run in enumerate(dict.fromkeys(g["run"] for g in gains)):
            mine = sorted((g for g in gains if g["run"] == run), key=lambda g: g["lead"])
            gain = np.array([g["difference"] for g in mine])
            low, high = (np.array([g[key] if g[key] is not None else g["difference"] for g in mine])
                         for key in ("low", "high"))
            axis.errorbar([g["lead"] for g in mine], gain, yerr=[gain - low, high - gain], fmt="o-", capsize=3,
                          color=f"C{i}", label=run)
        axis.axhline(0, color="grey", linewidth=1, linestyle="--", label=f"{baseline} (no teacher)")
        axis.set_xlabel(f"teacher's lead over {baseline} ({metric}, points)")
        axis.set_ylabel(f"student's gain over {baseline} (points)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    figure.suptitle(f"paired over {len(summary['seeds'])} seeds, 95% intervals", fontsize=9)
    save_figure(figure, path)
