"""The teacher-output cache: the frozen teacher's outputs on V augmented views of every image, computed once.

BINGO's keys ya = f_t(t2(a)) and yp = f_t(t4(p)) come from views the student never sees (the BINGO
loss of arXiv 2107.01691), so a run draws them from V views cached before training instead of running
the teacher twice per step. SEED, CompRess, DisCo and SimReg compare student and teacher on the
same view: the cache also stores each view's augmentation parameters, and the student's view is
rebuilt from them exactly (FKD, Shen & Xing, arXiv 2112.01528).

Files, written by `bingo cache`: outputs.npy (N, V, D) float16 (embeddings or backbone features),
views.npy (N, V, P) float16 view parameters, both memory-mapped, and outputs.json naming the teacher,
the layer, the data set and the augmentation they were made with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bingo.config import AugmentConfig, DataConfig, to_dict
from bingo.errors import UserError
from bingo.models.checkpoints import ARRAY_ERRORS, array_error

CACHE_FORMAT = "bingo-teacher-cache/1"
LAYERS = ("embedding", "features")  # the teacher's normalised embeddings, or its pooled backbone features


def augment_identity(data: DataConfig, augment: AugmentConfig) -> dict:
    """What decides the distribution of the augmented views: the augmentation and the input format."""
    return {**to_dict(augment), **{k: getattr(data, k) for k in ("image_size", "channels", "mean", "std")}}


class TeacherOutputs:
    """A teacher-output cache opened for training: cached outputs (and view parameters) of drawn views."""

    def __init__(self, outputs: np.ndarray, views: np.ndarray, meta: dict):
        self.outputs, self.params, self.meta = outputs, views, meta  # (N, V, D), (N, V, P) float16, memory-mapped

    @property
    def views(self) -> int:
        """V, the number of cached views of each image."""
        return self.outputs.shape[1]

    @property
    def dim(self) -> int:
        """D, the size of the cached outputs."""
        return self.outputs.shape[2]

    def sample(self, indices: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """The normalised output of one uniformly drawn cached view of each image: (B,) -> (B, D) float32."""
        views = torch.randint(self.views, (len(indices),), generator=generator).numpy()
        return F.normalize(torch.from_numpy(np.asarray(self.outputs[indices, views], dtype=np.float32)), dim=1)

    def sample_views(self, indices: np.ndarray, count: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` distinct cached views of each image: outputs (B, count, D) and parameters (B, count, P), float32."""
        views = torch.rand(len(indices), self.views, generator=generator).argsort(1)[:, :count].numpy()  # (B, count)
        rows = np.asarray(indices)[:, None]
        return (torch.from_numpy(np.asarray(self.outputs[rows, views], dtype=np.float32)),
                torch.from_numpy(np.asarray(self.params[rows, views], dtype=np.float32)))


def cache_files(outputs: Path) -> tuple[Path, Path]:
    """The view-parameter file and the .json description beside a cache's outputs.npy."""
    outputs = Path(outputs)
    return outputs.with_name("views.npy"), outputs.with_suffix(".json")


def load_teacher_outputs(path: Path, dataset: dict, augment: dict, teacher: str | None, layer: str,
                         views: int) -> TeacherOutputs:
    """A cache, memory-mapped, refused in one line unless made for this data set, augmentation, teacher and layer."""
    path = Path(path)
    params_path, meta_path = cache_files(path)
    fix = "rebuild it with 'bingo cache' for this run's settings"
    if not all(p.is_file() for p in (path, params_path, meta_path)):
        raise UserError(f"teacher cache {path} (with views.npy and outputs.json beside it) does not exist; build it "
                        "with 'bingo cache'")
    try:
        meta = json.loads(meta_path.read_text())
        outputs = np.load(path, mmap_mode="r", allow_pickle=False)
        params = np.load(params_path, mmap_mode="r", allow_pickle=False)
        if not isinstance(outputs, np.ndarray) or not isinstance(params, np.ndarray):
            raise ValueError("an .npz archive, not one array")
    except ARRAY_ERRORS as err:
        raise UserError(f"teacher cache {path} cannot be read ({array_error(err)}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise UserError(f"{meta_path} does not describe a teacher cache; {fix}")
    if outputs.ndim != 3 or outputs.dtype != np.float16 or list(outputs.shape) != meta.get("shape") \
            or params.shape[:2] != outputs.shape[:2]:
        raise UserError(f"teacher cache {path} holds a {outputs.dtype} array of shape {outputs.shape} (views "
                        f"{params.shape}), not the (images, views, dim) float16 arrays its .json describes; {fix}")
    if meta.get("layer") != layer:
        raise UserError(f"teacher cache {path} holds the teacher's {meta.get('layer')}, but this method needs its "
                        f"{layer}: build one with 'bingo cache --set cache.layer={layer}'")
    if outputs.shape[1] < views:
        raise UserError(f"teacher cache {path} has {outputs.shape[1]} views of each image, but this method needs "
                        f"{views} different ones; build it with --views {views} or more")
    for what, mine, theirs in (("data set", dataset, meta.get("dataset")), ("augmentation", augment,
                                                                           meta.get("augment"))):
        if mine != theirs:
            changed = sorted(k for k in set(mine) | set(theirs or {}) if mine.get(k) != (theirs or {}).get(k))
            raise UserError(f"teacher cache {path} was made with another {what} (differs in "
                            f"{', '.join(changed)}); {fix}")
    if teacher is not None and meta.get("teacher") != teacher:
        raise UserError(f"teacher cache {path} was made with another teacher ({meta.get('teacher')} vs "
                        f"{teacher}); {fix}, or pass the teacher it was made with")
    return TeacherOutputs(outputs, params, meta)
