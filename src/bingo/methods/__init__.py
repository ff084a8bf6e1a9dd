"""Distillation methods, one LightningModule each on a shared base, and the one place that builds them."""

from __future__ import annotations

from bingo.config import Config
from bingo.errors import UserError
from bingo.methods.base import Method
from bingo.methods.bingo import Bingo
from bingo.methods.moco import MoCo
from bingo.methods.peers import Compress, DisCo, Seed, SimReg
from bingo.models.encoder import Encoder

METHODS = ("moco", "seed", "compress-1q", "compress-2q", "disco", "simreg", "bingo")


def needs_teacher(cfg: Config) -> bool:
    """Whether cfg.distill.method runs a teacher (all but MoCo-v2, and BINGO with momentum or cached keys)."""
    d = cfg.distill
    return d.method != "moco" and not (d.method == "bingo" and (d.bingo.keys == "momentum" or d.teacher_cache))


def build_method(cfg: Config, student: Encoder, teacher: Encoder | None, run_info: dict) -> Method:
    """The LightningModule of cfg.distill.method, with that method's section of the config."""
    d = cfg.distill
    splits, bn = d.moco.shuffle_bn_splits, d.teacher_bn
    builders = {
        "moco": lambda: MoCo(student, d.optim, d.moco, run_info),
        "seed": lambda: Seed(student, teacher, d.optim, d.seed, bn, splits, run_info),
        "compress-1q": lambda: Compress(student, teacher, d.optim, d.compress, 1, bn, splits, run_info),
        "compress-2q": lambda: Compress(student, teacher, d.optim, d.compress, 2, bn, splits, run_info),
        "disco": lambda: DisCo(student, teacher, d.optim, d.moco, d.disco, bn, run_info),
        "simreg": lambda: SimReg(student, teacher, d.optim, d.simreg, bn, splits, run_info),
        "bingo": lambda: Bingo(student, teacher, d.optim, d.bingo, splits, run_info, bn),
    }
    if d.method not in builders:
        raise UserError(f"unknown method '{d.method}'; choose one of: {', '.join(METHODS)}")
    return builders[d.method]()


__all__ = ["METHODS", "Bingo", "Compress", "DisCo", "MoCo", "Seed", "SimReg", "build_method", "needs_teacher"]
