"""`bingo eval`, and the evaluations the experiments reuse: one model by BINGO's protocols, in a run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from bingo.config import Config
from bingo.data.datasets import ImageDataset
from bingo.eval.engine import check_protocols, eval_datasets, evaluate_into, transfer_datasets
from bingo.models.encoder import Encoder
from bingo.stages.common import RESULTS_FILE, evaluated_model, model_encoder, model_identity
from bingo.store import Artifact, defining_settings, finish_run, open_run, start_run

log = logging.getLogger("bingo")


# evaluation settings that only some protocols read: an evaluation by other protocols does not depend on them
READ_BY = {"eval.knn_k": {"knn"}, "eval.knn_temperature": {"knn"}, "eval.linear": {"linear", "transfer"},
           "eval.semi": {"semi"}, "eval.transfer": {"transfer"}}


def evaluation_artifact(cfg: Config, model: str, network: str, protocols: tuple[str, ...]) -> Artifact:
    """An evaluation of `model` (its identity) by `protocols`: defined by the evaluation settings those protocols
    read, the data settings, the seed, and the model's network section (`network`: student | teacher; what a random
    network is built from)."""
    cfg = dataclasses.replace(cfg, **{network: evaluated_model(getattr(cfg, network))})
    settings = defining_settings(cfg, ("seed", "data", "eval", network), {"model": model, "protocols": list(protocols)})
    unread = [prefix for prefix, readers in READ_BY.items() if not readers & set(protocols)]
    return Artifact("eval", RESULTS_FILE, {key: value for key, value in settings.items()
                                           if not any(key == p or key.startswith(f"{p}.") for p in unread)})


def run_eval(cfg: Config, out: Path, model: str, protocols: tuple[str, ...] = ("knn", "linear"),
             resume: bool = False) -> dict:
    """Evaluate a model file, raw pixels (`pixels`) or the student with random weights by `protocols`.

    `random`: BatchNorm statistics estimated on the training data, like a trained network's;
    `random-init`: BatchNorm at its initial mean 0 / variance 1. `resume`: continue an interrupted
    evaluation of the same model with the same settings from its protocols' checkpoints.
    """
    encoder = model_encoder(cfg, model)
    datasets = eval_datasets(cfg)  # a missing data set or bad settings fail here, before the run folder exists
    check_protocols(cfg, protocols, encoder is not None, datasets[0])
    transfer = transfer_datasets(cfg) if "transfer" in protocols else None
    artifact = evaluation_artifact(cfg, model_identity(model), "student", protocols)
    if open_run(out, artifact, resume) == "finished":
        return json.loads((out / RESULTS_FILE).read_text())
    start_run(out, artifact, cfg)
    results = evaluate_into(cfg, encoder, model, protocols, out, datasets, transfer)
    finish_run(out, artifact)
    return results


def evaluate_once(cfg: Config, folder: Path, label: str, protocols: tuple[str, ...], model: str,
               network: Callable[[], Encoder | None], section: str = "student",
               datasets: tuple[ImageDataset, ImageDataset] | None = None,
               transfer: tuple[ImageDataset, ImageDataset] | None = None) -> dict:
    """One model's evaluation in `folder` (row `label`): reused when made with the same settings, else made
    (again); `model` identifies it, `network` builds it (None: raw pixels) only when it must be evaluated."""
    artifact = evaluation_artifact(cfg, model, section, protocols)
    if open_run(folder, artifact, resume=True, redo_changed=True) == "finished":
        return json.loads((folder / RESULTS_FILE).read_text())
    log.info("evaluating %s (%s)", label, ", ".join(protocols))
    encoder = network()
    start_run(folder, artifact, cfg)
    results = evaluate_into(cfg, encoder, label, protocols, folder, datasets, transfer)
    finish_run(folder, artifact)
    return results
