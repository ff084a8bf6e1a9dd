"""The command line end to end on generated images: every stage, the demo, resume, refusals of bad input."""

from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException
from safetensors.torch import load_file

from bingo.bags.files import load_bags
from bingo.cli import main
from bingo.config import from_dict
from bingo.data.datasets import build_dataset
from bingo.models.checkpoints import load_encoder
from bingo.stages import distill as distill_stage
from bingo.training import Throughput
from conftest import (
    BATCH,
    QUEUE,
    TRAIN_SIZE,
    check_ok,
    read_json,
    run_cli,
    run_process,
    snapshot,
    tiny_config,
    tiny_sets,
)

RUN_FILES = {"config.yaml", "results.json", "checkpoints/last.ckpt"}


def files_of(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def assert_accuracy(block: dict) -> None:
    assert 0 <= block["top1"] <= block["top5"] <= 100


def assert_eval_result(result: dict, ks=("3", "10")) -> None:
    assert 0 <= result["bag_purity"] <= 1
    assert set(result["knn"]) == set(ks)
    for block in result["knn"].values():
        assert_accuracy(block)
    assert_accuracy(result["linear"])
    assert result["linear"]["variant"] == "fast"  # the demo preset's


def test_pretrain_products(chain):
    folder = chain.teacher.parent
    assert RUN_FILES | {"teacher.safetensors"} <= files_of(folder)
    result = read_json(folder / "results.json")
    assert (result["stage"], result["method"], result["epochs"], result["images"]) == ("pretrain", "moco", 1,
                                                                                      TRAIN_SIZE)
    assert math.isfinite(result["final_metrics"]["train/loss_epoch"])
    cfg = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    assert cfg.data.name == "generated" and cfg.teacher.width == 8
    teacher = load_encoder(chain.teacher, cfg.teacher, cfg.data)
    assert teacher.head[-1].out_features == 16


def test_bags_products(chain):
    cfg = tiny_config()
    data = build_dataset(cfg.data, "train")
    bags = load_bags(chain.bags)
    meta, neighbours = bags.meta, bags.neighbours
    assert neighbours.shape == (TRAIN_SIZE, 3)
    assert not (neighbours == np.arange(TRAIN_SIZE)[:, None]).any()
    assert meta["k"] == 3 and meta["strategy"] == "knn" and meta["source"]["path"] == str(chain.teacher)
    assert meta["dataset"] == data.identity and meta["index"] == "exact" and "recall" not in meta
    result = read_json(chain.bags.parent / "results.json")
    report = result["report"]
    assert result["stage"] == "bags" and -1 <= report["similarity"]["mean"] <= 1
    assert report["purity"] == pytest.approx(float((data.labels[neighbours] == data.labels[:, None]).mean()))
    assert report["usage"]["max"] == pytest.approx(np.bincount(neighbours.ravel()).max() / 3, abs=0.01)
    for name in ("config.yaml", "montage.png", "features.npy", "features.json"):
        assert (chain.bags.parent / name).is_file()


@pytest.mark.parametrize("method", ["bingo", "moco"])
def test_distill_products(chain, method):
    folder = chain.bingo if method == "bingo" else chain.moco
    assert RUN_FILES | {"student.safetensors"} <= files_of(folder)
    result = read_json(folder / "results.json")
    assert (result["stage"], result["method"], result["epochs"], result["images"]) == ("distill", method, 1,
                                                                                      TRAIN_SIZE)
    expected = {"loss", "anchor", "positive", "mix", "intra", "inter", "alignment", "key_alignment"} \
        if method == "bingo" else {"loss", "key_alignment"}
    expected.add("images_per_s")
    assert {k.removeprefix("train/").removesuffix("_epoch") for k in result["final_metrics"]} == expected
    assert all(math.isfinite(v) for v in result["final_metrics"].values())
    cfg = tiny_config()
    student = load_encoder(folder / "student.safetensors", cfg.student, cfg.data)
    with torch.no_grad():
        z = student.eval()(torch.randn(2, 3, 16, 16))
    assert z.shape == (2, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == TRAIN_SIZE // BATCH
    saved = load_file(str(folder / "student.safetensors"))
    for key, value in saved.items():  # the student file is the checkpoint's final student
        assert torch.equal(ckpt["state_dict"][f"student.{key}"], value), key
    if method == "bingo":
        assert int(ckpt["state_dict"]["queue.ptr"]) == TRAIN_SIZE % QUEUE
        run = read_json(folder / "run.json")  # the checkpoint carries the run's identity: its settings' hash
        assert ckpt["bingo_run"] == {"run": run["hash"]} and run["finished"]
        assert {"input.dataset", "input.teacher", "input.bags", "distill.bingo.temperature"} <= set(run["settings"])
        assert not any(key.startswith(("distill.seed.", "distill.compress.", "trainer.progress_bar"))
                       for key in run["settings"])  # other methods' settings and how it ran do not define it
        teacher = load_file(str(chain.teacher))
        for key, value in teacher.items():  # the teacher stayed frozen
            assert torch.equal(ckpt["state_dict"][f"teacher.{key}"], value), key
    saved_cfg = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    assert saved_cfg.distill.method == method


def test_eval_products(chain):
    results = read_json(chain.eval / "results.json")
    model = str(chain.bingo / "student.safetensors")
    assert list(results["rows"]) == [model] and results["protocols"] == ["knn", "linear"]
    assert_eval_result(results["rows"][model])
    assert results["rows"][model]["params"] > 0
    assert (chain.eval / "config.yaml").is_file()
    table = (chain.eval / "results.md").read_text()
    assert f"| {model} |" in table and "kNN@10 top-1" in table and "linear top-1" in table


def _copy_run(chain, tmp_path):
    run = tmp_path / "bingo"
    shutil.copytree(chain.bingo, run)
    return run


def _distill_args(chain, out, *extra):
    return ("distill", *tiny_sets(*extra), "--method", "bingo", "--teacher", chain.teacher, "--bags", chain.bags,
            "--out", out)


def test_resume_finished_distill(chain, tmp_path):
    run = _copy_run(chain, tmp_path)
    student = load_file(str(run / "student.safetensors"))
    check_ok(run_cli(*_distill_args(chain, run), "--resume"))
    resumed = load_file(str(run / "student.safetensors"))
    assert set(resumed) == set(student)
    assert all(torch.equal(resumed[k], student[k]) for k in student)  # nothing left to train
    assert (run / "checkpoints" / "last.ckpt").is_file()
    result = read_json(run / "results.json")
    assert (result["stage"], result["method"], result["epochs"]) == ("distill", "bingo", 1)


def test_resume_finished_distill_keeps_its_results(chain, tmp_path):
    run = _copy_run(chain, tmp_path)
    before = read_json(run / "results.json")
    check_ok(run_cli(*_distill_args(chain, run), "--resume"))
    assert read_json(run / "results.json")["final_metrics"] == before["final_metrics"]


def test_a_finished_run_is_kept_and_one_with_other_settings_refused(chain, tmp_path):
    run = _copy_run(chain, tmp_path)
    before = snapshot(run)
    proc = run_cli(*_distill_args(chain, run, "trainer.loggers=[csv]", "trainer.log_every_n_steps=7",
                                  "data.num_workers=1", "distill.seed.queue_size=99"))
    check_ok(proc)  # how it runs and another method's settings differ, not what defines it: the student is kept
    assert "already made with these settings" in proc.stderr and snapshot(run) == before
    proc = run_cli(*_distill_args(chain, run, "distill.bingo.temperature=0.5"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"bingo: error: {run} was made with other settings (distill.bingo.temperature=0.1, now 0.5); keep its "
        "settings, choose another --out, or remove that folder to make it again"]
    assert snapshot(run) == before


def test_an_interrupted_run_needs_resume(chain, tmp_path):
    run = _copy_run(chain, tmp_path)
    (run / "student.safetensors").unlink()  # as if stopped before the end: a checkpoint, no student
    before = snapshot(run)
    proc = run_cli(*_distill_args(chain, run))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"bingo: error: {run} already holds a run; pass --resume to continue it, "
                                        "or choose another --out"]
    assert snapshot(run) == before


def test_resume_with_other_bags_is_refused(chain, tmp_path):
    run = _copy_run(chain, tmp_path)
    other = tmp_path / "bags.npz"
    shutil.copy(chain.bags, other)
    with np.load(other) as stored:  # same data set, other neighbours: another bag file
        arrays = dict(stored)
    arrays["neighbours"] = np.roll(arrays["neighbours"], 1, axis=1)
    np.savez(other, **arrays)
    before = snapshot(run)
    proc = run_cli("distill", *tiny_sets(), "--method", "bingo", "--teacher", chain.teacher, "--bags", other,
                   "--out", run, "--resume")
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"bingo: error: {run} was made with other settings (input.bags=")
    assert snapshot(run) == before  # config.yaml too: it must keep describing the checkpoint


def test_same_seed_repeats_a_distillation(tmp_path):
    """`--seed N makes a CPU run repeatable`: two runs in one process give the same student."""
    cfg = tiny_config("distill.method=moco", "trainer.limit_train_batches=2", "seed=5")
    distill_stage.run_distill(cfg, tmp_path / "a")
    distill_stage.run_distill(cfg, tmp_path / "b")
    a, b = (load_file(str(tmp_path / run / "student.safetensors")) for run in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- bad input: one line on stderr, exit code 2, nothing written ------------------------------------

def _evil_checkpoint(tmp_path):
    import os

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'MARKER'}",)

    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}, "x": Exploit()}, path)
    return path


