"""A run killed (SIGKILL) or stopped (SIGTERM) anywhere and resumed ends with the weights of one never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from bingo.cli import main
from bingo.data.order import EpochBatches
from conftest import BATCH, TRAIN_SIZE, check_ok, read_json, run_cli, tiny_sets

STEPS_PER_EPOCH = TRAIN_SIZE // BATCH
EPOCHS = 2

# Runs `bingo ARGS` in this process and sends it SIGNAL at the end of the hook HOOK of the step STEP
# (its global step before the hook), before that point's checkpoint is written; SIGNALS: STEP:SIGNAL,...
STOPPING_RUN = textwrap.dedent("""
    import os, signal, sys
    import bingo.training as training
    from bingo.cli import main

    hook = sys.argv[1]
    signals = {int(step): getattr(signal, name) for step, name in (pair.split(":") for pair in sys.argv[2].split(","))}
    original = getattr(training.Throughput, hook)

    def stop_at(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step in signals:
            os.kill(os.getpid(), signals.pop(trainer.global_step))

    setattr(training.Throughput, hook, stop_at)
    sys.exit(main(sys.argv[3:]))
""")


def distill_args(chain, out, *extra: str) -> list[str]:
    return ["distill", "--method", "bingo", "--teacher", str(chain.teacher), "--bags", str(chain.bags),
            "--out", str(out), *tiny_sets(f"distill.optim.epochs={EPOCHS}", *extra)]


def stopped_run(hook: str, step: int, signum: str, args: list[str], env: dict | None = None,
                more: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-c", STOPPING_RUN, hook, f"{step}:{signum}{more}", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def resume(args: list[str]) -> None:
    """`bingo ARGS --resume`, in this process (a real process only where one is killed)."""
    assert main([*map(str, args), "--resume"]) == 0


def same_weights(a, b) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.fixture(scope="module")
def uninterrupted(chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    check_ok(run_cli(*distill_args(chain, out)))
    return out / "student.safetensors"


@pytest.mark.parametrize("hook, step, every_minutes, checkpoint_step", [
    ("on_train_batch_end", 1, "1e-9", None),  # killed before the first checkpoint: starts again from scratch
    ("on_train_batch_end", STEPS_PER_EPOCH + 2, "1e-9", STEPS_PER_EPOCH + 1),  # mid-epoch, checkpoint mid-epoch
    ("on_train_epoch_start", STEPS_PER_EPOCH, "0", STEPS_PER_EPOCH),  # between epochs, after the epoch's checkpoint
], ids=["before-first-checkpoint", "mid-epoch", "between-epochs"])
def test_a_killed_run_resumes_to_the_same_weights(chain, uninterrupted, tmp_path, hook, step, every_minutes,
                                                  checkpoint_step, bingo_logger_guard):
    out = tmp_path / "run"
    args = distill_args(chain, out, f"trainer.checkpoint_every_minutes={every_minutes}")
    killed = stopped_run(hook, step, "SIGKILL", args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = out / "checkpoints" / "last.ckpt"
    if checkpoint_step is None:
        assert not checkpoint.exists()
    else:
        assert torch.load(checkpoint, weights_only=True)["global_step"] == checkpoint_step
    resume(args)
    assert same_weights(out / "student.safetensors", uninterrupted)


def test_sigterm_checkpoints_stops_in_one_line_and_resumes_to_the_same_weights(chain, uninterrupted, tmp_path,
                                                                                bingo_logger_guard):
    out = tmp_path / "run"
    args = distill_args(chain, out)  # no checkpoint within epochs: SIGTERM's is the only one mid-epoch
    stopped = stopped_run("on_train_batch_end", STEPS_PER_EPOCH + 1, "SIGTERM", args)
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr, stopped.stderr
    assert "stopped by SIGTERM" in lines[-1] and "--resume" in lines[-1]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH + 1
    resume(args)
    assert same_weights(out / "student.safetensors", uninterrupted)


def test_the_training_order_is_a_fresh_permutation_each_epoch_shared_between_processes():
    def epoch(order, number):
        order.set_epoch(number)
        return [list(batch) for batch in order]

    shares = [EpochBatches(10, 2, seed=0, rank=rank, processes=2) for rank in range(2)]
    first = [epoch(order, 0) for order in shares]
    assert [len(batches) for batches in first] == [2, 2]  # 5 images per process: 2 full batches
    flat = [i for batches in first for batch in batches for i in batch]
    assert len(set(flat)) == 8  # no image in two processes
    assert epoch(shares[0], 1) != first[0] and epoch(shares[0], 0) == first[0]


def test_a_resumed_order_continues_the_epoch_with_its_batches_and_seeds():
    order = EpochBatches(12, 3, seed=5)
    order.set_epoch(2)
    whole = list(order)
    order.resume(2, 1)
    order.set_epoch(2)  # Lightning sets the epoch again when the resumed epoch starts
    rest = list(order)
    assert rest == whole[1:] and [b.seed for b in rest] == [b.seed for b in whole[1:]]
    order.set_epoch(3)
    assert len(list(order)) == 4


def test_lightning_starts_each_epoch_of_the_training_order():
    from lightning.fabric.utilities.data import _set_sampler_epoch  # what Lightning calls at each epoch start
    from torch.utils.data import DataLoader

    order = EpochBatches(12, 3, seed=0)
    loader = DataLoader(range(12), batch_sampler=order)
    _set_sampler_epoch(loader, 4)
    assert order.epoch == 4


def test_the_per_image_path_in_loader_workers_resumes_to_the_same_weights(tmp_path, bingo_logger_guard):
    def args(out):
        return ["distill", "--method", "moco", "--out", str(out),
                *tiny_sets(f"distill.optim.epochs={EPOCHS}", "data.augment_on=workers", "data.num_workers=1",
                           "trainer.checkpoint_every_minutes=1e-9")]

    check_ok(run_cli(*args(tmp_path / "whole")))
    killed = stopped_run("on_train_batch_end", STEPS_PER_EPOCH + 2, "SIGKILL", args(tmp_path / "run"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resume(args(tmp_path / "run"))
    assert same_weights(tmp_path / "run" / "student.safetensors", tmp_path / "whole" / "student.safetensors")


def test_an_interrupted_linear_evaluation_resumes_to_the_same_accuracy(chain, tmp_path, bingo_logger_guard):
    def args(out):
        return ["eval", "linear", "--model", str(chain.bingo / "student.safetensors"), "--out", str(out),
                *tiny_sets("eval.linear.variant=paper", "trainer.checkpoint_every_minutes=1e-9")]

    check_ok(run_cli(*args(tmp_path / "whole")))
    killed = stopped_run("on_train_batch_end", 3, "SIGKILL", args(tmp_path / "run"))  # in the 2nd of 2 epochs
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "run" / "linear" / "checkpoints" / "last.ckpt").exists()
    refused = run_cli(*args(tmp_path / "run"))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resume(args(tmp_path / "run"))
    whole, resumed = (read_json(tmp_path / name / "results.json")["rows"] for name in ("whole", "run"))
    assert resumed == whole
    assert not (tmp_path / "run" / "linear" / "checkpoints" / "last.ckpt").exists()  # removed once the result is known


def test_on_slurm_the_requeue_signal_checkpoints_requeues_and_resume_continues_there(chain, uninterrupted, tmp_path,
                                                                                     bingo_logger_guard):
    bin_folder, requeued = tmp_path / "bin", tmp_path / "requeued"
    bin_folder.mkdir()
    (bin_folder / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {requeued}\n")  # SLURM's, as a stand-in
    (bin_folder / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "PATH": f"{bin_folder}:{os.environ['PATH']}"}
    out = tmp_path / "run"
    args = distill_args(chain, out)  # checkpoints at epoch ends only: the requeue signal's is the newest
    stopped = stopped_run("on_train_batch_end", STEPS_PER_EPOCH + 1, "SIGUSR1", args, slurm,
                          more=f",{STEPS_PER_EPOCH + 2}:SIGKILL")  # SLURM kills the job after its signal
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr
    assert requeued.read_text().split() == ["requeue", "4242"]
    (saved,) = out.glob("hpc_ckpt_*.ckpt")
    assert torch.load(saved, weights_only=True)["global_step"] == STEPS_PER_EPOCH + 1
    resume(args)
    assert same_weights(out / "student.safetensors", uninterrupted)
