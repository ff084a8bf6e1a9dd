"""`bingo repro`: tables sharing runs and bag files, the verdicts, the parts, resume, and the checks on a plan."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from bingo.cli import main
from bingo.config import load_config
from bingo.errors import UserError
from bingo.experiments.plans import ReproPlan
from bingo.experiments.repro import compute_seconds, current_tables, investigation_seconds
from conftest import read_json, tiny_sets

PLAN = """
repro:
  intro: "What this page is."
  bags:
    knn-3: {set: [bags.strategy=knn, bags.k=3]}
    self: {set: [bags.strategy=self]}
    student-3: {set: [bags.strategy=student, bags.k=3], model: moco}
  runs:
    moco: {}
    bingo: {bags: knn-3}
    bingo-self: {method: bingo, bags: self}
    bingo-student: {method: bingo, bags: student-3}
  tables:
    main: {title: "Main", runs: [moco, bingo]}
    relations: {title: "Relations", runs: [moco, bingo-self, bingo-student, bingo], note: "a note"}
  claims:
    - {claim: "bingo beats moco", table: main, better: bingo, worse: moco, paper: "61.4 vs 52.5"}
    - {claim: "teacher bags beat none", table: relations, better: bingo, worse: bingo-self, metric: kNN@3 top-1}
    - {claim: "the teacher beats bingo", table: main, better: teacher, worse: bingo}
