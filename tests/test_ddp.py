"""The tiny BINGO distillation as two CPU processes (Lightning DDP, gloo): the queue gets the keys of both."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import QUEUE, TRAIN_SIZE, check_ok, read_json, tiny_sets

PER_PROCESS = 16

# A fixed seed before anything else, so that both runs build the same initial (random) queue.
DRIVER = """\
import sys
import numpy as np
import torch
torch.manual_seed(1234)
from bingo.cli import main
sys.exit(main())
"""


def distill(driver, chain, out, *extra: str) -> subprocess.CompletedProcess:
    args = ["distill", *tiny_sets(*extra), "--method", "bingo", "--teacher", str(chain.teacher),
            "--bags", str(chain.bags), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, timeout=300,
                          env=env)


def checkpoint(out) -> dict:
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_ddp_two_processes_fill_one_queue(chain, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    # Reference: one process, the same per-process batch, two steps.
    single = tmp_path / "single"
    check_ok(distill(driver, chain, single, f"distill.optim.batch_size={PER_PROCESS}", "trainer.limit_train_batches=2"))
    ref = checkpoint(single)
    assert ref["global_step"] == 2
    assert int(ref["state_dict"]["queue.ptr"]) == PER_PROCESS * 2  # one process: B keys per step

    # Two processes, global batch 2 x 16: each process sees half the images.
    ddp = tmp_path / "ddp"
    proc = distill(driver, chain, ddp, f"distill.optim.batch_size={2 * PER_PROCESS}", "trainer.devices=2",
                   "trainer.strategy=ddp", "trainer.accelerator=cpu")
    check_ok(proc)
    ckpt = checkpoint(ddp)
    steps = TRAIN_SIZE // (2 * PER_PROCESS)
    assert ckpt["global_step"] == steps == 4
    written = 2 * PER_PROCESS * steps
    assert written < QUEUE  # the queue has not wrapped
    assert int(ckpt["state_dict"]["queue.ptr"]) == written % QUEUE == 128  # both processes' keys every step

    keys, initial_tail = ckpt["state_dict"]["queue.keys"], ref["state_dict"]["queue.keys"]
    assert keys.shape == (QUEUE, 16)
    # Rows past what either run wrote still hold the initial random keys, identical in both runs ...
    assert torch.equal(keys[written:], initial_tail[written:])
    # ... and exactly the `written` first rows of the DDP queue changed.
    changed = (keys != initial_tail).any(dim=1)
    assert changed.nonzero().flatten().tolist() == list(range(written))
    torch.testing.assert_close(keys[:written].norm(dim=1), torch.ones(written))
    for step in range(steps):  # rank 0's and rank 1's keys, not one rank's twice
        first = keys[step * 2 * PER_PROCESS:(step * 2 + 1) * PER_PROCESS]
        second = keys[(step * 2 + 1) * PER_PROCESS:(step + 1) * 2 * PER_PROCESS]
        assert (first - second).abs().max() > 1e-3

    teacher = load_file(str(chain.teacher))
    assert all(torch.equal(ckpt["state_dict"][f"teacher.{k}"], v) for k, v in teacher.items())

    # One process writes: one results file, one checkpoint, one config, one student.
    names = [p.name for p in ddp.rglob("*") if p.is_file()]
    for name in ("results.json", "last.ckpt", "config.yaml", "student.safetensors"):
        assert names.count(name) == 1, names
    result = read_json(ddp / "results.json")
    assert (result["method"], result["epochs"], result["images"]) == ("bingo", 1, TRAIN_SIZE)
    student = load_file(str(ddp / "student.safetensors"))
    assert all(torch.equal(ckpt["state_dict"][f"student.{k}"], v) for k, v in student.items())


def test_ddp_embed_each_process_writes_its_rows(chain, tmp_path):
    """Two processes share one features file; an odd data set size makes the shards uneven."""
    odd = "data.generated_train_size=101"
    runs = {}
    for name, extra in [("single", []), ("ddp", ["trainer.devices=2", "trainer.strategy=ddp"])]:
        out = tmp_path / name
        args = ["embed", *tiny_sets(odd, "trainer.accelerator=cpu", "embed.batch_size=16", *extra),
                "--teacher", str(chain.teacher), "--out", str(out)]
        proc = subprocess.run([sys.executable, "-m", "bingo", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        check_ok(proc)
        runs[name] = np.load(out / "features.npy")
    assert runs["ddp"].shape == (101, 64)
    np.testing.assert_allclose(runs["ddp"], runs["single"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(runs["ddp"], axis=1), 1, atol=1e-5)  # no row left unwritten
    assert not list((tmp_path / "ddp").glob(".features.npy.*"))  # the partial file was moved into place
