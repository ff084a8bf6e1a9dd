"""`bingo cache`: the teacher's outputs on augmented views of every training image, computed once."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L

from bingo.bags.features import teacher_views
from bingo.config import Config
from bingo.data.datasets import build_dataset
from bingo.data.keys import CACHE_FORMAT, LAYERS, augment_identity, cache_files
from bingo.errors import UserError
from bingo.models.checkpoints import atomic_write
from bingo.stages.common import CACHE_FILE, load_teacher, since
from bingo.store import Artifact, defining_settings, finish_run, open_run, start_run
from bingo.training import file_digest, is_rank_zero, peak_memory_mib, write_results

log = logging.getLogger("bingo")


def run_cache(cfg: Config, out: Path, resume: bool = False) -> Path:
    """The teacher's outputs on cfg.cache.views augmented views of every training image, in `out` (reused when
    made with the same settings)."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, verbose=False)
    data = build_dataset(cfg.data, "train")
    if not data.in_memory:
        raise UserError(f"'bingo cache' augments in-memory data sets on the device; {data.name} is read from files: "
                        "decode it once with --set data.decode_cache=DIR")
    if cfg.cache.views < 1 or cfg.cache.batch_size < 1:
        raise UserError("cache.views and cache.batch_size must be at least 1")
    if cfg.cache.layer not in LAYERS:
        raise UserError(f"cache.layer must be one of {', '.join(LAYERS)}, not '{cfg.cache.layer}'")
    teacher = load_teacher(cfg)
    if teacher.head is None and cfg.cache.layer == "embedding":
        raise UserError("the teacher has no projection head (a backbone-only checkpoint), so it has no embeddings "
                        "to cache; use --set cache.layer=features")
    digest = file_digest(Path(cfg.teacher.checkpoint))
    artifact = Artifact("cache", CACHE_FILE, defining_settings(
        cfg, ("seed", "data", "augment", "cache", "teacher"), {"dataset": data.identity, "teacher": digest}))
    if open_run(out, artifact, resume) == "finished":
        return out / CACHE_FILE
    start_run(out, artifact, cfg)
    path = out / CACHE_FILE
    params_path, meta_path = cache_files(path)
    outputs, _ = teacher_views(teacher, cfg.cache.layer, data, cfg.data, cfg.augment, cfg.cache.views,
                               cfg.cache.batch_size, cfg.trainer, path, params_path, cfg.trainer.progress_bar)
    meta = {"format": CACHE_FORMAT, "layer": cfg.cache.layer, "dataset": data.identity,
            "augment": augment_identity(cfg.data, cfg.augment), "teacher": digest,
            "shape": list(outputs.shape), "seed": cfg.seed}
    if is_rank_zero():
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    mib = (path.stat().st_size + params_path.stat().st_size) / 2**20
    write_results(out, {"stage": "cache", **meta, "mib": round(mib, 1), "wall_time_s": since(started),
                        "peak_memory": peak_memory_mib()})
    finish_run(out, artifact)
    log.info("teacher %s of %d views of %d images in %s (%.0f MiB, %.0f s)", cfg.cache.layer, outputs.shape[1],
             len(data), path, mib, since(started))
    return path
