"""`bingo compare`: two methods x two seeds on generated data; the table, the charts, reuse and resume."""

from __future__ import annotations

import json

import pytest

from bingo.cli import main
from bingo.config import load_config
from bingo.errors import UserError
from bingo.experiments.compare import compare_table, flat_metrics, run_configs
from conftest import read_json, tiny_sets


def compare_args(chain, out, *extra: str) -> list[str]:
    return ["compare", *tiny_sets("trainer.limit_train_batches=2", "eval.linear.epochs=1"), *extra,
            "--teacher", str(chain.teacher), "--bags", str(chain.bags), "--out", str(out)]


def test_compare_two_methods_two_seeds(chain, tmp_path, capsys, bingo_logger_guard):
    out = tmp_path / "cmp"
    assert main(compare_args(chain, out, "--methods", "moco", "bingo", "--seeds", "0", "1")) == 0
    summary = read_json(out / "results.json")
    assert list(summary["runs"]) == ["moco", "bingo"] and summary["seeds"] == [0, 1]
    for name, run in summary["runs"].items():
        assert run["method"] == name and set(run["seeds"]) == {"0", "1"}
        for metric in ("kNN@3 top-1", "kNN@10 top-1", "linear top-1", "linear top-5"):
            values = [run["seeds"][s][metric] for s in ("0", "1")]
            assert run["mean"][metric] == pytest.approx(sum(values) / 2, abs=1e-3)
            assert run["std"][metric] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5, abs=1e-3)
        seed_config = (out / name / "seed-1" / "config.yaml").read_text()
        assert "seed: 1" in seed_config and f"method: {name}" in seed_config
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| run | method | seeds | kNN@3 top-1 |") and len(table) == 4
    assert table[2].startswith("| moco | moco | 2 | ") and " ± " in table[2]
    for png in ("accuracy.png", "losses.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # Rerun with --resume: finished runs and evaluations are reused, a missing evaluation is redone.
    students = {p: p.stat().st_mtime_ns for p in out.rglob("student.safetensors")}
    (out / "bingo" / "seed-1" / "eval" / "knn+linear" / "results.json").unlink()
    capsys.readouterr()
    assert main(compare_args(chain, out, "--methods", "moco", "bingo", "--seeds", "0", "1", "--resume")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("student.safetensors")} == students
    assert "evaluating bingo seed 1 (knn, linear)" in capsys.readouterr().err
    assert read_json(out / "results.json")["runs"]["bingo"]["mean"] == summary["runs"]["bingo"]["mean"]

    # Other evaluation settings: the trained runs are reused, their evaluations redone.
    assert main(compare_args(chain, out, "--methods", "moco", "--seeds", "0", "--resume",
                             "--set", "eval.linear.epochs=2")) == 0
    assert "was made with other settings (eval.linear.epochs=1, now 2): making it again" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("student.safetensors")} == students
    assert read_json(out / "moco" / "seed-0" / "eval" / "knn+linear" / "run.json")["settings"]["eval.linear.epochs"] \
        == 2

    # Without --resume the folder is refused, untouched.
    assert main(compare_args(chain, out, "--methods", "moco")) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err


def test_an_interrupted_run_resumes_from_its_checkpoint(chain, tmp_path, capsys, bingo_logger_guard, monkeypatch):
    from bingo.experiments import compare

    out = tmp_path / "cmp"
    # An interrupted run: checkpointed, but no student file yet.
    assert main(["distill", *tiny_sets("trainer.limit_train_batches=2", "trainer.loggers=[csv]"), "--method", "moco",
                 "--seed", "0", "--out", str(out / "moco" / "seed-0")]) == 0
    (out / "moco" / "seed-0" / "student.safetensors").unlink()
    calls = []
    real = compare.run_distill
    monkeypatch.setattr(compare, "run_distill", lambda cfg, folder, resume: calls.append(resume) or
                        real(cfg, folder, resume))
    assert main(compare_args(chain, out, "--methods", "moco", "--seeds", "0", "--resume")) == 0
    assert calls == [True]
    assert (out / "moco" / "seed-0" / "student.safetensors").exists()

    # A run folder trained with other settings is neither resumed nor reused.
    (out / "moco" / "seed-0" / "student.safetensors").unlink()
    capsys.readouterr()
    assert main(compare_args(chain, out, "--methods", "moco", "--seeds", "0", "--set", "distill.optim.epochs=2",
                             "--resume")) == 2
    assert "seed-0 was made with other settings (distill.optim.epochs=1, now 2)" in capsys.readouterr().err
    assert not (out / "moco" / "seed-0" / "student.safetensors").exists()


def test_variants_from_a_config_file(tmp_path):
    file = tmp_path / "variants.yaml"
    file.write_text("compare:\n  runs:\n    bingo: {}\n    bingo-no-cutmix: {method: bingo, set: "
                    "[distill.bingo.cutmix=false, bingo.symmetric=false]}\n")
    configs = run_configs(load_config("demo", str(file), ["teacher.checkpoint=t.pth", "distill.bags=b.npz"]))
    assert list(configs) == ["bingo", "bingo-no-cutmix"]
    assert configs["bingo"].distill.bingo.cutmix and configs["bingo"].distill.bingo.symmetric
    variant = configs["bingo-no-cutmix"].distill
    assert variant.method == "bingo" and not variant.bingo.cutmix and not variant.bingo.symmetric
    assert "csv" in configs["bingo"].trainer.loggers


@pytest.mark.parametrize("runs,message", [
    ("{nope: {}}", "compare.runs.nope: unknown method 'nope'"),
    ("{x: {method: moco, lr: 1}}", "compare.runs.x has unknown keys ['lr']"),
    ("{}", "nothing to compare"),
    ("{seed: {}}", "compare.runs.seed (seed) distils from a teacher: pass --teacher FILE"),
    ("{b: {method: bingo, set: [bingo.keys=momentum]}}", "compare.runs.b (bingo) needs bags: pass --bags FILE"),
])
def test_bad_run_specs_are_refused(runs, message):
    with pytest.raises(UserError, match=message.replace("[", "\\[").replace("]", "\\]").replace("(", "\\(")
                       .replace(")", "\\)")):
        run_configs(load_config("demo", None, [f"compare.runs={runs}"]))


def test_table_and_flat_metrics():
    result = {"knn": {"10": {"top1": 71.0, "top5": 95.0}}, "linear": {"top1": 74.5, "top5": 98.0}}
    assert flat_metrics(result) == {"kNN@10 top-1": 71.0, "kNN@10 top-5": 95.0, "linear top-1": 74.5,
                                    "linear top-5": 98.0}
    summary = {"runs": {"bingo": {"method": "bingo", "seeds": {"0": {}, "1": {}},
                                  "mean": {"kNN@10 top-1": 71.04, "kNN@10 top-5": 95.0},
                                  "std": {"kNN@10 top-1": 0.55, "kNN@10 top-5": 0.1}}}}
    assert compare_table(summary).splitlines()[2] == "| bingo | bingo | 2 | 71.0 ± 0.6 |"
    assert json.dumps(summary)  # JSON-ready
