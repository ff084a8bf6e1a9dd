"""The stages a user runs: pretrain a teacher, build bags, distil a student, evaluate."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import Dataset

from bingo.bags.features import (
    calibrate_batchnorm,
    extract_features,
    load_features,
    pixel_features,
    read_features_meta,
    teacher_views,
    write_features_meta,
)
from bingo.bags.files import Bags, check_bags, load_bags, save_bags
from bingo.bags.knn import bag_purity, knn_bags
from bingo.bags.report import bag_report, write_montage
from bingo.bags.strategies import FEATURE_STRATEGIES, check_features, check_request, make_bags
from bingo.config import PROTOCOLS, Config, ModelConfig, to_dict
from bingo.data.augment import BatchAugment
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.data.keys import (
    CACHE_FORMAT,
    LAYERS,
    TeacherOutputs,
    augment_identity,
    cache_files,
    load_teacher_outputs,
)
from bingo.data.transforms import moco_v2_transform
from bingo.data.views import BagViews, ImageBatches, Views
from bingo.errors import UserError
from bingo.eval.knn import knn_accuracy
from bingo.eval.linear import FEATURE_VARIANTS, check_linear, linear_eval
from bingo.eval.semi import check_semi, semi_supervised
from bingo.methods import METHODS, MoCo, build_method, needs_teacher
from bingo.methods.base import Method, require_same_dim
from bingo.models.backbones import count_parameters
from bingo.models.checkpoints import atomic_write, load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.report import write_report
from bingo.training import (
    check_resumable,
    file_digest,
    fit,
    is_rank_zero,
    peak_memory_mib,
    prepare_run_folder,
    write_results,
)

log = logging.getLogger("bingo")
TEACHER_FILE, STUDENT_FILE, BAGS_FILE = "teacher.safetensors", "student.safetensors", "bags.npz"
FEATURES_FILE, MONTAGE_FILE, CACHE_FILE = "features.npy", "montage.png", "outputs.npy"
AUGMENT_ON = ("auto", "device", "workers")
PURITY_SAMPLE = 20000  # anchors for the bag purity an evaluation reports
BAG_SHAPE = ("strategy", "k", "clusters")  # what a bag file records of how its bags were made


def run_pretrain(cfg: Config, out: Path, resume: bool = False) -> Path:
    """Pretrain a MoCo-v2 teacher on the training images (labels unused); returns its encoder file."""
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_dataset(cfg.data, "train")
    run_info = {"dataset": data.identity}
    module = MoCo(student=Encoder(cfg.teacher, cfg.data.channels), optim=cfg.pretrain.optim, moco=cfg.pretrain.moco,
                  run_info=run_info)
    if resume:
        check_resumable(out, module)
    prepare_run_folder(out, cfg, resume, run_info)
    dataset, fit_started = training_data(cfg, data, module), time.perf_counter()
    trainer = fit(module, dataset, cfg, cfg.pretrain.optim, out, resume)
    return _finish_training(module, trainer, cfg.teacher, cfg, out / TEACHER_FILE, data,
                            {"stage": "pretrain", "method": "moco", "fit_time_s": _since(fit_started)}, started)


def run_embed(cfg: Config, out: Path, model: str | None) -> Path:
    """L2-normalised backbone features of cfg.embed.split, from `model` (student config) or the teacher."""
    started = time.perf_counter()
    encoder, source = (_eval_model(cfg, model), _source("student", model)) if model else \
        (_load_teacher(cfg), _source("teacher", cfg.teacher.checkpoint))
    if encoder is None:
        raise UserError("'bingo embed' needs a network: pass --model FILE|random|random-init or --teacher FILE")
    data = build_dataset(cfg.data, cfg.embed.split)
    prepare_run_folder(out, cfg, resume=False)
    data.record_unreadable(out)
    path = out / FEATURES_FILE
    embed(cfg, encoder, data, source, path)
    write_results(out, {"stage": "embed", **read_features_meta(path), "wall_time_s": _since(started),
                        "peak_memory": peak_memory_mib()})
    return path


def embed(cfg: Config, encoder: Encoder, data: ImageDataset, source: dict, path: Path) -> np.ndarray:
    """`data`'s features, written to `path` (.npy, by all processes of a distributed job) with a .json description.

    Returns them memory-mapped.
    """
    if cfg.embed.dtype not in ("float32", "float16"):
        raise UserError(f"embed.dtype must be float32 or float16, not '{cfg.embed.dtype}'")
    features = extract_features(encoder, data, cfg.data, cfg.embed.batch_size, cfg.trainer, path, cfg.embed.dtype,
                                cfg.trainer.progress_bar)
    write_features_meta(path, {"dataset": data.identity, "source": source, "layer": "backbone",
                               "shape": list(features.shape), "dtype": cfg.embed.dtype,
                               "unreadable": sorted(data.unreadable())})  # their rows are zero
    return features


def run_bags(cfg: Config, out: Path) -> Path:
    """Bags of every training image by cfg.bags.strategy, with a report and a montage; returns the bag file."""
    started = time.perf_counter()
    data = build_dataset(cfg.data, "train")
    check_request(cfg.bags, len(data))
    features, source, encoder, unreadable = _bag_features(cfg, data)
    if features is not None and cfg.bags.strategy in FEATURE_STRATEGIES:
        check_features(features, unreadable)  # a bad features file is refused before the run folder exists
    prepare_run_folder(out, cfg, resume=False)
    data.record_unreadable(out)
    if encoder is not None:
        features = embed(cfg, encoder, data, source, out / FEATURES_FILE)
        unreadable = sorted(data.unreadable())
    if not is_rank_zero():  # the other processes only helped compute the features
        return out / BAGS_FILE
    bags = make_bags(cfg.bags, features, data.labels, cfg.seed, cfg.trainer.progress_bar, unreadable)
    bags.meta |= {"images": len(data), "dataset": data.identity, "source": source, "feature_layer": "backbone",
                  "seed": cfg.seed}
    path = out / BAGS_FILE
    save_bags(path, bags)
    report = bag_report(bags, data.labels, features, cfg.bags.report_sample, cfg.seed)
    write_montage(out / MONTAGE_FILE, bags, data, cfg.bags.montage_rows, seed=cfg.seed)
    write_results(out, {"stage": "bags", **bags.meta, "report": report, "unreadable_images": len(data.unreadable()),
                        "wall_time_s": _since(started), "peak_memory": peak_memory_mib()})
    purity = report["purity"]
    log.info("bags (%s): %d images, purity %s; report in %s, montage in %s", cfg.bags.strategy, len(data),
             "n/a (no labels)" if purity is None else f"{100 * purity:.1f}%", out / "results.json",
             out / MONTAGE_FILE)
    return path


def _bag_features(cfg: Config, data: ImageDataset) -> tuple[np.ndarray | None, dict, Encoder | None, list[int]]:
    """Where the bags' features come from: (features already computed, source, or the encoder to compute them,
    the rows of unreadable images in the features).

    A features file (bags.features), the student (strategy student: student.checkpoint, or 'random'),
    or the teacher; labels and random bags use the teacher's features only for the report, when given.
    """
    bags = cfg.bags
    if bags.features:
        features, meta = load_features(Path(bags.features), data.identity)
        return features, meta.get("source") or _source("features", bags.features), None, meta.get("unreadable", [])
    if bags.strategy == "student":
        if not cfg.student.checkpoint:
            raise UserError("bags.strategy=student needs the student's weights: pass --model FILE (or 'random')")
        return None, _source("student", cfg.student.checkpoint), _eval_model(cfg, cfg.student.checkpoint), []
    if bags.strategy in FEATURE_STRATEGIES or cfg.teacher.checkpoint:
        return None, _source("teacher", cfg.teacher.checkpoint), _load_teacher(cfg), []
    return None, {"kind": "none"}, None, []


def _source(kind: str, model: str) -> dict:
    """The identity of the network (or features file) bags and features come from."""
    exists = Path(model).is_file()
    return {"kind": kind, "path": str(model), "sha256": file_digest(Path(model)) if exists else model}


def run_distill(cfg: Config, out: Path, resume: bool = False, asked_bags: tuple[str, ...] = ()) -> Path:
    """Train the student with cfg.distill.method; returns its encoder file.

    The bag file is the truth for its strategy, K and clusters (the run's config records them);
    `asked_bags` names the bags.* settings the user asked for, which must agree with the file.
    """
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    name = cfg.distill.method
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    data = build_dataset(cfg.data, "train")
    run_info = {"dataset": data.identity, "method": name}
    student = Encoder(cfg.student, cfg.data.channels)  # first: the same seed gives every method the same start
    teacher, cache, bags = None, None, None
    if needs_teacher(cfg):
        teacher = _load_teacher(cfg)
        run_info["teacher"] = file_digest(Path(cfg.teacher.checkpoint))
    module = build_method(cfg, student, teacher, run_info)
    if cfg.distill.teacher_cache:
        cache = _teacher_cache(cfg, data, module)
        run_info["teacher"] = cache.meta["teacher"]
        run_info["teacher_cache"] = file_digest(cache_files(Path(cfg.distill.teacher_cache))[1])
        module.drop_teacher()
    if module.views == "bags":
        if not cfg.distill.bags:
            raise UserError(f"{name} needs bags: pass --bags FILE (built by 'bingo bags')")
        bags = load_bags(Path(cfg.distill.bags))
        expected = {key: getattr(cfg.bags, key) for key in asked_bags if key in BAG_SHAPE}
        check_bags(Path(cfg.distill.bags), bags, data.identity, {**expected, "teacher": run_info.get("teacher")})
        for key in BAG_SHAPE:  # the run's config says what the bags are
            if key in bags.meta:
                setattr(cfg.bags, key, bags.meta[key])
        run_info["bags"] = file_digest(Path(cfg.distill.bags))
    dataset = training_data(cfg, data, module, bags, cache)
    if resume:
        check_resumable(out, module)
    prepare_run_folder(out, cfg, resume, run_info)
    fit_started = time.perf_counter()
    trainer = fit(module, dataset, cfg, cfg.distill.optim, out, resume)
    return _finish_training(module, trainer, cfg.student, cfg, out / STUDENT_FILE, data,
                            {"stage": "distill", "method": name, "fit_time_s": _since(fit_started)}, started)


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
    if data.in_memory and where != "workers":
        module.use_device_augment(BatchAugment(cfg.data, cfg.augment), cfg.trainer.channels_last)
        return ImageBatches(data, bags, cache, module.cached_views)
    module.use_memory_format(cfg.trainer.channels_last)
    transform = moco_v2_transform(cfg.data, cfg.augment)
    return Views(data, transform, module.views) if bags is None else BagViews(data, bags, transform)


def _teacher_cache(cfg: Config, data: ImageDataset, module: Method) -> TeacherOutputs:
    """The run's teacher cache, checked against its method, data set, augmentation, teacher and student."""
    d = cfg.distill
    if d.method == "moco" or (d.method == "bingo" and d.bingo.keys != "teacher") or d.teacher_bn != "eval":
        raise UserError("a teacher cache (--teacher-cache) serves the methods that distil a teacher whose BatchNorm "
                        "runs in eval mode (distill.teacher_bn=eval); moco and bingo with momentum keys have none")
    teacher = file_digest(Path(cfg.teacher.checkpoint)) if cfg.teacher.checkpoint else None
    cache = load_teacher_outputs(Path(d.teacher_cache), data.identity, augment_identity(cfg.data, cfg.augment),
                                 teacher, module.cache_layer, module.cached_views)
    if module.teacher is None:  # BINGO without a teacher file: the cache alone says what the keys are
        require_same_dim(cfg.student.embed_dim, cache.dim, "cached keys", "student.embed_dim")
    return cache


def run_cache(cfg: Config, out: Path) -> Path:
    """The teacher's outputs on cfg.cache.views augmented views of every training image (`bingo cache`)."""
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
    teacher = _load_teacher(cfg)
    if teacher.head is None and cfg.cache.layer == "embedding":
        raise UserError("the teacher has no projection head (a backbone-only checkpoint), so it has no embeddings "
                        "to cache; use --set cache.layer=features")
    prepare_run_folder(out, cfg, resume=False)
    path = out / CACHE_FILE
    params_path, meta_path = cache_files(path)
    outputs, _ = teacher_views(teacher, cfg.cache.layer, data, cfg.data, cfg.augment, cfg.cache.views,
                               cfg.cache.batch_size, cfg.trainer, path, params_path, cfg.trainer.progress_bar)
    meta = {"format": CACHE_FORMAT, "layer": cfg.cache.layer, "dataset": data.identity,
            "augment": augment_identity(cfg.data, cfg.augment), "teacher": file_digest(Path(cfg.teacher.checkpoint)),
            "shape": list(outputs.shape), "seed": cfg.seed}
    if is_rank_zero():
        atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    mib = (path.stat().st_size + params_path.stat().st_size) / 2**20
    write_results(out, {"stage": "cache", **meta, "mib": round(mib, 1), "wall_time_s": _since(started),
                        "peak_memory": peak_memory_mib()})
    log.info("teacher %s of %d views of %d images in %s (%.0f MiB, %.0f s)", cfg.cache.layer, outputs.shape[1],
             len(data), path, mib, _since(started))
    return path


def run_eval(cfg: Config, out: Path, model: str, protocols: tuple[str, ...] = ("knn", "linear"),
             resume: bool = False) -> dict:
    """Evaluate a model file, raw pixels (`pixels`) or the student with random weights by `protocols`.

    `random`: BatchNorm statistics estimated on the training data, like a trained network's;
    `random-init`: BatchNorm at its initial mean 0 / variance 1. `resume`: continue an interrupted
    evaluation of the same model with the same settings from its protocols' checkpoints.
    """
    encoder = _eval_model(cfg, model)
    datasets = eval_datasets(cfg)  # a missing data set or bad settings fail here, before the run folder exists
    check_protocols(cfg, protocols, encoder is not None, datasets[0])
    transfer = transfer_datasets(cfg) if "transfer" in protocols else None
    identity = {"model": file_digest(Path(model)) if Path(model).is_file() else model,
                "protocols": list(protocols), "settings": eval_settings(cfg)}
    prepare_run_folder(out, cfg, resume, identity)
    return evaluate_into(cfg, encoder, model, protocols, out, datasets, transfer)


def check_protocols(cfg: Config, protocols: tuple[str, ...], network: bool, train: ImageDataset) -> None:
    """Refuse, before anything runs, protocols or settings that cannot run (`network`: False for raw pixels)."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise UserError(f"unknown protocol {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
    if "linear" in protocols or "transfer" in protocols:
        check_linear(cfg, network)
    if "semi" in protocols:
        check_semi(cfg, network, train)


def evaluate_into(cfg: Config, encoder: Encoder | None, label: str, protocols: tuple[str, ...], out: Path,
                  datasets: tuple[ImageDataset, ImageDataset] | None = None,
                  transfer: tuple[ImageDataset, ImageDataset] | None = None) -> dict:
    """Evaluate one model and write results.json and results.md (one row, named `label`) into `out`."""
    started = time.perf_counter()
    row = evaluate(cfg, encoder, protocols, out, datasets, transfer)
    results = {"rows": {label: row}, "protocols": list(protocols), "seed": cfg.seed, "wall_time_s": _since(started),
               "peak_memory": peak_memory_mib(), "settings": eval_settings(cfg)}
    write_results(out, results)
    if is_rank_zero():
        write_report(out, results, f"bingo eval: {label} on {cfg.data.name}")
    return results


def eval_settings(cfg: Config) -> dict:
    """What an evaluation's result depends on besides the model: the eval section and the data set."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("num_workers", "download")}
    return json.loads(json.dumps({"eval": to_dict(cfg.eval), "data": data}))  # as read back from results.json


def current_evaluation(path: Path, cfg: Config) -> dict | None:
    """An earlier evaluation's results.json, if it exists and was made with `cfg`'s evaluation settings."""
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if results.get("settings") != eval_settings(cfg):
        log.info("%s was made with other evaluation settings: evaluating again", path.parent)
        return None
    return results


def evaluate(cfg: Config, encoder: Encoder | None, protocols: tuple[str, ...], out: Path,
             datasets: tuple[ImageDataset, ImageDataset] | None = None,
             transfer: tuple[ImageDataset, ImageDataset] | None = None) -> dict:
    """One model's result row: accuracies (%) by each of BINGO's protocols (arXiv 2107.01691); raw pixels
    when `encoder` is None.

    `datasets`: the (labeled train, test) pair and `transfer` the transfer pair, built from cfg when
    not given; the protocols' logs and the semi-supervised subsets go into `out`.
    """
    L.seed_everything(cfg.seed, verbose=False)
    bank, test = datasets or eval_datasets(cfg)
    for images in (bank, test):
        images.record_unreadable(out)
    result = {"params": None if encoder is None else count_parameters(encoder.backbone)}
    fast_linear = cfg.eval.linear.variant in FEATURE_VARIANTS
    features = None
    if "knn" in protocols or ("linear" in protocols and fast_linear):
        features = frozen_features(cfg, encoder, bank), frozen_features(cfg, encoder, test)
        anchors = np.random.default_rng(0).permutation(len(bank))[:PURITY_SAMPLE]  # exact, on a sample at scale
        result["bag_purity"] = bag_purity(knn_bags(features[0], 5, anchors=anchors)[0], bank.labels, anchors)
    if "knn" in protocols:
        knn = knn_accuracy(features[0], bank.labels, features[1], test.labels, cfg.eval.knn_k,
                           cfg.eval.knn_temperature)
        result["knn"] = {str(k): v for k, v in knn.items()}
    if "linear" in protocols:
        result["linear"] = linear_eval(cfg, encoder, bank, test, out / "linear", features)
    if "semi" in protocols:
        result["semi"] = semi_supervised(cfg, encoder, bank, test, out)
    if "transfer" in protocols:
        train_t, test_t = transfer or transfer_datasets(cfg)
        transfer_features = (frozen_features(cfg, encoder, train_t), frozen_features(cfg, encoder, test_t)) \
            if fast_linear else None
        result["transfer"] = {cfg.eval.transfer.name: linear_eval(cfg, encoder, train_t, test_t, out / "transfer",
                                                                  transfer_features)}
    unreadable = {images.split: len(images.unreadable()) for images in (bank, test) if images.unreadable()}
    return result | ({"unreadable_images": unreadable} if unreadable else {})  # their features are zero


def frozen_features(cfg: Config, encoder: Encoder | None, dataset: ImageDataset) -> np.ndarray:
    """(N, D) L2-normalised backbone features of the evaluation crops (raw pixels when `encoder` is None)."""
    if encoder is None:
        return pixel_features(dataset, cfg.data)
    return extract_features(encoder, dataset, cfg.data, cfg.eval.batch_size, progress=cfg.trainer.progress_bar)


def transfer_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """The transfer data set (cfg.eval.transfer), its images brought to the model's size, channels and normalisation."""
    target = cfg.eval.transfer
    data = dataclasses.replace(cfg.data, name=target.name, root=target.root, train_subset=target.train_subset,
                               test_subset=target.test_subset, download=target.download)
    try:
        return build_dataset(data, "labeled"), build_dataset(data, "test")
    except UserError as err:
        raise UserError(f"transfer data set: {err} (for transfer the keys are eval.transfer.root and "
                        "eval.transfer.download)") from None


def _finish_training(module: Method, trainer: L.Trainer, model: ModelConfig, cfg: Config, path: Path,
                     data: ImageDataset, summary: dict, started: float) -> Path:
    """Save the trained encoder and results.json (rank 0), say so in one line; a finished run keeps its own."""
    previous = read_json(path.parent / "results.json")
    if previous.get("steps") == trainer.global_step and path.exists():
        log.info("%s had already finished; kept its results", path.parent)
        return path
    if is_rank_zero():
        save_encoder(module.student, model, cfg.data, path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch")}
    unreadable = len(data.unreadable())
    write_results(path.parent, {**summary, "images": len(data), "unreadable_images": unreadable,
                                "epochs": trainer.current_epoch, "steps": trainer.global_step,
                                "final_metrics": metrics, "wall_time_s": round(time.perf_counter() - started, 1),
                                "peak_memory": peak_memory_mib()})
    skipped = f"; {unreadable} unreadable images skipped (listed in {data.unreadable_log})" if unreadable else ""
    log.info("%s: %d epochs, %d steps in %.0f s; %s written%s", summary["stage"], trainer.current_epoch,
             trainer.global_step, time.perf_counter() - started, path, skipped)
    return path


def slug(name: str) -> str:
    """A folder name for a row label: 'student, MoCo-v2' -> 'student-moco-v2'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def _load_teacher(cfg: Config) -> Encoder:
    if not cfg.teacher.checkpoint:
        raise UserError("no teacher given: pass --teacher FILE (e.g. teacher.safetensors from 'bingo pretrain')")
    return load_encoder(cfg.teacher.checkpoint, cfg.teacher, cfg.data)


def eval_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """The (labeled train, test) pair every evaluation uses."""
    return build_dataset(cfg.data, "labeled"), build_dataset(cfg.data, "test")


def random_encoder(cfg: Config, model: ModelConfig, calibrated: bool) -> Encoder:
    """A freshly initialised encoder; `calibrated`: its BatchNorm statistics estimated on the training data."""
    L.seed_everything(cfg.seed, verbose=False)
    encoder = Encoder(model, cfg.data.channels)
    if calibrated:
        calibrate_batchnorm(encoder, build_dataset(cfg.data, "train"), cfg.data, cfg.augment)
    return encoder


def _eval_model(cfg: Config, model: str) -> Encoder | None:
    if model == "pixels":
        return None
    if model in ("random", "random-init"):
        return random_encoder(cfg, cfg.student, calibrated=model == "random")
    return load_encoder(model, cfg.student, cfg.data)


def read_json(path: Path) -> dict:
    """A JSON file's content, or {} when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}

