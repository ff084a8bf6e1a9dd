"""`bingo embed`: L2-normalised backbone features of a split, from a student, a random network or the teacher."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bingo.bags.features import extract_features, read_features_meta, write_features_meta
from bingo.config import Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.errors import UserError
from bingo.models.encoder import Encoder
from bingo.stages.common import FEATURES_FILE, load_teacher, model_encoder, since, source
from bingo.store import Artifact, defining_settings, finish_run, open_run, start_run
from bingo.training import peak_memory_mib, write_results

FEATURES = ("data", "embed.dtype")  # what features depend on besides the network and the images


def features_settings(cfg: Config, network: dict, data: ImageDataset) -> dict:
    """The settings that define features of `data` from `network` (a `source` dict; its model section too)."""
    sections = (*FEATURES, "teacher" if network["kind"] == "teacher" else "student")
    return defining_settings(cfg, sections, {"dataset": data.identity, "network": network["sha256"]})


def run_embed(cfg: Config, out: Path, model: str | None, resume: bool = False) -> Path:
    """Features of cfg.embed.split from `model` (student config) or the teacher, in `out` (reused when made
    with the same settings)."""
    started = time.perf_counter()
    if not model and not cfg.teacher.checkpoint:
        raise UserError("'bingo embed' needs a network: pass --model FILE|random|random-init or --teacher FILE")
    network = source("student", model) if model else source("teacher", cfg.teacher.checkpoint)
    data = build_dataset(cfg.data, cfg.embed.split)
    artifact = Artifact("embed", FEATURES_FILE, features_settings(cfg, network, data))
    if open_run(out, artifact, resume) == "finished":
        return out / FEATURES_FILE
    encoder = model_encoder(cfg, model) if model else load_teacher(cfg)
    if encoder is None:
        raise UserError("raw pixels have no features to embed: pass --model FILE|random|random-init")
    start_run(out, artifact, cfg)
    data.record_unreadable(out)
    path = out / FEATURES_FILE
    embed(cfg, encoder, data, network, path)
    write_results(out, {"stage": "embed", **read_features_meta(path), "wall_time_s": since(started),
                        "peak_memory": peak_memory_mib()})
    finish_run(out, artifact)
    return path


def embed(cfg: Config, encoder: Encoder, data: ImageDataset, network: dict, path: Path) -> np.ndarray:
    """`data`'s features, written to `path` (.npy, by all processes of a distributed job) with a .json description.

    Returns them memory-mapped.
    """
    if cfg.embed.dtype not in ("float32", "float16"):
        raise UserError(f"embed.dtype must be float32 or float16, not '{cfg.embed.dtype}'")
    features = extract_features(encoder, data, cfg.data, cfg.embed.batch_size, cfg.trainer, path, cfg.embed.dtype,
                                cfg.trainer.progress_bar)
    write_features_meta(path, {"dataset": data.identity, "source": network, "layer": "backbone",
                               "shape": list(features.shape), "dtype": cfg.embed.dtype,
                               "unreadable": sorted(data.unreadable())})  # their rows are zero
    return features