"""


def repro_args(out, plan, *extra: str) -> list[str]:
    return ["repro", "--preset", "demo", "--config", str(plan),
            *tiny_sets("trainer.limit_train_batches=2", "eval.linear.epochs=1"), "--seeds", "0", "1",
            "--out", str(out), *extra]


def test_tables_share_runs_and_resume_in_parts(tmp_path, capsys, bingo_logger_guard):
    plan, out = tmp_path / "plan.yaml", tmp_path / "repro"
    plan.write_text(PLAN)
    assert main(repro_args(out, plan, "--tables", "main")) == 0
    report = read_json(out / "results.json")
    assert list(report["tables"]) == ["main"]
    assert [(c["claim"], c["metric"]) for c in report["claims"]] == [
        ("bingo beats moco", "linear top-1"), ("bingo beats moco", "kNN@10 top-1"),
        ("the teacher beats bingo", "linear top-1"), ("the teacher beats bingo", "kNN@10 top-1")]
    assert report["teacher"]["linear top-1"] == pytest.approx(report["claims"][2]["better_mean"], abs=0.01)
    assert list(report["references"]) == ["teacher", "raw pixels", "random student"]
    assert set(report["flops"]) == {"moco", "bingo"} and report["flops"]["bingo"] > 2 * report["flops"]["moco"] > 0
    assert report["tables"]["main"]["runs"]["bingo"]["mean"]["train TFLOP (counted)"] == report["flops"]["bingo"]
    assert report["references"]["teacher"] == report["teacher"]
    page = (out / "results.md").read_text()
    assert page.startswith("# Results: the paper's tables in miniature\n\nWhat this page is.\n\n"
                           "**In short.** Of 4 claim")
    assert "Not run yet: table relations (their claims are not judged above)." in page
    assert "| main | " in page and f"| {read_json(out / 'parts.json')[0]['commit']} | `bingo repro" in page
    main_table = page.split("## Main")[1]
    assert all(f"| {name} (reference) |" in main_table for name in report["references"])
    p_values = [claim["p"] for claim in report["claims"]]
    for claim in report["claims"]:  # paired over the two seeds, Holm-corrected over the four rows
        difference = claim["difference"]
        assert difference == pytest.approx(claim["better_mean"] - claim["worse_mean"], abs=0.011)
        assert claim["pairs"] == 2 and claim["low"] <= difference <= claim["high"]
        assert claim["p"] <= claim["p_holm"] <= min(1.0, 4 * claim["p"]) + 1e-4
        expected = "inconclusive" if claim["p_holm"] >= 0.05 else "holds" if difference > 0 else "reversed"
        assert claim["verdict"] == expected, claim
    assert min(p_values) == pytest.approx(min(c["p_holm"] for c in report["claims"]) / 4, abs=1e-4) or \
        min(c["p_holm"] for c in report["claims"]) == 1.0
    assert report["claims"][2]["worse_std"] >= 0 and report["claims"][2]["better_std"] == 0.0  # the teacher: exact
    assert [p["table"] for p in read_json(out / "parts.json")] == ["main"]
    first = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("student.safetensors")}
    assert len(first) == 4  # moco and bingo, two seeds each

    capsys.readouterr()
    assert main(repro_args(out, plan, "--tables", "relations")) == 2  # the folder holds a run: --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main(repro_args(out, plan, "--tables", "relations", "--resume")) == 0
    log = capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in first} == first  # shared with the main table: reused
    assert "runs/bingo/seed-0: student.safetensors already made with these settings" in log
    assert (out / "runs" / "bingo-student" / "seed-1" / "student.safetensors").exists()
    assert "evaluating bingo seed 0" not in log and "evaluating bingo-student seed 1" in log
    bags = read_json(out / "bags" / "student-3" / "results.json")
    assert bags["source"]["path"].endswith("runs/moco/seed-0/student.safetensors")

    report = read_json(out / "results.json")
    assert list(report["tables"]) == ["main", "relations"] and len(report["claims"]) == 5
    assert [c["metric"] for c in report["claims"] if c["claim"] == "teacher bags beat none"] == ["kNN@3 top-1"]
    assert [p["table"] for p in report["parts"]] == ["main", "relations"]
    trainings = sum(read_json(f)["wall_time_s"] for f in (out / "runs").glob("*/seed-*/results.json"))
    assert report["compute_s"] > trainings + read_json(out / "teacher" / "results.json")["wall_time_s"]
    text = (out / "results.md").read_text()
    assert "## Claims" in text and "## Main" in text and "## Relations" in text and "a note" in text
    assert "| teacher (reference) |" in text and "--tables relations --resume" in text
    for table in ("main", "relations"):
        assert (out / "tables" / table / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "results" / f"{table}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"![{table}](results/{table}.png)" in text

    # --report rewrites the report from what is there, training nothing.
    (out / "results.md").unlink()
    assert main(repro_args(out, plan, "--report")) == 0
    assert (out / "results.md").read_text() == text
    # --report --from writes the same page again from results.json alone, the introduction included.
    assert main(repro_args(tmp_path / "again", plan, "--report", "--from", str(out / "results.json"))) == 0
    assert (tmp_path / "again" / "results.md").read_text() == text
    assert main(repro_args(tmp_path / "none", plan, "--report")) == 2
    assert "holds no 'bingo repro' run" in capsys.readouterr().err


GRADED = """
repro:
  teachers:
    own: {}
    short: {set: [pretrain.optim.epochs=1, pretrain.moco.queue_size=64]}
  bags:
    knn-3: {set: [bags.strategy=knn, bags.k=3]}
  runs:
    moco: {}
    bingo: {bags: knn-3}
  tables:
    main: {title: "Main", runs: [moco, bingo]}
    graded: {title: "Graded", runs: [moco, bingo], teachers: [short, own]}
  claims:
    - {claim: "bingo beats moco, short teacher", table: graded, better: bingo@short, worse: moco}
