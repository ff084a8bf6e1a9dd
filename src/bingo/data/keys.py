"""The teacher-key cache: the frozen teacher's keys of V augmented views of every image, computed once.

BINGO's keys ya = f_t(t2(a)) and yp = f_t(t4(p)) come from views the student never sees (arXiv
2107.01691, Eq. 3-4), so a run can draw them from V views cached before training instead of running
the teacher twice per step. The cache is a float16 (N, V, D) `.npy` file, memory-mapped, with a
`.json` sidecar naming the teacher, the data set and the augmentation it was made with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bingo.config import AugmentConfig, DataConfig, to_dict
from bingo.errors import UserError

KEYS_FORMAT = "bingo-teacher-keys/1"


def augment_identity(data: DataConfig, augment: AugmentConfig) -> dict:
    """What decides the distribution of the augmented views: the augmentation and the input format."""
    return {**to_dict(augment), **{k: getattr(data, k) for k in ("image_size", "channels", "mean", "std")}}


class TeacherKeys:
    """A teacher-key cache opened for training: `sample` draws one cached view's key per image."""

    def __init__(self, keys: np.ndarray, meta: dict):
        self.keys, self.meta = keys, meta  # keys: (N, V, D) float16, memory-mapped

    @property
    def views(self) -> int:
        """V, the number of cached views of each image."""
        return self.keys.shape[1]

    @property
    def dim(self) -> int:
        """D, the teacher's embedding size."""
        return self.keys.shape[2]

    def sample(self, indices: np.ndarray) -> torch.Tensor:
        """The normalised key of one uniformly drawn cached view of each image: (B,) -> (B, D) float32."""
        views = torch.randint(self.views, (len(indices),)).numpy()
        return F.normalize(torch.from_numpy(np.asarray(self.keys[indices, views], dtype=np.float32)), dim=1)


def sidecar(path: Path) -> Path:
    """The .json description beside a cache file."""
    return Path(path).with_suffix(".json")


def load_teacher_keys(path: Path, dataset: dict, augment: dict, teacher: str | None) -> TeacherKeys:
    """A cache file, memory-mapped, refused in one line unless made for this data set, augmentation and teacher."""
    path = Path(path)
    fix = "rebuild it with 'bingo cache' for this run's settings"
    if not path.is_file() or not sidecar(path).is_file():
        raise UserError(f"teacher-key cache {path} (and its .json) does not exist; build it with 'bingo cache'")
    try:
        meta = json.loads(sidecar(path).read_text())
        keys = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"teacher-key cache {path} cannot be read ({str(err).splitlines()[0]}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != KEYS_FORMAT:
        raise UserError(f"{sidecar(path)} does not describe a teacher-key cache; {fix}")
    if keys.ndim != 3 or keys.dtype != np.float16 or list(keys.shape) != meta.get("shape"):
        raise UserError(f"teacher-key cache {path} holds a {keys.dtype} array of shape {keys.shape}, not the "
                        f"(images, views, dim) float16 array its .json describes; {fix}")
    for what, mine, theirs in (("data set", dataset, meta.get("dataset")), ("augmentation", augment,
                                                                           meta.get("augment"))):
        if mine != theirs:
            changed = sorted(k for k in set(mine) | set(theirs or {}) if mine.get(k) != (theirs or {}).get(k))
            raise UserError(f"teacher-key cache {path} was made with another {what} (differs in "
                            f"{', '.join(changed)}); {fix}")
    if teacher is not None and meta.get("teacher") != teacher:
        raise UserError(f"teacher-key cache {path} was made with another teacher ({meta.get('teacher')} vs "
                        f"{teacher}); {fix}, or pass the teacher it was made with")
    return TeacherKeys(keys, meta)
