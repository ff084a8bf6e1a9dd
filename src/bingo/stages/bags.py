"""`bingo bags`: every training image's bag, by a bagging strategy of BINGO (arXiv 2107.01691, Sec. 3.1)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from bingo.bags.features import load_features
from bingo.bags.files import save_bags
from bingo.bags.report import bag_report, write_montage
from bingo.bags.strategies import FEATURE_STRATEGIES, check_features, check_request, make_bags
from bingo.config import Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.errors import UserError
from bingo.models.encoder import Encoder
from bingo.stages.common import BAGS_FILE, FEATURES_FILE, MONTAGE_FILE, load_teacher, model_encoder, since, source
from bingo.stages.embed import FEATURES, embed
from bingo.store import Artifact, defining_settings, finish_run, open_run, start_run
from bingo.training import is_rank_zero, peak_memory_mib, write_results

log = logging.getLogger("bingo")


def run_bags(cfg: Config, out: Path, resume: bool = False) -> Path:
    """Bags of every training image by cfg.bags.strategy, with a report and a montage, in `out` (reused when made
    with the same settings); returns the bag file."""
    started = time.perf_counter()
    data = build_dataset(cfg.data, "train")
    check_request(cfg.bags, len(data))
    features, network, unreadable = _given_features(cfg, data)
    if features is not None and cfg.bags.strategy in FEATURE_STRATEGIES:
        check_features(features, unreadable)  # a bad features file is refused before the run folder exists
    model = "teacher" if network["kind"] == "teacher" else "student"
    artifact = Artifact("bags", BAGS_FILE, defining_settings(
        cfg, ("seed", "bags", *FEATURES, model), {"dataset": data.identity, "network": network.get("sha256")}))
    if open_run(out, artifact, resume) == "finished":
        return out / BAGS_FILE
    encoder = _network(cfg, network) if features is None else None
    start_run(out, artifact, cfg)
    data.record_unreadable(out)
    if encoder is not None:
        features = embed(cfg, encoder, data, network, out / FEATURES_FILE)
        unreadable = sorted(data.unreadable())
    if not is_rank_zero():  # the other processes only helped compute the features
        return out / BAGS_FILE
    bags = make_bags(cfg.bags, features, data.labels, cfg.seed, cfg.trainer.progress_bar, unreadable)
    bags.meta |= {"images": len(data), "dataset": data.identity, "source": network, "feature_layer": "backbone",
                  "seed": cfg.seed}
    path = out / BAGS_FILE
    save_bags(path, bags)
    report = bag_report(bags, data.labels, features, cfg.bags.report_sample, cfg.seed)
    write_montage(out / MONTAGE_FILE, bags, data, cfg.bags.montage_rows, seed=cfg.seed)
    write_results(out, {"stage": "bags", **bags.meta, "report": report, "unreadable_images": len(data.unreadable()),
                        "wall_time_s": since(started), "peak_memory": peak_memory_mib()})
    finish_run(out, artifact)
    purity = report["purity"]
    log.info("bags (%s): %d images, purity %s; report in %s, montage in %s", cfg.bags.strategy, len(data),
             "n/a (no labels)" if purity is None else f"{100 * purity:.1f}%", out / "results.json",
             out / MONTAGE_FILE)
    return path


def _given_features(cfg: Config, data: ImageDataset) -> tuple[np.ndarray | None, dict, list[int]]:
    """Where the bags' features come from: (a features file's features, or None to compute them; their source;
    the rows of unreadable images in them).

    A features file (bags.features), the student (strategy student: student.checkpoint, or 'random'),
    or the teacher; labels and random bags use the teacher's features only for the report, when given.
    """
    bags = cfg.bags
    if bags.features:
        features, meta = load_features(Path(bags.features), data.identity)
        return features, meta.get("source") or source("features", bags.features), meta.get("unreadable", [])
    if bags.strategy == "student":
        if not cfg.student.checkpoint:
            raise UserError("bags.strategy=student needs the student's weights: pass --model FILE (or 'random')")
        return None, source("student", cfg.student.checkpoint), []
    if bags.strategy in FEATURE_STRATEGIES or cfg.teacher.checkpoint:
        if not cfg.teacher.checkpoint:
            load_teacher(cfg)  # refuses in one line
        return None, source("teacher", cfg.teacher.checkpoint), []
    return None, {"kind": "none"}, []


def _network(cfg: Config, network: dict) -> Encoder | None:
    """The encoder whose features the bags need (None: labels or random bags without a teacher)."""
    if network["kind"] == "student":
        return model_encoder(cfg, network["path"])
    return load_teacher(cfg) if network["kind"] == "teacher" else None
