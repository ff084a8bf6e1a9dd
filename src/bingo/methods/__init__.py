"""Distillation methods, one LightningModule each on a shared base, and the one place that builds them."""

from __future__ import annotations

from bingo.config import Config, ModelConfig
from bingo.errors import UserError
from bingo.methods.base import Method
from bingo.methods.bingo import Bingo
from bingo.methods.moco import MoCo
from bingo.methods.peers import Compress, DisCo, Seed, SimReg
from bingo.models.backbones import feature_width
from bingo.models.encoder import Encoder

CLASSES: dict[str, type[Method]] = {"moco": MoCo, "seed": Seed, "compress-1q": Compress, "compress-2q": Compress,
                                    "disco": DisCo, "simreg": SimReg, "bingo": Bingo}
METHODS = tuple(CLASSES)
SPLITS = ("moco.shuffle_bn_group", "moco.split_queries")  # shuffle-BN, for every method that runs a key encoder or
# teacher with it
READS: dict[str, tuple[str, ...]] = {"moco": ("moco",), "seed": ("seed", *SPLITS),
                                     "compress-1q": ("compress", *SPLITS), "compress-2q": ("compress", *SPLITS),
                                     "disco": ("moco", "disco"), "simreg": ("simreg", *SPLITS),
                                     "bingo": ("bingo", *SPLITS)}  # distill.* sections


MOCO_KEYS = ("moco", "disco")  # the methods whose key encoder is MoCo-v2's, shuffle-BN included
OWN_HEAD_WIDTH = ("moco", "disco", "seed")  # their official heads: Linear(D, D), ReLU, Linear(D, 128) with D the
# backbone's feature width (facebookresearch/moco moco/builder.py, Yuting-Gao/DisCo-pytorch DisCo/moco/builder.py,
# jacobswan1/SEED: `dim_mlp = fc.weight.shape[1]`, 512 for a ResNet-18); BINGO's is config.BINGO_HEAD_WIDTH wide for
# every student, and the other methods train no student head


def head_hidden(model: ModelConfig, channels: int, method: str) -> int:
    """The hidden width of `model`'s projection head: as set, or `method`'s own where left null."""
    own = model.head_hidden is None and method in OWN_HEAD_WIDTH
    return feature_width(model, channels) if own else model.head_width()


def resolve_defaults(cfg: Config, method: str) -> None:
    """Set, in place, the student and shuffle-BN settings left null (the method's own) to `method`'s official
    values, so that a run's config and hash say what it ran."""
    cfg.student.head_hidden = head_hidden(cfg.student, cfg.data.channels, method)
    cfg.distill.moco = cfg.distill.moco.resolved(own=method in MOCO_KEYS)


def resolve_pretrain_defaults(cfg: Config) -> None:
    """Set, in place, the teacher's head width and pretrain.moco's shuffle-BN left null to MoCo-v2's own, as
    `bingo pretrain` trains the teacher."""
    cfg.teacher.head_hidden = head_hidden(cfg.teacher, cfg.data.channels, "moco")
    cfg.pretrain.moco = cfg.pretrain.moco.resolved(own=True)


def method_settings(method: str) -> tuple[str, ...]:
    """The distill.* settings that define a student trained by `method` (the other methods' sections do not)."""
    return ("distill.method", "distill.optim", "distill.teacher_bn", *(f"distill.{s}" for s in READS[method]))


def needs_teacher(cfg: Config) -> bool:
    """Whether cfg.distill.method runs a teacher (all but MoCo-v2, and BINGO with momentum or cached keys)."""
    d = cfg.distill
    return d.method != "moco" and not (d.method == "bingo" and (d.bingo.keys == "momentum" or d.teacher_cache))


def build_method(cfg: Config, student: Encoder, teacher: Encoder | None, run_info: dict) -> Method:
    """The LightningModule of cfg.distill.method, with that method's section of the config."""
    d = cfg.distill
    common = {"student": student, "optim": d.optim, "teacher_bn": d.teacher_bn, "run_info": run_info}
    moco = d.moco.resolved(own=d.method in MOCO_KEYS)
    splits = {"shuffle_bn_group": moco.shuffle_bn_group, "split_queries": moco.split_queries}
    builders = {
        "moco": lambda: MoCo(**common, moco=moco),
        "seed": lambda: Seed(**common, **splits, teacher=teacher, seed=d.seed),
        "compress-1q": lambda: Compress(**common, **splits, teacher=teacher, compress=d.compress, banks=1),
        "compress-2q": lambda: Compress(**common, **splits, teacher=teacher, compress=d.compress, banks=2),
        "disco": lambda: DisCo(**common, teacher=teacher, moco=moco, disco=d.disco),
        "simreg": lambda: SimReg(**common, **splits, teacher=teacher, simreg=d.simreg),
        "bingo": lambda: Bingo(**common, **splits, teacher=teacher, bingo=d.bingo),
    }
    if d.method not in builders:
        raise UserError(f"unknown method '{d.method}'; choose one of: {', '.join(METHODS)}")
    momentum_keys = d.method == "bingo" and d.bingo.keys == "momentum"  # no teacher keys: the teacher is not run
    if teacher is not None and teacher.head is None and CLASSES[d.method].uses_teacher_embeddings and not momentum_keys:
        able = [name for name, cls in CLASSES.items() if cls is not MoCo and not cls.uses_teacher_embeddings]
        raise UserError(f"the teacher has no projection head (its checkpoint holds a backbone only), so {d.method} "
                        f"cannot distil its embeddings; {', '.join(able[:-1])} and {able[-1]} can (they use the "
                        "teacher's backbone features), and so can bingo with distill.bingo.keys=momentum (no "
                        "teacher keys; its bags come from backbone features)")
    return builders[d.method]()


__all__ = ["METHODS", "Bingo", "Compress", "DisCo", "MoCo", "Seed", "SimReg", "build_method", "method_settings",
           "needs_teacher"]
