"""What the stages share: their files, the networks they load, the end of a training run."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import lightning as L
from torch.utils.data import Dataset

from bingo.bags.features import calibrate_batchnorm
from bingo.bags.files import Bags
from bingo.config import Config, ModelConfig
from bingo.data.augment import BatchAugment
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.data.keys import TeacherOutputs
from bingo.data.transforms import moco_v2_transform
from bingo.errors import UserError
from bingo.methods.base import Method
from bingo.models.checkpoints import load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.store import Artifact, finish_run
from bingo.training import file_digest, is_rank_zero, peak_memory_mib, write_results

log = logging.getLogger("bingo")
TEACHER_FILE, STUDENT_FILE, BAGS_FILE = "teacher.safetensors", "student.safetensors", "bags.npz"
FEATURES_FILE, MONTAGE_FILE, CACHE_FILE = "features.npy", "montage.png", "outputs.npy"
RESULTS_FILE = "results.json"
AUGMENT_ON = ("auto", "device", "workers")
# the training settings every trained artifact depends on (the method's or the pretraining's own sections aside)
TRAINING = ("seed", "data", "augment", "trainer")


def training_data(cfg: Config, data: ImageDataset, module: Method, bags: Bags | None = None,
                  cache: TeacherOutputs | None = None) -> Dataset:
    """`module`'s training samples: uint8 batches it augments on its device, or views augmented by loader workers.

    In-memory data sets (Fashion-MNIST, CIFAR, STL-10, generated) take the device path unless
    data.augment_on=workers; folders of image files always take the worker path.
    """
    where = cfg.data.augment_on
    if where not in AUGMENT_ON:
        raise UserError(f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, not '{where}'")
    if where == "device" and not data.in_memory:
        raise UserError(f"data.augment_on=device needs a data set held in memory; {data.name} is read from files "
                        "one by one: decode it once with --set data.decode_cache=DIR, or use data.augment_on=workers")
    if where == "workers" and cache is not None:
        raise UserError("a teacher cache (distill.teacher_cache) needs data.augment_on=device or auto")
    augment = module.views.augment(cfg.augment)
    if data.in_memory and where != "workers":
        module.use_device_augment(BatchAugment(cfg.data, augment), cfg.trainer.channels_last)
        return module.views.batches(data, bags, cache, module.cached_views)
    module.use_memory_format(cfg.trainer.channels_last)
    return module.views.per_image(data, moco_v2_transform(cfg.data, augment), bags)


def load_teacher(cfg: Config) -> Encoder:
    """The teacher of cfg.teacher.checkpoint; refused in one line when none is given."""
    if not cfg.teacher.checkpoint:
        raise UserError("no teacher given: pass --teacher FILE (e.g. teacher.safetensors from 'bingo pretrain')")
    return load_encoder(cfg.teacher.checkpoint, cfg.teacher, cfg.data)


def evaluated_model(model: ModelConfig) -> ModelConfig:
    """`model` as an evaluation names it: a head width left to a method (null) is the width Encoder builds then
    (an evaluation never uses the head)."""
    return dataclasses.replace(model, head_hidden=model.head_width())


def random_encoder(cfg: Config, model: ModelConfig, calibrated: bool) -> Encoder:
    """A freshly initialised encoder; `calibrated`: its BatchNorm statistics estimated on the training data."""
    L.seed_everything(cfg.seed, verbose=False)
    encoder = Encoder(model, cfg.data.channels)
    if calibrated:
        calibrate_batchnorm(encoder, build_dataset(cfg.data, "train"), cfg.data, cfg.augment)
    return encoder


def model_encoder(cfg: Config, model: str) -> Encoder | None:
    """The network `model` names for evaluation or features: a student file, `random`, `random-init`, or
    None for `pixels` (raw pixels)."""
    if model == "pixels":
        return None
    if model in ("random", "random-init"):
        return random_encoder(cfg, cfg.student, calibrated=model == "random")
    return load_encoder(model, cfg.student, cfg.data)


def model_identity(model: str) -> str:
    """What identifies a model argument: its file's hash, or the name (pixels, random, random-init)."""
    return file_digest(Path(model)) if Path(model).is_file() else model


def source(kind: str, model: str) -> dict:
    """The identity of the network (or features file) bags and features come from."""
    return {"kind": kind, "path": str(model), "sha256": model_identity(model)}


def finish_training(module: Method, trainer: L.Trainer, model: ModelConfig, cfg: Config, artifact: Artifact,
                    out: Path, data: ImageDataset, summary: dict, started: float) -> Path:
    """Save the trained encoder and results.json (rank 0), mark the artifact finished, say so in one line."""
    path = out / artifact.product
    if is_rank_zero():
        save_encoder(module.student, model, cfg.data, path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch")}
    unreadable = len(data.unreadable())
    write_results(out, {**summary, "images": len(data), "unreadable_images": unreadable,
                        "epochs": trainer.current_epoch, "steps": trainer.global_step, "final_metrics": metrics,
                        "wall_time_s": since(started), "peak_memory": peak_memory_mib()})
    finish_run(out, artifact)
    skipped = f"; {unreadable} unreadable images skipped (listed in {data.unreadable_log})" if unreadable else ""
    log.info("%s: %d epochs, %d steps in %.0f s; %s written%s", summary["stage"], trainer.current_epoch,
             trainer.global_step, since(started), path, skipped)
    return path


def slug(name: str) -> str:
    """A folder name for a row label: 'student, MoCo-v2' -> 'student-moco-v2'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def since(started: float) -> float:
    """Seconds since `started` (a perf_counter reading), to 0.1 s."""
    return round(time.perf_counter() - started, 1)


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}
