"""A write that fails midway (disk full, killed) leaves the previous version of the file whole."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bingo.bags.files as bag_files
import bingo.models.checkpoints as checkpoints
from bingo.bags.features import extract_features
from bingo.bags.files import NeighbourBags, load_bags, save_bags
from bingo.data.datasets import build_dataset
from bingo.models.checkpoints import AtomicCheckpointIO, save_encoder
from bingo.models.encoder import Encoder
from bingo.training import write_results
from conftest import tiny_config, tiny_encoder


def half_then_disk_full(write):
    """`write` made to stop halfway: it writes half of what it would have, then fails as a full disk does."""
    def failing(*args, **kwargs):
        write(*args, **kwargs)
        tmp = next(arg for arg in args if isinstance(arg, str | Path))  # the file written
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return failing


def knn_bags(seed: int) -> NeighbourBags:
    rng = np.random.default_rng(seed)
    meta = {"kind": "neighbours", "strategy": "knn", "k": 3, "seed": seed, "dataset": {"size": 8}}
    return NeighbourBags(rng.integers(0, 8, (8, 3)), meta)


def write_result(path: Path, version: int, monkeypatch=None) -> None:
    if monkeypatch:
        monkeypatch.setattr(Path, "write_text", half_then_disk_full(Path.write_text))
    write_results(path.parent, {"version": version, "padding": "x" * 1000})


def write_bags(path: Path, version: int, monkeypatch=None) -> None:
    if monkeypatch:
        monkeypatch.setattr(bag_files.np, "savez", lambda f, **arrays: (f.write(b"PK\x03\x04 half"), _full())[1])
    save_bags(path, knn_bags(version))


def write_encoder(path: Path, version: int, monkeypatch=None) -> None:
    if monkeypatch:
        monkeypatch.setattr(checkpoints, "save_file", half_then_disk_full(checkpoints.save_file))
    cfg = tiny_config()
    save_encoder(tiny_encoder(version), cfg.student, cfg.data, path)


def write_checkpoint(path: Path, version: int, monkeypatch=None) -> None:
    if monkeypatch:
        monkeypatch.setattr(checkpoints.torch, "save", half_then_disk_full(torch.save))
    AtomicCheckpointIO().save_checkpoint({"version": version, "weights": torch.randn(1000)}, str(path))


def _full():
    raise OSError(errno.ENOSPC, "No space left on device")


WRITERS = {"results.json": write_result, "bags.npz": write_bags, "student.safetensors": write_encoder,
           "last.ckpt": write_checkpoint}


@pytest.mark.parametrize("name", WRITERS)
def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch, name):
    path = tmp_path / name
    WRITERS[name](path, 1)
    before = path.read_bytes()
    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space"):
        WRITERS[name](path, 2, patch)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind
    readable = {"results.json": lambda: json.loads(path.read_text())["version"] == 1,
                "bags.npz": lambda: len(load_bags(path)) == 8,
                "student.safetensors": lambda: True,
                "last.ckpt": lambda: torch.load(path, weights_only=True)["version"] == 1}
    assert readable[name]()


def test_a_failed_features_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    cfg = tiny_config()
    data, path = build_dataset(cfg.data, "train"), tmp_path / "features.npy"
    extract_features(tiny_encoder(), data, cfg.data, 32, cfg.trainer, path, progress=False)
    before = path.read_bytes()
    encoder, calls = tiny_encoder(1), []

    def features_then_disk_full(images):
        calls.append(1)
        if len(calls) == 2:  # the second batch: the first one's rows are already written
            raise OSError(errno.ENOSPC, "No space left on device")
        return Encoder.features(encoder, images)

    monkeypatch.setattr(encoder, "features", features_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        extract_features(encoder, data, cfg.data, 32, cfg.trainer, path, progress=False)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]  # no partial file left behind
