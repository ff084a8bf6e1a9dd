"""The evaluation engine: one model's accuracies by BINGO's protocols (arXiv 2107.01691, Sec. 4), raw pixels
included, written into a folder as results.json and results.md."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import lightning as L
import numpy as np

from bingo.bags.features import extract_features, pixel_features
from bingo.bags.knn import bag_purity, knn_bags
from bingo.config import PROTOCOLS, Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.errors import UserError
from bingo.eval.knn import knn_accuracy
from bingo.eval.linear import FEATURE_VARIANTS, check_linear, linear_eval
from bingo.eval.semi import check_semi, semi_supervised
from bingo.models.backbones import count_parameters
from bingo.models.encoder import Encoder
from bingo.report import write_report
from bingo.training import is_rank_zero, peak_memory_mib, write_results

PURITY_SAMPLE = 20000  # anchors for the bag purity an evaluation reports


def eval_datasets(cfg: Config) -> tuple[ImageDataset, ImageDataset]:
    """The (labeled train, test) pair every evaluation uses."""
    return build_dataset(cfg.data, "labeled"), build_dataset(cfg.data, "test")


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
    results = {"rows": {label: row}, "protocols": list(protocols), "seed": cfg.seed,
               "wall_time_s": round(time.perf_counter() - started, 1), "peak_memory": peak_memory_mib()}
    write_results(out, results)
    if is_rank_zero():
        write_report(out, results, f"bingo eval: {label} on {cfg.data.name}")
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
