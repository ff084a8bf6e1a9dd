"""The README's Python example trains a BINGO student without the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from bingo.models.checkpoints import load_encoder
from conftest import BATCH, TINY, TRAIN_SIZE, tiny_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_bingo.py"


def test_the_python_example_trains_a_bingo_student(chain, tmp_path):
    out = tmp_path / "student"
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(chain.teacher), str(out), *TINY], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == TRAIN_SIZE // BATCH  # one epoch of the tiny data set, all its steps
    cfg = tiny_config()
    student = load_encoder(out / "student.safetensors", cfg.student, cfg.data).state_dict()
    trained = {k.removeprefix("student."): v for k, v in checkpoint["state_dict"].items() if k.startswith("student.")}
    assert student.keys() == trained.keys() and all(torch.equal(student[k], trained[k]) for k in student)