BAD_INPUTS = {
    "bags for another data set": (
        lambda c, t: _distill_args(c, t / "out", "data.generated_train_size=160"),
        "was built for data set generated/train (128 images"),
    "missing data set (cifar10)": (
        lambda c, t: ("pretrain", *tiny_sets("data.name=cifar10", "data.root=/nonexistent"), "--out", t / "out"),
        "data set 'cifar10' not found under /nonexistent"),
    "missing data set (imagefolder)": (
        lambda c, t: ("eval", "knn", *tiny_sets("data.name=imagefolder", "data.root=/nonexistent"),
                      "--model", "pixels", "--out", t / "out"),
        "image folder /nonexistent has no train/ subfolder"),
    "unknown method": (
        lambda c, t: ("distill", *tiny_sets(), "--method", "simclr", "--out", t / "out"),
        "unknown method 'simclr'; choose one of: moco, seed, compress-1q, compress-2q, disco, simreg, bingo"),
    "unknown preset": (
        lambda c, t: ("pretrain", "--preset", "cifar-huge", "--out", t / "out"),
        "unknown preset 'cifar-huge'"),
    "unknown config key": (
        lambda c, t: ("pretrain", *tiny_sets("optim.learning_rate=0.1"), "--out", t / "out"),
        "--set: unknown config key 'optim.learning_rate'"),
    "malformed override": (
        lambda c, t: ("pretrain", *tiny_sets(), "--set", "optim.lr", "--out", t / "out"),
        "override 'optim.lr' must look like key=value"),
    "teacher for another image size": (
        lambda c, t: ("bags", *tiny_sets("data.image_size=24", "data.eval_resize=24"), "--teacher", c.teacher,
                      "--out", t / "out"),
        "was trained on 3-channel 16 px images but this run uses 3-channel 24 px ones"),
    "student for other channels": (
        lambda c, t: ("eval", "all", *tiny_sets("data.channels=1", "data.mean=[0.5]", "data.std=[0.25]"),
                      "--model", c.bingo / "student.safetensors", "--out", t / "out"),
        "was trained on 3-channel 16 px images but this run uses 1-channel 16 px ones"),
    "student for another image size": (
        lambda c, t: ("eval", "knn", *tiny_sets("data.image_size=24", "data.eval_resize=24"),
                      "--model", c.bingo / "student.safetensors", "--out", t / "out"),
        "was trained on 3-channel 16 px images but this run uses 3-channel 24 px ones"),
    "unknown linear variant": (
        lambda c, t: ("eval", "linear", *tiny_sets("eval.linear.variant=slow"), "--model", "random",
                      "--out", t / "out"),
        "eval.linear.variant must be one of paper, fast, lbfgs, not 'slow'"),
    "pixels through the paper's linear protocol": (
        lambda c, t: ("eval", "linear", *tiny_sets("eval.linear.variant=paper"), "--model", "pixels",
                      "--out", t / "out"),
        "raw pixels have no backbone for the paper's linear protocol"),
    "pixels fine-tuned": (
        lambda c, t: ("eval", "semi", *tiny_sets(), "--model", "pixels", "--out", t / "out"),
        "raw pixels have no network to fine-tune"),
    "label share out of range": (
        lambda c, t: ("eval", "semi", *tiny_sets("eval.semi.fractions=[10]"), "--model", "random",
                      "--out", t / "out"),
        "eval.semi.fractions must be shares of the labels in (0, 1]"),
    "subset file that is not one": (
        lambda c, t: ("eval", "semi", *tiny_sets(f"eval.semi.subsets={c.bags}"), "--model", "random",
                      "--out", t / "out"),
        "is not a subset file"),
    "missing transfer data set": (
        lambda c, t: ("eval", "transfer", *tiny_sets("eval.transfer.name=cifar100", "eval.transfer.root=/nonexistent",
                                                     "eval.transfer.download=false"),
                      "--model", "random", "--out", t / "out"),
        "data set 'cifar100' not found under /nonexistent"),
    "malicious teacher pickle": (
        lambda c, t: ("distill", *tiny_sets(), "--method", "bingo", "--teacher", _evil_checkpoint(t),
                      "--bags", c.bags, "--out", t / "out"),
        "needs arbitrary code to unpickle and was refused"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, chain, tmp_path, capsys, bingo_logger_guard):
    make_args, message = BAD_INPUTS[case]
    args = [str(a) for a in make_args(chain, tmp_path)]
    chain_before = snapshot(chain.root)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bingo: error: "), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists()  # no run folder left behind
    assert not (tmp_path / "MARKER").exists()
    assert snapshot(chain.root) == chain_before


def test_a_real_run_prints_only_bingos_own_lines(tmp_path):
    """Lightning configures its loggers when imported: they must be quieted after that import, not before."""
    proc = run_process("distill", *tiny_sets("trainer.limit_train_batches=2"), "--method", "moco",
                       "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("[bingo] ") for line in lines), lines  # no "GPU available", no tips


@pytest.mark.parametrize("case", ["bags for another data set", "malicious teacher pickle"])
def test_bad_input_in_a_real_process(case, chain, tmp_path):
    make_args, message = BAD_INPUTS[case]
    proc = run_process(*make_args(chain, tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("bingo: error: "), proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "MARKER").exists()


def test_a_resumed_run_keeps_its_earlier_metrics(tmp_path, bingo_logger_guard, monkeypatch):
    run = tmp_path / "moco"
    args = ["distill", *tiny_sets("trainer.limit_train_batches=2", "trainer.loggers=[csv]", "distill.optim.epochs=2"),
            "--method", "moco", "--out", str(run)]

    def stop_after_the_first_epoch(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            raise SIGTERMException

    with monkeypatch.context() as patch:
        patch.setattr(Throughput, "on_train_epoch_end", stop_after_the_first_epoch)
        assert main(args) == 143  # stopped as by SIGTERM, checkpointed after the first epoch's steps
    assert main([*args, "--resume"]) == 0  # Lightning's logger deletes the file
    assert main([*args, "--resume"]) == 0  # already finished: nothing to add
    steps = {row["step"] for row in csv.DictReader(open(run / "logs" / "metrics.csv")) if row["train/loss_step"]}
    assert steps == {"0", "1", "2", "3"} and not (run / "logs" / "earlier-metrics.csv").exists()


def test_a_non_finite_loss_stops_the_run_in_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys,
                                                                                bingo_logger_guard):
    import bingo.methods.moco as moco_module

    real, calls = moco_module.info_nce, []
    steps_per_epoch = TRAIN_SIZE // BATCH

    def info_nce(*args, **kwargs):  # the loss turns NaN in the second epoch's second step
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == steps_per_epoch + 2 else loss

    monkeypatch.setattr(moco_module, "info_nce", info_nce)
    out = tmp_path / "moco"
    code = main(["distill", "--method", "moco", "--out", str(out),
                 *tiny_sets("distill.optim.epochs=3", f"trainer.log_every_n_steps={steps_per_epoch}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"at step {steps_per_epoch + 2} (term loss" in err[0] and "learning rate" in err[0]
    assert "last good checkpoint" in err[0] and str(out / "checkpoints" / "last.ckpt") in err[0]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == steps_per_epoch  # the first epoch's, not replaced
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_crashed_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys, bingo_logger_guard):
    import bingo.methods.moco as moco_module

    real, calls = moco_module.info_nce, []
    steps_per_epoch = TRAIN_SIZE // BATCH

    def crash_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps_per_epoch + 2:
            raise RuntimeError("crash")  # as a killed run: no clean end of training
        return real(*args, **kwargs)

    monkeypatch.setattr(moco_module, "info_nce", crash_in_the_second_epoch)
    out, sets = tmp_path / "moco", tiny_sets("distill.optim.epochs=3")
    with pytest.raises(RuntimeError, match="crash"):
        main(["distill", "--method", "moco", "--out", str(out), *sets])
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == steps_per_epoch
    calls.clear()
    monkeypatch.setattr(moco_module, "info_nce", real)
    assert main(["distill", "--method", "moco", "--out", str(out), "--resume", *sets]) == 0
    results = read_json(out / "results.json")
    assert results["steps"] == 3 * steps_per_epoch and results["epochs"] == 3
