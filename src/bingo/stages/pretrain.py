"""`bingo pretrain`: a MoCo-v2 teacher, trained on the training images without their labels."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import lightning as L

from bingo.config import Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.methods import MoCo, resolve_pretrain_defaults
from bingo.models.encoder import Encoder
from bingo.stages.common import TEACHER_FILE, TRAINING, finish_training, since, training_data
from bingo.store import Artifact, defining_settings, open_run, start_run
from bingo.training import check_resumable, fit


def pretrain_artifact(cfg: Config, data: ImageDataset) -> Artifact:
    """The teacher a pretraining makes: defined by the training settings, the teacher's network and the recipe."""
    return Artifact("pretrain", TEACHER_FILE,
                    defining_settings(cfg, (*TRAINING, "teacher", "pretrain"), {"dataset": data.identity}))


def run_pretrain(cfg: Config, out: Path, resume: bool = False) -> Path:
    """Pretrain a MoCo-v2 teacher in `out` (reused when made with the same settings); returns its encoder file."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg = copy.deepcopy(cfg)
    resolve_pretrain_defaults(cfg)  # head width and shuffle-BN left null: MoCo-v2's own
    data = build_dataset(cfg.data, "train")
    artifact = pretrain_artifact(cfg, data)
    state = open_run(out, artifact, resume)
    if state == "finished":
        return out / artifact.product
    module = MoCo(student=Encoder(cfg.teacher, cfg.data.channels), optim=cfg.pretrain.optim, moco=cfg.pretrain.moco,
                  run_info={"run": artifact.digest})
    if state == "resume":
        check_resumable(out, module)
    dataset = training_data(cfg, data, module)
    start_run(out, artifact, cfg)
    fit_started = time.perf_counter()
    trainer = fit(module, dataset, cfg, cfg.pretrain.optim, out, resume=state == "resume")
    return finish_training(module, trainer, cfg.teacher, cfg, artifact, out, data,
                           {"stage": "pretrain", "method": "moco", "fit_time_s": since(fit_started)}, started)
