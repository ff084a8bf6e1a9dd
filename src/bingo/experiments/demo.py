"""`bingo demo`: students distilled from a shipped teacher, beside MoCo-v2 and references, on one page.

The chain: the teacher (zoo, or pretrained first with demo.pretrain=true) -> kNN bags -> one student
per method in demo.methods at equal epochs, and the methods in demo.equal_time again for as long as
BINGO's training took -> every model evaluated (kNN, linear) beside raw pixels, random weights and
the teacher -> results.md, results.json and report.html in the run folder.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from bingo.config import Config
from bingo.data.datasets import build_dataset
from bingo.errors import UserError
from bingo.eval.engine import eval_datasets
from bingo.experiments.page import settings_digest, write_demo_page
from bingo.methods import METHODS
from bingo.models.checkpoints import load_encoder
from bingo.stages.bags import run_bags
from bingo.stages.common import random_encoder, read_json, slug
from bingo.stages.distill import run_distill
from bingo.stages.evaluate import evaluate_once
from bingo.stages.pretrain import run_pretrain
from bingo.training import file_digest, machine_info, peak_memory_mib, prepare_run_folder, write_results
from bingo.zoo import resolve_checkpoint

log = logging.getLogger("bingo")
EQUAL_TIME = "{method}, BINGO's wall time"  # the label of a student trained for as long as BINGO's


def run_demo(cfg: Config, out: Path, resume: bool = False, command: str = "bingo demo") -> dict:
    """Teacher -> bags -> students -> evaluation of every model and the references; returns results.json's dict."""
    check_demo(cfg)
    build_dataset(cfg.data, "train")  # a missing data set fails here, before the run folder exists
    shipped = None if cfg.demo.pretrain else Path(resolve_checkpoint(cfg.demo.teacher))
    if shipped:
        load_encoder(shipped, cfg.teacher, cfg.data)  # a missing or unfit teacher fails here, before any work
    earlier = read_json(out / "results.json") if resume and (out / "results.json").is_file() else {}
    prepare_run_folder(out, cfg, resume)
    teacher = shipped or run_pretrain(cfg, out / "teacher", resume=True)  # each stage reuses or resumes its own
    cfg = copy.deepcopy(cfg)
    cfg.teacher.checkpoint = str(teacher)
    cfg.distill.bags = str(run_bags(cfg, out / "bags", resume=True))
    students = {method: run_distill(_with(cfg, method), out / method, resume=True) for method in cfg.demo.methods}
    equal_time = {}
    for method in cfg.demo.equal_time:
        equal_time[method] = equal_time_epochs(out / "bingo", out / method, cfg.distill.optim.epochs)
        log.info("%s for %d epochs: BINGO's wall time", method, equal_time[method])
        students[EQUAL_TIME.format(method=method)] = run_distill(_with(cfg, method, equal_time[method]),
                                                                 out / f"{method}-equal-time", resume=True)
    rows, evaluations = evaluate_models(cfg, out, teacher, students)
    folders = {"pretrain teacher (MoCo-v2)": out / "teacher", "build kNN bags": out / "bags",
               **{f"distil student ({name})": path.parent for name, path in students.items()}}
    timings = {name: read_json(folder / "results.json")["wall_time_s"] for name, folder in folders.items()
               if (folder / "results.json").exists()}  # the time each took when it was made
    timings["evaluate"] = round(sum(read_json(folder / "results.json")["wall_time_s"] for folder in evaluations), 1)
    peak = {key: max(value, earlier.get("peak_memory", {}).get(key, 0)) for key, value in peak_memory_mib().items()}
    results = {"rows": rows, "stage_wall_time_s": timings, "peak_memory": peak,  # over this run and the one resumed
               "bags": read_json(out / "bags" / "results.json"), "seed": cfg.seed,
               "teacher": {"file": str(teacher), "source": cfg.demo.teacher if shipped else "pretrained"},
               "students": {name: student_summary(path) for name, path in students.items()},
               "equal_time_epochs": equal_time, "test_images": len(build_dataset(cfg.data, "test")),
               "machine": machine_info(), "command": command,
               "earlier_runs": _earlier_runs(earlier),
               "settings": settings_digest(cfg, file_digest(teacher))}
    write_results(out, results)
    print(write_demo_page(out, results))
    return results