"""


def test_a_table_of_teachers_trains_each_run_under_each_teacher(tmp_path, bingo_logger_guard):
    plan, out = tmp_path / "plan.yaml", tmp_path / "repro"
    plan.write_text(GRADED)
    assert main(repro_args(out, plan, "--tables", "main")) == 0
    shared = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("student.safetensors")}
    assert main(repro_args(out, plan, "--tables", "graded", "--resume")) == 0
    assert {p: p.stat().st_mtime_ns for p in shared} == shared  # moco and bingo@own: the main table's runs
    short = out / "teachers" / "short"
    settings = read_json(short / "teacher" / "run.json")["settings"]
    assert (settings["pretrain.optim.epochs"], settings["pretrain.moco.queue_size"]) == (1, 64)
    assert read_json(short / "bags" / "knn-3" / "results.json")["source"]["path"].startswith(str(short / "teacher"))
    assert sorted(p.parent.name for p in (short / "runs" / "bingo").glob("seed-*/student.safetensors")) == \
        ["seed-0", "seed-1"]
    summary = read_json(out / "tables" / "graded" / "results.json")
    assert list(summary["runs"]) == ["moco", "bingo@short", "bingo@own"]
    assert set(summary["teachers"]) == {"short", "own"}
    assert summary["teachers"]["own"] == read_json(out / "results.json")["teacher"]  # the repro teacher itself
    report = read_json(out / "results.json")
    assert [(c["better"], c["worse"]) for c in report["claims"]] == [("bingo@short", "moco")] * 2
    text = (out / "results.md").read_text().split("## Graded")[1]
    assert "| teacher | teacher linear top-1 | lead over moco | bingo: gain |" in text
    moco = statistics.mean(s["linear top-1"] for s in summary["runs"]["moco"]["seeds"].values())
    lead = summary["teachers"]["short"]["linear top-1"] - moco
    assert f"| short | {summary['teachers']['short']['linear top-1']:.1f} | {lead:+.1f} | " in text
    pieces = [f for f in out.rglob("results.json") if f.relative_to(out).parts[0] in
              {"teacher", "teachers", "bags", "runs", "references"}]  # every training, bag file and evaluation
    assert len([f for f in pieces if short in f.parents]) == 7  # teacher, its evaluation, bags, 2 x (run, eval)
    assert report["compute_s"] == pytest.approx(sum(read_json(f).get("wall_time_s", 0) for f in pieces), abs=0.2)
    assert (out / "results" / "graded-gain.png").read_bytes()[:4] == b"\x89PNG"
    assert "![graded: gain against the teacher's lead](results/graded-gain.png)" in text

    # A teacher given as a file: used as it is (here the short teacher's own file, so the same accuracies).
    file = f"    file: {{checkpoint: {short}/teacher/teacher.safetensors}}"
    plan.write_text(GRADED.replace("    own: {}", f"    own: {{}}\n{file}")
                    .replace("teachers: [short, own]", "teachers: [short, own, file]"))
    assert main(repro_args(out, plan, "--tables", "graded", "--resume")) == 0
    summary = read_json(out / "tables" / "graded" / "results.json")
    assert list(summary["runs"]) == ["moco", "bingo@short", "bingo@own", "bingo@file"]
    assert summary["teachers"]["file"] == summary["teachers"]["short"]
    assert not (out / "teachers" / "file" / "teacher" / "teacher.safetensors").exists()  # not pretrained


def _published(values: dict[str, list[float]]) -> dict:
    """A results.json as `bingo repro` publishes it: table main, each run's linear top-1 per seed."""
    runs = {name: {"method": name, "seeds": {str(seed): {"linear top-1": v} for seed, v in enumerate(vs)},
                   "mean": {"linear top-1": statistics.mean(vs)}, "std": {"linear top-1": statistics.stdev(vs)}}
            for name, vs in values.items()}
    return {"machine": {"cpu": "test CPU", "cores": 2, "gpu": None, "torch": "2"}, "seeds": [0, 1, 2, 3, 4],
            "teacher": {"linear top-1": 90.0}, "tables": {"main": {"runs": runs, "seeds": [0, 1, 2, 3, 4],
                                                                   "protocols": ["linear"]}},
            "parts": [], "wall_time_s": 60.0, "compute_s": 120.0, "claims": "judged again: never read"}


