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
    common = {"student": student, "optim": d.optim, "teacher_bn": d.teacher_bn, "run_info": run_info}
    splits = {"shuffle_bn_splits": d.moco.shuffle_bn_splits}
    builders = {
        "moco": lambda: MoCo(**common, moco=d.moco),
        "seed": lambda: Seed(**common, **splits, teacher=teacher, seed=d.seed),
        "compress-1q": lambda: Compress(**common, **splits, teacher=teacher, compress=d.compress, banks=1),
        "compress-2q": lambda: Compress(**common, **splits, teacher=teacher, compress=d.compress, banks=2),
        "disco": lambda: DisCo(**common, teacher=teacher, moco=d.moco, disco=d.disco),
        "simreg": lambda: SimReg(**common, **splits, teacher=teacher, simreg=d.simreg),
        "bingo": lambda: Bingo(**common, **splits, teacher=teacher, bingo=d.bingo),
    }
    if d.method not in builders:
        raise UserError(f"unknown method '{d.method}'; choose one of: {', '.join(METHODS)}")
    return builders[d.method]()


__all__ = ["METHODS", "Bingo", "Compress", "DisCo", "MoCo", "Seed", "SimReg", "build_method", "needs_teacher"]
