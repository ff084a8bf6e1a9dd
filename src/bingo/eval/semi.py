"""The semi-supervised protocol: fine-tune the whole student on a class-balanced share of the labels.

The subsets are drawn once from `eval.semi.seed` and saved as `subsets.json` in the run folder;
passing that file back (`eval.semi.subsets`) fine-tunes another model on exactly the same images.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from bingo.config import Config
from bingo.data.datasets import ImageDataset
from bingo.data.transforms import eval_transform, linear_train_transform
from bingo.data.views import Labeled
from bingo.errors import UserError
from bingo.eval.linear import Classifier, train_and_test
from bingo.models.checkpoints import atomic_write
from bingo.models.encoder import Encoder

SUBSETS_FORMAT = "bingo-subsets/1"
SUBSETS_FILE = "subsets.json"


def fraction_name(fraction: float) -> str:
    """How a share of the labels is named in results and subset files: 0.01 -> '1%'."""
    return f"{100 * fraction:g}%"


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced share of the labeled images: round(fraction * n_c), at least 1, per class."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        picked.append(rng.choice(members, max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(picked))


def label_subsets(cfg: Config, train: ImageDataset, out: Path) -> dict[str, np.ndarray]:
    """Name -> indices of each share in cfg.eval.semi.fractions: read from eval.semi.subsets, or drawn.

    Either way they are written to `out`/subsets.json, so the run folder says which images were used.
    """
    semi = cfg.eval.semi
    names = [fraction_name(f) for f in semi.fractions]
    if semi.subsets:
        stored = _stored_subsets(cfg, train)
        subsets = {name: np.asarray(stored["subsets"][name], dtype=np.int64) for name in names}
        seed = stored["seed"]
    else:
        subsets = {fraction_name(f): balanced_subset(train.labels, f, semi.seed) for f in semi.fractions}
        seed = semi.seed
    text = json.dumps({"format": SUBSETS_FORMAT, "dataset": train.identity, "seed": seed,
                       "subsets": {name: indices.tolist() for name, indices in subsets.items()}})
    atomic_write(out / SUBSETS_FILE, lambda tmp: Path(tmp).write_text(text))
    return subsets


def _read_subsets(path: Path, dataset: dict) -> dict:
    """A subsets.json, checked to be drawn from `dataset` and to hold indices of its images only."""
    fix = "pass the subsets.json of an earlier 'bingo eval semi'"
    if not path.is_file():
        raise UserError(f"subset file {path} does not exist; {fix}")
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not a subset file (not JSON: {err}); {fix}") from None
    if not isinstance(stored, dict) or stored.get("format") != SUBSETS_FORMAT \
            or not isinstance(stored.get("subsets"), dict):
        raise UserError(f"{path} is not a subset file ({SUBSETS_FORMAT}); {fix}")
    if stored.get("dataset") != dataset:
        raise UserError(f"{path} was drawn from another data set ({stored.get('dataset')}) than this run's "
                        f"labeled split ({dataset}); use the same data.* settings or draw new subsets")
    size = dataset["size"]
    for name, indices in stored["subsets"].items():
        if not isinstance(indices, list) or not all(type(i) is int and 0 <= i < size for i in indices):
            raise UserError(f"{path} is not a subset file of this data set (subset {name} holds other than indices "
                            f"0 to {size - 1} of its {size} images); {fix}, or draw new subsets")
    return stored


def check_semi(cfg: Config, network: bool, train: ImageDataset) -> None:
    """Refuse semi-supervised settings that cannot run: no network to fine-tune, unusable subsets, bad shares."""
    if not network:
        raise UserError("raw pixels have no network to fine-tune; the semi-supervised protocol needs a model file")
    bad = [f for f in cfg.eval.semi.fractions if not 0 < f <= 1]
    if bad or not cfg.eval.semi.fractions:
        raise UserError(f"eval.semi.fractions must be shares of the labels in (0, 1], e.g. [0.01, 0.1]; got "
                        f"{cfg.eval.semi.fractions}")
    if cfg.eval.semi.subsets:
        _stored_subsets(cfg, train)


def _stored_subsets(cfg: Config, train: ImageDataset) -> dict:
    """The subset file eval.semi.subsets, checked to fit `train` and to hold every share asked for."""
    stored = _read_subsets(Path(cfg.eval.semi.subsets), train.identity)
    missing = [fraction_name(f) for f in cfg.eval.semi.fractions if fraction_name(f) not in stored["subsets"]]
    if missing:
        raise UserError(f"{cfg.eval.semi.subsets} has no subset for {', '.join(missing)} of the labels (it has "
                        f"{', '.join(stored['subsets'])}); set eval.semi.fractions to match")
    return stored


def semi_supervised(cfg: Config, encoder: Encoder | None, train: ImageDataset, test: ImageDataset,
                    out: Path) -> dict[str, dict[str, float]]:
    """Top-1 and top-5 accuracy (%) after fine-tuning a copy of the whole backbone plus a linear layer, per share."""
    check_semi(cfg, encoder is not None, train)
    semi = cfg.eval.semi
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    results = {}
    for name, indices in label_subsets(cfg, train, out).items():
        classifier = Classifier(copy.deepcopy(encoder.backbone), encoder.feature_dim, classes, semi.lr_head,
                                semi.batch_size, backbone_lr=semi.lr_backbone, weight_decay=semi.weight_decay)
        results[name] = train_and_test(classifier, Labeled(train.subset(indices), linear_train_transform(cfg.data)),
                                       Labeled(test, eval_transform(cfg.data)), cfg, semi.epochs, semi.batch_size,
                                       out / f"semi-{name.rstrip('%')}pct")
        results[name]["images"] = len(indices)
    return results
