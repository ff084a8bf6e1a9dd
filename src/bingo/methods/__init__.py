"""Distillation methods, one LightningModule each on a shared base."""

from bingo.methods.bingo import Bingo
from bingo.methods.moco import MoCo

METHODS = {"bingo": Bingo, "moco": MoCo}

__all__ = ["METHODS", "Bingo", "MoCo"]
