"""`bingo distill`: a student trained by one method (BINGO or a peer), from a teacher, its bags or its cache."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import lightning as L

from bingo.bags.files import check_bags, load_bags
from bingo.config import Config
from bingo.data.datasets import ImageDataset, build_dataset
from bingo.data.keys import TeacherOutputs, augment_identity, cache_files, load_teacher_outputs
from bingo.errors import UserError
from bingo.methods import METHODS, build_method, method_settings, needs_teacher, resolve_defaults
from bingo.methods.base import Method, require_same_dim
from bingo.models.encoder import Encoder
from bingo.stages.common import STUDENT_FILE, TRAINING, finish_training, load_teacher, since, training_data
from bingo.store import Artifact, defining_settings, open_run, start_run
from bingo.training import check_resumable, file_digest, fit

BAG_SHAPE = ("strategy", "k", "clusters")  # what a bag file records of how its bags were made


def run_distill(cfg: Config, out: Path, resume: bool = False, asked_bags: tuple[str, ...] = ()) -> Path:
    """Train the student with cfg.distill.method in `out` (reused when trained with the same settings); returns its
    encoder file.

    The bag file is the truth for its strategy, K and clusters (the run's config records them);
    `asked_bags` names the bags.* settings the user asked for, which must agree with the file.
    """
    started = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    name = cfg.distill.method
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    cfg = copy.deepcopy(cfg)
    resolve_defaults(cfg, name)  # the settings left to the method: its own values, in the run's config and hash
    data = build_dataset(cfg.data, "train")
    inputs: dict = {"dataset": data.identity}
    student = Encoder(cfg.student, cfg.data.channels)  # first: the same seed gives every method the same start
    teacher = load_teacher(cfg) if needs_teacher(cfg) else None
    if teacher is not None:
        inputs["teacher"] = file_digest(Path(cfg.teacher.checkpoint))
    module = build_method(cfg, student, teacher, {})
    cache = _teacher_cache(cfg, data, module) if cfg.distill.teacher_cache else None
    if cache is not None:
        inputs |= {"teacher": cache.meta["teacher"],
                   "teacher_cache": file_digest(cache_files(Path(cfg.distill.teacher_cache))[1])}
        module.drop_teacher()
    bags = None
    if module.views.needs_bags:
        if not cfg.distill.bags:
            raise UserError(f"{name} needs bags: pass --bags FILE (built by 'bingo bags')")
        bags = load_bags(Path(cfg.distill.bags))
        expected = {key: getattr(cfg.bags, key) for key in asked_bags if key in BAG_SHAPE}
        check_bags(Path(cfg.distill.bags), bags, data.identity, {**expected, "teacher": inputs.get("teacher")})
        for key in BAG_SHAPE:  # the run's config says what the bags are
            if key in bags.meta:
                setattr(cfg.bags, key, bags.meta[key])
        inputs["bags"] = file_digest(Path(cfg.distill.bags))
    artifact = distill_artifact(cfg, inputs, teacher is not None)
    module.run_info = {"run": artifact.digest}
    state = open_run(out, artifact, resume)
    if state == "finished":
        return out / artifact.product
    dataset = training_data(cfg, data, module, bags, cache)
    if state == "resume":
        check_resumable(out, module)
    start_run(out, artifact, cfg)
    fit_started = time.perf_counter()
    trainer = fit(module, dataset, cfg, cfg.distill.optim, out, resume=state == "resume")
    return finish_training(module, trainer, cfg.student, cfg, artifact, out, data,
                           {"stage": "distill", "method": name, "fit_time_s": since(fit_started)}, started)


def distill_artifact(cfg: Config, inputs: dict, runs_teacher: bool) -> Artifact:
    """The student a distillation makes: defined by the training settings, the student's network, the method's own
    sections and its inputs (data set, teacher file, bag file, teacher cache: their hashes)."""
    sections = (*TRAINING, "student", *method_settings(cfg.distill.method), *(("teacher",) if runs_teacher else ()))
    return Artifact("distill", STUDENT_FILE, defining_settings(cfg, sections, inputs))


def _teacher_cache(cfg: Config, data: ImageDataset, module: Method) -> TeacherOutputs:
    """The run's teacher cache, checked against its method, data set, augmentation, teacher and student."""
    d = cfg.distill
    if d.method == "moco" or (d.method == "bingo" and d.bingo.keys != "teacher") or d.teacher_bn != "eval":
        raise UserError("a teacher cache (--teacher-cache) serves the methods that distil a teacher whose BatchNorm "
                        "runs in eval mode (distill.teacher_bn=eval); moco and bingo with momentum keys have none")
    teacher = file_digest(Path(cfg.teacher.checkpoint)) if cfg.teacher.checkpoint else None
    augment = augment_identity(cfg.data, module.views.augment(cfg.augment))  # the views the student sees
    try:
        cache = load_teacher_outputs(Path(d.teacher_cache), data.identity, augment, teacher, module.cache_layer,
                                     module.cached_views)
    except UserError as err:
        if not module.views.weak or "another augmentation" not in str(err):
            raise
        section = d.method.split("-")[0]
        raise UserError(f"{err}; {d.method} sees weak views (crop and flip only): build the cache with --set "
                        f"augment.jitter_prob=0 --set augment.grayscale_prob=0 --set augment.blur_prob=0, or set "
                        f"distill.{section}.weak_view=false") from None
    if module.teacher is None:  # BINGO without a teacher file: the cache alone says what the keys are
        require_same_dim(cfg.student.embed_dim, cache.dim, "cached keys", "student.embed_dim")
    return cache
