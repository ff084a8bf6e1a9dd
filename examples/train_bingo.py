"""Train a BINGO student from Python, without the command line: bags from a teacher, then distillation.

    python examples/train_bingo.py TEACHER.safetensors OUT_DIR [KEY=VALUE ...]   (config overrides)
"""

import sys
from pathlib import Path

from bingo.bags.features import extract_features
from bingo.bags.strategies import make_bags
from bingo.config import load_config
from bingo.data.datasets import build_dataset
from bingo.methods import Bingo
from bingo.models.checkpoints import load_encoder, save_encoder
from bingo.models.encoder import Encoder
from bingo.stages.common import training_data
from bingo.training import fit

teacher_file, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
cfg = load_config("demo", None, overrides, stage="distill")  # Fashion-MNIST, the demo's networks
images = build_dataset(cfg.data, "train")
teacher = load_encoder(teacher_file, cfg.teacher, cfg.data)
features = extract_features(teacher, images, cfg.data, batch_size=256, progress=False)  # (N, D), L2-normalised
bags = make_bags(cfg.bags, features, images.labels, seed=cfg.seed)  # kNN bags: K nearest images in the teacher
student = Encoder(cfg.student, cfg.data.channels)
method = Bingo(student=student, teacher=teacher, optim=cfg.distill.optim, bingo=cfg.distill.bingo)
fit(method, training_data(cfg, images, method, bags), cfg, cfg.distill.optim, out, resume=False)
save_encoder(method.student, cfg.student, cfg.data, out / "student.safetensors")
