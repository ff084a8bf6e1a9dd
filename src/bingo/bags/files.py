"""The bag file: (N, K) dataset indices plus the metadata that ties them to one data set and teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bingo.errors import UserError
from bingo.models.checkpoints import atomic_write

BAG_FORMAT = "bingo-bags/1"


def save_bags(path: Path, neighbours: np.ndarray, similarities: np.ndarray, meta: dict) -> None:
    """Write bags and their metadata (format, strategy, k, dataset identity, source model) atomically."""
    meta = {"format": BAG_FORMAT, **meta}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, neighbours=neighbours, similarities=similarities, meta=np.array(json.dumps(meta)))
    atomic_write(Path(path), write)


def load_bags(path: Path, dataset_identity: dict | None = None) -> tuple[np.ndarray, dict]:
    """Bags (N, K) and metadata from a bag file, refused if built for another data set."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"bag file {path} does not exist; build it with 'bingo bags'")
    try:
        with np.load(path, allow_pickle=False) as stored:
            neighbours, meta = stored["neighbours"], json.loads(str(stored["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is not a bingo bag file ({err})") from None
    if meta.get("format") != BAG_FORMAT:
        raise UserError(f"{path} is not a bingo bag file (format {meta.get('format')!r})")
    if dataset_identity is not None and meta["dataset"] != dataset_identity:
        raise UserError(f"bag file {path} was built for data set {_describe(meta['dataset'])}, but this run "
                        f"uses {_describe(dataset_identity)}; rebuild the bags with 'bingo bags'")
    return neighbours, meta


def _describe(identity: dict) -> str:
    return f"{identity['name']}/{identity['split']} ({identity['size']} images, {identity['fingerprint']})"
