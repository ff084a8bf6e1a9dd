"""A fixed-seed run of each stage gives the numbers it gave before the harness was reshaped (commit 084b3e5).

The shared tiny chain (pretrain -> kNN bags -> BINGO and MoCo-v2 students -> kNN and linear evaluation)
is compared with what the same chain produced at commit 084b3e5, the last commit before the stages
became modules with a run store (issue 16). A change that is meant to alter what is computed must
update these numbers and say why in its commit; `benchmarks/same_weights.sh REV` compares any two
commits bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

# measured by this file at commit 084b3e5 (BINGO_RECORD=1 prints them), single-threaded as conftest sets; recorded
# again when the crop moved from torchvision's roi_align to grid_sample (the same sampling points; float rounding
# of about 1e-5 in the views moves the weights by about 1e-5 relative and one of 64 test images' kNN@10 vote)
BEFORE = {
    "teacher": [1334.9863694969858, 12214.875763999404],
    "bags": "abf14be3a3f3a4f4",
    "bingo": [1449.4261995142597, 12435.828110040067],
    "moco": [1336.7084979127158, 12218.234745735874],
    "eval": {"knn": {"3": {"top1": 71.875, "top5": 100.0}, "10": {"top1": 81.25, "top5": 100.0}},
             "linear": 45.3125},
}


def weights_summary(path) -> list[float]:
    """Sum and sum of absolute values of every weight of an encoder file (float64)."""
    tensors = load_file(str(path))
    values = [tensors[k].double() for k in sorted(tensors)]
    return [float(sum(v.sum() for v in values)), float(sum(v.abs().sum() for v in values))]


def measured(chain) -> dict:
    """This chain's numbers: weight summaries, the bags' checksum, the evaluation's accuracies."""
    with np.load(chain.bags) as bags:
        neighbours = hashlib.sha256(np.ascontiguousarray(bags["neighbours"]).tobytes()).hexdigest()[:16]
    (row,) = json.loads((chain.eval / "results.json").read_text())["rows"].values()
    return {"teacher": weights_summary(chain.teacher), "bags": neighbours,
            "bingo": weights_summary(chain.bingo / "student.safetensors"),
            "moco": weights_summary(chain.moco / "student.safetensors"),
            "eval": {"knn": row["knn"], "linear": row["linear"]["top1"]}}


def test_each_stage_gives_the_numbers_it_gave_before(chain):
    now = measured(chain)
    if os.environ.get("BINGO_RECORD"):
        print("BEFORE =", json.dumps(now))
        pytest.skip("recording")
    for stage, before in BEFORE.items():
        if isinstance(before, list):
            assert now[stage] == pytest.approx(before, rel=1e-7), stage
        else:
            assert now[stage] == before, stage
    assert torch.get_num_threads() == 1  # the numbers were recorded single-threaded