def check_demo(cfg: Config) -> None:
    """Refuse demo settings that cannot work, before anything runs."""
    unknown = [m for m in [*cfg.demo.methods, *cfg.demo.equal_time] if m not in METHODS]
    if unknown:
        raise UserError(f"demo.methods / demo.equal_time name unknown methods ({', '.join(unknown)}); choose from: "
                        f"{', '.join(METHODS)}")
    if "bingo" not in cfg.demo.methods:
        raise UserError("demo.methods must include bingo: the demo compares the other students with it")
    missing = [m for m in cfg.demo.equal_time if m not in cfg.demo.methods]
    if missing:
        raise UserError(f"demo.equal_time methods must also be in demo.methods (the equal-epoch run gives their "
                        f"speed): add {', '.join(missing)} to demo.methods")


def equal_time_epochs(bingo_run: Path, other_run: Path, epochs: int) -> int:
    """Epochs in which the other method's training takes as long as BINGO's did for `epochs` (at least `epochs`)."""
    bingo_s = read_json(bingo_run / "results.json").get("fit_time_s")
    other_s = read_json(other_run / "results.json").get("fit_time_s")
    if not bingo_s or not other_s:
        raise UserError(f"{bingo_run} or {other_run} has no training time in its results.json (made by an older "
                        "bingo); remove those folders and rerun the demo with --resume")
    return max(epochs, round(epochs * bingo_s / other_s))


def _earlier_runs(earlier: dict) -> list[dict]:
    """The commands and commits of the runs a resumed demo continues (what it reused was made by them)."""
    if not earlier:
        return []
    return [*earlier.get("earlier_runs", []),
            {"command": earlier.get("command"), "commit": earlier.get("machine", {}).get("commit")}]


def student_summary(student: Path) -> dict:
    """A student run's epochs, training time and wall time, from its results.json."""
    results = read_json(student.parent / "results.json")
    return {key: results.get(key) for key in ("method", "epochs", "steps", "fit_time_s", "wall_time_s")}


def evaluate_models(cfg: Config, out: Path, teacher: Path, students: dict[str, Path]) -> tuple[dict[str, dict],
                                                                                                 list[Path]]:
    """kNN and linear rows of the references (pixels, random weights, the teacher) and of every student, and the
    folders of their evaluations (a student's lies in its run folder; one made with the same settings is reused)."""
    teacher_id = file_digest(teacher)
    models = {"raw pixels": ("pixels", "student", lambda: None),
              "teacher, random weights, BN at init": ("random-init", "teacher",
                                                      lambda: random_encoder(cfg, cfg.teacher, calibrated=False)),
              "student, random weights, BN at init": ("random-init", "student",
                                                      lambda: random_encoder(cfg, cfg.student, calibrated=False)),
              "teacher (MoCo-v2)": (teacher_id, "teacher", lambda: load_encoder(teacher, cfg.teacher, cfg.data))}
    folders = {name: out / "eval" / slug(name) for name in models}
    for name, path in students.items():
        label = f"student, {_label(name)}"
        models[label] = (file_digest(path), "student", lambda p=path: load_encoder(p, cfg.student, cfg.data))
        folders[label] = path.parent / "eval"
    datasets = eval_datasets(cfg)
    rows = {name: next(iter(evaluate_once(cfg, folders[name], name, ("knn", "linear"), model, build, section,
                                       datasets)["rows"].values()))
            for name, (model, section, build) in models.items()}
    return rows, list(folders.values())


def _label(method: str) -> str:
    """'moco' -> 'MoCo-v2', 'bingo' -> 'BINGO'; other names as they are."""
    names = {"moco": "MoCo-v2", "bingo": "BINGO", "disco": "DisCo", "seed": "SEED", "simreg": "SimReg",
             "compress-1q": "CompRess-1q", "compress-2q": "CompRess-2q"}
    first, _, rest = method.partition(",")
    return names.get(first, first) + ("," + rest if rest else "")


def _with(cfg: Config, method: str, epochs: int | None = None) -> Config:
    """A copy of cfg that distils with `method` (for `epochs`, when given)."""
    cfg = copy.deepcopy(cfg)
    cfg.distill.method = method
    if epochs is not None:
        cfg.distill.optim.epochs = epochs
    return cfg
