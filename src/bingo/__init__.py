"""bingo: self-supervised distillation of small image models (BINGO and its peers)."""

__version__ = "0.1.0"