def test_a_published_report_is_rendered_again_from_its_results_json_alone(tmp_path, bingo_logger_guard):
    plan, published = tmp_path / "plan.yaml", tmp_path / "published.json"
    plan.write_text(PLAN.replace("paper: \"61.4 vs 52.5\"", "metric: linear top-1"))
    published.write_text(json.dumps(_published({"bingo": [71.0, 72.5, 71.5, 73.0, 72.0],
                                                "moco": [69.0, 70.5, 70.0, 70.5, 70.0]})))
    out = tmp_path / "page"
    assert main(["repro", "--preset", "demo", "--config", str(plan), "--report", "--from", str(published),
                 "--out", str(out)]) == 0
    claims = read_json(out / "results.json")["claims"]
    assert [(c["claim"], c["verdict"]) for c in claims] == [("bingo beats moco", "holds"),
                                                            ("the teacher beats bingo", "holds")]
    assert claims[0]["difference"] == pytest.approx(2.0) and claims[0]["pairs"] == 5
    page = (out / "results.md").read_text()
    assert "| bingo beats moco | linear top-1 | bingo 72.0 ± 0.8 | moco 70.0 ± 0.6 | +2.0 [" in page
    assert "Machine: test CPU, 2 cores, no GPU" in page and (out / "results" / "main.png").exists()


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_text("not json"), "cannot read"),
    (lambda path: path.write_text(json.dumps({"tables": {}})), "is not a 'bingo repro' results.json: it lacks"),
])
def test_a_bad_results_json_to_render_is_refused_in_one_line(tmp_path, capsys, make, message, bingo_logger_guard):
    published = tmp_path / "published.json"
    make(published)
    assert main(["repro", "--report", "--from", str(published), "--out", str(tmp_path / "page")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "page").exists()
    assert main(["repro", "--from", str(published), "--out", str(tmp_path / "page")]) == 2
    assert "pass --report as well" in capsys.readouterr().err


def test_the_shipped_plan_is_consistent():
    cfg = load_config("repro")
    plan = ReproPlan.load(cfg.repro)
    assert plan.chosen_tables(None) == ["main", "relations", "bags", "teachers", "transfer", "students", "semi", "k",
                                        "ablations"]  # the paper's
    assert plan.chosen_tables(["schedule", "queue"]) == ["queue", "schedule"]  # investigations: when named
    assert all(isinstance(claim.better, str) for claim in plan.claims) and plan.tables["main"].runs
    assert (cfg.teacher.width, cfg.student.width, cfg.data.train_subset) == (32, 16, 10000)  # demo's, inherited
    assert len(cfg.compare.seeds) >= 3 and cfg.trainer.accelerator == "auto"
    runs = plan.tables["relations"].runs
    assert len(runs) == 6  # the six rows of BINGO's teacher-parameter and relation ablation (arXiv 2107.01691)


def test_the_time_of_the_paper_tables_leaves_out_the_runs_only_investigations_show(tmp_path):
    plan = ReproPlan.load(load_config("repro").repro)  # moco: main and investigations; moco-no-shuffle: table 11 only
    for piece, seconds in [("runs/moco/seed-0", 10), ("runs/moco/seed-0/eval/knn+linear", 2), ("bags/knn-5", 3),
                           ("runs/moco-no-shuffle/seed-0", 20), ("runs/moco-no-shuffle/seed-1/eval/knn+linear", 4),
                           ("runs/bingo-lr0.6/seed-0", 40), ("references/raw-pixels/knn+linear", 1)]:
        (tmp_path / piece).mkdir(parents=True)
        (tmp_path / piece / "results.json").write_text(json.dumps({"wall_time_s": seconds}))
    assert compute_seconds(tmp_path) == 80 and investigation_seconds(tmp_path, plan) == 64


def test_a_table_made_by_another_plan_is_left_off_the_page_until_it_runs_again(tmp_path):
    plan = ReproPlan.load(load_config("repro").repro)
    for table, rows in [("shuffle-bn", ["moco", "moco-shuffle-keys"]), ("main", plan.tables["main"].runs),
                        ("teachers", ["moco", "seed@shipped", "seed@zoo-recipe-1-epoch", "disco@shipped",
                                      "bingo@shipped"])]:
        (tmp_path / "tables" / table).mkdir(parents=True)
        (tmp_path / "tables" / table / "results.json").write_text(json.dumps({"runs": dict.fromkeys(rows, {})}))
    assert list(current_tables(plan, tmp_path)) == ["main", "teachers"]  # table 11's rows were renamed since


MOCO = {"method": "moco"}  # a run of the plan


@pytest.mark.parametrize("plan,message", [
    ({"tables": {}}, "nothing to reproduce"),
    ({"runs": {"a": {**MOCO, "bags": "nope"}}, "tables": {"t": {"runs": ["a"]}}},
     "repro.runs.a: bags 'nope' is not in"),
    ({"runs": {"a": MOCO}, "tables": {"t": {"runs": ["b"]}}}, "repro.tables.t: run 'b' is not in repro.runs"),
    ({"runs": {"a": MOCO}, "tables": {"t": {"runs": []}}}, "repro.tables.t: no runs"),
    ({"runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"], "investigation": "yes"}}},
     "repro.tables.t.investigation must be true or false, not 'yes'"),
    ({"runs": {"a": {"lr": 1}}, "tables": {"t": {"runs": ["a"]}}}, "repro.runs.a has unknown keys ['lr']"),
    ({"runs": {"a": {**MOCO, "set": "distill.optim.lr=1"}}, "tables": {"t": {"runs": ["a"]}}},
     "repro.runs.a.set must be a list of strings, not 'distill.optim.lr=1'"),
    ({"runs": {"a": {"method": "simclr"}}, "tables": {"t": {"runs": ["a"]}}},
     "repro.runs.a: unknown method 'simclr'"),
    ({"runs": {"a": MOCO}, "tables": {"t": ["a"]}}, "repro.tables.t must be a mapping"),
    ({"bags": {"b": {"model": "x"}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.bags.b: model 'x' is not a run"),
    ({"runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}, "claims": [{"claim": "c", "table": "t", "better": "a",
                                                                      "worse": "z"}]},
     "repro.claims: 'c' must name a table and two of its runs"),
    ({"runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"], "teachers": ["x"]}}},
     "repro.tables.t: teacher 'x' is not in repro.teachers"),
    ({"teachers": {"x": {"checkpoint": "t.safetensors", "set": ["pretrain.optim.epochs=1"]}}, "runs": {"a": MOCO},
      "tables": {"t": {"runs": ["a"]}}}, "repro.teachers.x: a checkpoint is used as it is"),
    ({"teachers": {"x": {"preset": "nope"}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.teachers.x: unknown preset 'nope'"),
    ({"teachers": {"x": {"checkpoint": "missing.safetensors"}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.teachers.x: checkpoint missing.safetensors does not exist"),
    ({"teachers": {"x": {"checkpoint": "zoo:nope"}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.teachers.x: no model 'nope' in bingo's zoo"),
    ({"teachers": {"x@y": {}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.teachers.x@y: a teacher's name cannot hold '@'"),
    ({"teachers": {"x": {"epochs": 2}}, "runs": {"a": MOCO}, "tables": {"t": {"runs": ["a"]}}},
     "repro.teachers.x has unknown keys ['epochs']"),
    ({"teachers": {"x": {}}, "runs": {"a": MOCO, "b": {"method": "seed"}}, "tables": {"t": {"runs": ["a", "b"],
                                                                                         "teachers": ["x"]}},
      "claims": [{"claim": "c", "table": "t", "better": "b@y", "worse": "a"}]},
     "repro.claims: 'c' must name a table and two of its runs \\(RUN@TEACHER under one of its teachers\\)"),
])
def test_bad_plans_are_refused(plan, message):
    cfg = load_config("demo")
    for key, value in plan.items():
        setattr(cfg.repro, key, value)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ReproPlan.load(cfg.repro)


def test_unknown_table_is_one_line_and_writes_nothing(tmp_path, capsys, bingo_logger_guard):
    assert main(["repro", "--tables", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("bingo: error: unknown table 'nope'; choose from: main, relations, bags, teachers, "
                           "transfer, students, semi, k, ablations, queue, schedule, lr, shuffle-bn, heads, "
                           "strong-teacher")
    assert not (tmp_path / "r").exists()


def test_a_table_shows_top5_and_each_transfer_set_beside_the_top1_accuracies():
    from bingo.experiments.repro import shown_columns, table_markdown

    run = {"kNN@10 top-1": 70.0, "kNN@10 top-5": 95.0, "linear top-1": 72.0, "linear top-5": 96.0,
           "transfer digits top-1": 90.0, "transfer digits top-5": 99.0, "train wall time (s)": 10.0}
    assert shown_columns([run]) == ["kNN@10 top-1", "linear top-1", "linear top-5", "transfer digits top-1",
                                    "train wall time (s)"]
    summary = {"runs": {"bingo": {"method": "bingo", "seeds": {"0": run}, "mean": run, "std": dict.fromkeys(run, 0.0)}},
               "seeds": [0]}
    text = table_markdown(summary, {"raw pixels": {"linear top-1": 80.0, "transfer digits top-1": 95.0}})
    assert text.splitlines()[0] == ("| run | method | seeds | kNN@10 top-1 | linear top-1 | linear top-5 | "
                                    "transfer digits top-1 | train wall time (s) |")
    assert text.splitlines()[-1] == "| raw pixels (reference) | - | 1 | - | 80.0 | - | 95.0 | - |"



def test_the_published_page_is_what_bingo_repro_writes_from_the_published_data(tmp_path, bingo_logger_guard):
    """docs/results.md is `bingo repro --report --from docs/results.json` verbatim: anyone can check the page against
    its data, and a change of the plan's claims or of the renderer that is not re-rendered there fails here."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    assert main(["repro", "--report", "--from", str(docs / "results.json"), "--out", str(tmp_path / "page")]) == 0
    assert (tmp_path / "page" / "results.md").read_text() == (docs / "results.md").read_text()
    assert sorted(p.name for p in (tmp_path / "page" / "results").glob("*.png")) == \
        sorted(p.name for p in (docs / "results").glob("*.png"))


def test_a_table_of_teachers_without_a_run_free_of_them_shows_no_gains():
    from bingo.experiments.repro import has_gains, teacher_gains

    seeds = {"0": {"linear top-1": 70.0}, "1": {"linear top-1": 72.0}}
    only_teachers = {"runs": {"bingo@a": {"seeds": seeds}}, "teachers": {"a": {"linear top-1": 80.0}}}
    assert not has_gains(only_teachers) and teacher_gains(only_teachers, "linear top-1") == (None, [])
    with_baseline = {**only_teachers, "runs": {"moco": {"seeds": {"0": {"linear top-1": 60.0},
                                                                  "1": {"linear top-1": 61.0}}},
                                               "bingo@a": {"seeds": seeds}}}
    baseline, (gain,) = teacher_gains(with_baseline, "linear top-1")
    assert has_gains(with_baseline) and baseline == "moco"
    assert (gain["run"], gain["lead"], gain["difference"]) == ("bingo", 19.5, 10.5)


OTHER_STUDENT = """
repro:
  runs:
    moco: {}
    moco-wide: {method: moco, set: [student.width=16]}
  tables:
    main: {title: "Main", runs: [moco]}
    wide: {title: "Wide", runs: [moco-wide]}
    semi: {title: "Semi", runs: [moco], protocols: [semi]}
"""


def test_a_table_measures_the_references_the_plans_cannot_give_it(tmp_path, bingo_logger_guard):
    """Another student: that student with random weights; another protocol (semi): the teacher and the random
    student by it (raw pixels have no network to fine-tune)."""
    plan, out = tmp_path / "plan.yaml", tmp_path / "repro"
    plan.write_text(OTHER_STUDENT)
    assert main(repro_args(out, plan, "--tables", "main", "wide", "semi")) == 0
    report = read_json(out / "results.json")
    assert "references" not in report["tables"]["main"]  # the plan's student: the plan's references
    own = report["tables"]["wide"]["references"]["random student"]
    plans = report["references"]["random student"]
    assert own != plans and (out / "references" / "random-student-resnet18-width-16").is_dir()
    settings = read_json(next((out / "references" / "random-student-resnet18-width-16").glob("*/run.json")))
    assert settings["settings"]["student.width"] == 16
    page = (out / "results.md").read_text()
    main_table, wide_table = page.split("## Main")[1].split("## Semi")[0].split("## Wide")
    for table, row in ((main_table, plans), (wide_table, own)):  # kNN@10 top-1, then linear top-1
        cells = f"{row['kNN@10 top-1']:.1f} | {row['linear top-1']:.1f}"
        assert f"| random student (reference) | - | 1 | {cells} |" in table

    semi = report["tables"]["semi"]["references"]
    assert set(semi) == {"teacher", "random student"} and (out / "references" / "random-student" / "semi").is_dir()
    metric = next(m for m in semi["teacher"] if m.startswith("semi ") and m.endswith(" top-1"))
    semi_table = page.split("## Semi")[1].split("## ")[0]
    for name in ("teacher", "random student"):
        assert f"| {name} (reference) |" in semi_table and metric in semi[name]
    assert "raw pixels (reference)" not in semi_table
