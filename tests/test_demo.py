"""`bingo demo`: from a given or pretrained teacher to the page; verdict rules; refusals before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bingo.cli import main
from bingo.experiments.demo import equal_time_epochs
from bingo.experiments.page import CLAIMS, Claim, judge, seed_spread, settings_digest
from conftest import check_ok, read_json, run_cli, run_main, tiny_sets

FAST = ("demo.methods=[bingo,moco]", "demo.equal_time=[moco]", "eval.linear.epochs=1")
REFERENCES = ["raw pixels", "teacher, random weights, BN at init", "student, random weights, BN at init",
              "teacher (MoCo-v2)"]


def _row(knn: float, linear: float) -> dict:
    return {"knn": {"10": {"top1": knn, "top5": 99.0}}, "linear": {"top1": linear, "top5": 99.0}}


def test_demo_pretrains_a_teacher_when_asked(tmp_path):
    out = tmp_path / "demo"
    sets = tiny_sets("demo.pretrain=true", "trainer.loggers=[csv]")
    proc = run_cli("demo", *sets, "--out", out)
    check_ok(proc)
    results = read_json(out / "results.json")
    assert list(results["rows"]) == [*REFERENCES, "student, BINGO", "student, MoCo-v2", "student, DisCo",
                                     "student, MoCo-v2, BINGO's wall time"]
    assert results["teacher"] == {"file": str(out / "teacher" / "teacher.safetensors"), "source": "pretrained"}
    assert set(results["stage_wall_time_s"]) >= {"pretrain teacher (MoCo-v2)", "build kNN bags",
                                                 "distil student (bingo)", "distil student (moco)", "evaluate"}
    for name, row in results["rows"].items():
        assert (row["params"] is None) == (name == "raw pixels")
        assert 0 <= row["knn"]["10"]["top1"] <= 100 and 0 <= row["linear"]["top1"] <= 100
    assert results["students"]["moco, BINGO's wall time"]["epochs"] == results["equal_time_epochs"]["moco"] >= 1
    page = (out / "results.md").read_text()
    assert "| student, BINGO |" in page and "## Verdicts" in page and "| student, BINGO |" in proc.stdout
    assert "BINGO's student beats MoCo-v2's at equal epochs" in page
    for chart in ("accuracy.png", "losses.png", "bags-montage.png"):
        assert (out / "demo-figures" / chart).stat().st_size > 1000 and f"demo-figures/{chart}" in page
    html = (out / "report.html").read_text()
    assert html.count("<img") == page.count("![") and html.count("<tr>") == len(results["rows"]) + 1  # and the header
    assert "data:image/png;base64," in html and "<strong>" in html


def test_demo_distils_from_a_given_teacher_and_resumes(chain, tmp_path):
    out = tmp_path / "demo"
    args = ("demo", *tiny_sets(*FAST, f"demo.teacher={chain.teacher}"), "--out", out)
    run_main(*args)
    results = read_json(out / "results.json")
    assert not (out / "teacher").exists() and results["teacher"]["source"] == str(chain.teacher)
    assert [r for r in results["rows"] if r.startswith("student, ") and "random" not in r] == [
        "student, BINGO", "student, MoCo-v2", "student, MoCo-v2, BINGO's wall time"]
    student = (out / "bingo" / "student.safetensors").read_bytes()
    evaluated = {p: p.stat().st_mtime_ns for p in out.rglob("eval/**/results.json")}
    assert len(evaluated) == 7  # 4 references + 3 students, each student's beside its run
    run_main(*args, "--resume")  # every stage reused: nothing trained or evaluated again
    assert (out / "bingo" / "student.safetensors").read_bytes() == student
    assert {p: p.stat().st_mtime_ns for p in out.rglob("eval/**/results.json")} == evaluated
    resumed = read_json(out / "results.json")
    assert resumed["stage_wall_time_s"] == results["stage_wall_time_s"]  # the times they took
    assert resumed["earlier_runs"] == [{"command": results["command"], "commit": results["machine"]["commit"]}]
    assert f"It resumed `{results['command']}`" in (out / "results.md").read_text()


@pytest.mark.parametrize("sets, says", [
    (["demo.methods=[moco]"], "demo.methods must include bingo"),
    (["demo.methods=[bingo,byol]"], "unknown methods (byol)"),
    (["demo.methods=[bingo]", "demo.equal_time=[moco]"], "add moco to demo.methods"),
    (["demo.teacher=zoo:nope"], "no model 'nope' in bingo's zoo"),
    (["demo.teacher=/no/such/teacher.safetensors"], "does not exist"),
])
def test_bad_demo_settings_are_refused_before_any_work(tmp_path, capsys, sets, says, bingo_logger_guard):
    out = tmp_path / "demo"
    assert main(["demo", *tiny_sets(*sets), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not out.exists()


def test_equal_time_epochs_follow_the_measured_training_times(tmp_path):
    for name, seconds in (("bingo", 30.0), ("moco", 10.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"fit_time_s": seconds}))
    assert equal_time_epochs(tmp_path / "bingo", tmp_path / "moco", 2) == 6
    assert equal_time_epochs(tmp_path / "moco", tmp_path / "bingo", 2) == 2  # never fewer than the equal-epoch run


def test_verdicts_weigh_differences_against_the_seed_spread():
    claim = Claim("A beats B", "a", "b")
    rows = {"a": _row(80.0, 81.0), "b": _row(78.0, 79.5)}
    seeds = {"seeds": [0, 1, 2, 3, 4],
             "students": {"a": {"kNN@10 top-1": [80, 81, 79, 80, 80], "linear top-1": [81, 82, 80, 81, 81]},
                          "b": {"kNN@10 top-1": [78, 78, 78, 78, 78], "linear top-1": [79, 79, 79, 79, 79]}}}
    said = judge(claim, rows, seeds)
    assert said.startswith("A beats B: +2.0 kNN@10 / +1.5 linear here; over 5 seeds +2.0 (spread 0.7)")
    assert said.endswith("**holds**.")
    seeds["students"]["b"]["linear top-1"] = [81, 83, 79, 82, 80]  # linear: B as good as A, within the spread
    assert judge(claim, rows, seeds).endswith("**inconclusive** (a difference within the seed spread).")
    assert judge(Claim("A at least as good", "a", "b", at_least=True), rows, seeds).endswith("**holds**.")
    seeds["students"]["a"], seeds["students"]["b"] = seeds["students"]["b"], seeds["students"]["a"]
    seeds["students"]["a"]["linear top-1"] = [75, 75, 76, 75, 75]
    assert judge(claim, rows, seeds).endswith("**reversed**.")
    assert "no verdict: one seed" in judge(claim, rows, None)
    assert judge(Claim("x", "a", "missing"), rows, seeds) is None


def test_the_teacher_claim_needs_no_seeds_and_the_digest_follows_training_settings():
    teacher_claim = CLAIMS[-1]
    rows = {"teacher (MoCo-v2)": _row(86.0, 87.0), "raw pixels": _row(84.0, 83.0)}
    assert judge(teacher_claim, rows, None, test_images=10_000).endswith("**holds**.")
    tied = {**rows, "teacher (MoCo-v2)": _row(84.02, 87.0)}  # +0.02 kNN@10: within the test set's standard error
    assert "**inconclusive**" in judge(teacher_claim, tied, None, test_images=10_000)
    assert "**holds**" in judge(teacher_claim, tied, None, test_images=10_000_000)
    assert "no verdict" in judge(teacher_claim, rows, None)  # no test set size: nothing to judge against
    seeds = {"seeds": [0, 1], "students": {name: {"kNN@10 top-1": [84.02] * 2, "linear top-1": [87.0] * 2}
                                           for name in tied}}  # seedless rows: no spread over seeds
    assert "**inconclusive**" in judge(teacher_claim, tied, seeds, test_images=10_000)
    from conftest import tiny_config

    base = settings_digest(tiny_config(), "t1")
    assert settings_digest(tiny_config("trainer.progress_bar=true", "seed=3"), "t1") == base
    assert settings_digest(tiny_config("distill.optim.lr=0.5"), "t1") != base
    assert settings_digest(tiny_config(), "t2") != base
    assert settings_digest(tiny_config("distill.moco.split_queries=true"), "t1") != base


def test_the_published_seed_spread_serves_the_demo_as_it_ships():
    """src/bingo/experiments/demo_seeds.json was measured with the demo preset and the shipped teacher: a change of
    either (or a new setting that changes the digest) must measure the spread again, or the page loses its verdicts."""
    from bingo.config import load_config
    from bingo.experiments.page import SEEDS_FILE
    from bingo.training import file_digest
    from bingo.zoo import resolve_checkpoint

    cfg = load_config("demo")
    digest = settings_digest(cfg, file_digest(Path(resolve_checkpoint(cfg.demo.teacher))))
    assert seed_spread(digest) is not None, (digest, json.loads(SEEDS_FILE.read_text())["settings"])


def test_a_seed_spread_serves_only_the_settings_it_was_measured_with(tmp_path):
    path = tmp_path / "demo_seeds.json"
    assert seed_spread("abc", path) is None
    path.write_text(json.dumps({"settings": "abc", "seeds": [0, 1], "students": {}}))
    assert seed_spread("abc", path)["seeds"] == [0, 1]
    assert seed_spread("abd", path) is None
