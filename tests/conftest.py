"""Shared fixtures: tiny configs, tiny encoders, a CLI runner and one shared end-to-end chain.

Everything is sized to run on a 2-core CPU in seconds: 16 px generated images, ResNet-18 of
width 8, 128 training images, batches of 32, one epoch, queues of a few hundred keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bingo.config import Config, ModelConfig, load_config
from bingo.models.encoder import Encoder

# Tiny models are slower with two threads competing for two busy cores than with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TRAIN_SIZE, TEST_SIZE, BATCH, QUEUE, EMBED = 128, 64, 32, 256, 16

# Full dotted keys, so the same list works for every subcommand.
TINY = [
    "data.name=generated", "data.image_size=16", "data.eval_resize=16", "data.channels=3",
    "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]", "data.train_subset=0", "data.test_subset=0",
    f"data.generated_train_size={TRAIN_SIZE}", f"data.generated_test_size={TEST_SIZE}",
    "data.generated_classes=4", "data.num_workers=0", "data.download=false",
    "augment.blur_prob=0.0",
    "teacher.arch=resnet18", "teacher.width=8", "teacher.stem=cifar", "teacher.head_hidden=32",
    f"teacher.embed_dim={EMBED}",
    "student.arch=resnet18", "student.width=8", "student.stem=cifar", "student.head_hidden=32",
    f"student.embed_dim={EMBED}",
    "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false", "trainer.loggers=[]",
    "trainer.precision=32-true",
    "trainer.log_every_n_steps=1",
    "pretrain.optim.epochs=1", f"pretrain.optim.batch_size={BATCH}", "pretrain.moco.queue_size=64",
    "distill.optim.epochs=1", f"distill.optim.batch_size={BATCH}", f"distill.bingo.queue_size={QUEUE}",
    "distill.bingo.warmup_epochs=1", "distill.moco.queue_size=64",
    "bags.k=3", "embed.batch_size=64",
    "eval.knn_k=[3,10]", "eval.linear.epochs=2", "eval.linear.batch_size=64", "eval.batch_size=64",
    "eval.semi.epochs=1", "eval.semi.batch_size=32", "eval.semi.fractions=[0.1,0.5]", "monitor.every_n_epochs=0",
]


def tiny_sets(*extra: str) -> list[str]:
    """`--set` arguments for the tiny config plus `extra` overrides."""
    args = []
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return args


def tiny_config(*extra: str, stage: str | None = None) -> Config:
    """The tiny config as the CLI would resolve it (demo preset underneath)."""
    return load_config("demo", None, [*TINY, *extra], stage=stage)


def tiny_model_config(width: int = 8) -> ModelConfig:
    return ModelConfig(arch="resnet18", width=width, stem="cifar", head_hidden=32, embed_dim=EMBED)


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(tiny_model_config(), 3)


def run_process(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m bingo ARGS` in a subprocess; stdout and stderr captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bingo", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_cli(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`bingo ARGS` run in this process as a subprocess would see it: exit status, stdout, and on stderr the
    log lines, the warnings a terminal would show and the traceback of an uncaught exception.

    A subprocess spends ~5 s importing torch and Lightning; the few tests about the real process use
    `run_process`. `timeout` is kept for the same call signature.
    """
    from bingo.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    logger = logging.getLogger("bingo")
    handlers = list(logger.handlers)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse refusing the command line
            code = stop.code if isinstance(stop.code, int) else 1
        except Exception:  # what would reach the user as a traceback
            traceback.print_exc()
            code = 1
        finally:
            for handler in logger.handlers[:]:
                if handler not in handlers:
                    logger.removeHandler(handler)
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # Python's defaults
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught if not issubclass(w.category, hidden))
    return subprocess.CompletedProcess(["bingo", *argv], code, stdout.getvalue(), stderr.getvalue() + shown)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: relative path -> (mtime_ns, bytes)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@dataclass
class Chain:
    """Products of one tiny pretrain -> bags -> distill (bingo, moco) -> eval chain."""

    root: Path
    teacher: Path
    bags: Path
    bingo: Path
    moco: Path
    eval: Path


def run_main(*args: str | Path) -> None:
    """`bingo ARGS` in this process, which must succeed; the log handler it adds is removed again."""
    from bingo.cli import main

    logger = logging.getLogger("bingo")
    before = list(logger.handlers)
    try:
        assert main([str(arg) for arg in args]) == 0, f"bingo {' '.join(map(str, args))} failed"
    finally:
        for handler in logger.handlers[:]:
            if handler not in before:
                logger.removeHandler(handler)


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Run the whole chain once through the CLI (in this process); tests that need a teacher or bags share it."""
    root = tmp_path_factory.mktemp("chain")
    run_main("pretrain", *tiny_sets(), "--out", root / "teacher")
    teacher = root / "teacher" / "teacher.safetensors"
    run_main("bags", *tiny_sets(), "--teacher", teacher, "--out", root / "bags")
    bags = root / "bags" / "bags.npz"
    run_main("distill", *tiny_sets(), "--method", "bingo", "--teacher", teacher, "--bags", bags,
             "--out", root / "bingo")
    run_main("distill", *tiny_sets(), "--method", "moco", "--out", root / "moco")
    run_main("eval", "knn", "linear", *tiny_sets(), "--model", root / "bingo" / "student.safetensors",
             "--out", root / "eval")
    return Chain(root, teacher, bags, root / "bingo", root / "moco", root / "eval")


@pytest.fixture(autouse=True)
def bingo_logger_guard():
    """cli.main adds a stderr handler to the 'bingo' logger on every call; remove what a test added (every test: a
    handler left on a captured stream that pytest has closed breaks the logging of the tests after it)."""
    logger = logging.getLogger("bingo")
    before = list(logger.handlers)
    yield
    for handler in logger.handlers[:]:
        if handler not in before:
            logger.removeHandler(handler)
