"""Every file a command reads, every kind of bad file: exit status 2 and one line naming the file and what to do.

The inputs: --teacher, --model, --bags, --features, --teacher-cache, --config, the subset file
(eval.semi.subsets) and the checkpoint --resume reads (RUN/checkpoints/last.ckpt). The kinds: missing,
empty, truncated (the first half of a real file), text, another program's pickle, another program's zip,
and the right format with the wrong shapes. Nothing is written: no run folder, no change to the bad
file, to the run being resumed or to the shared chain's results.

The cases run in-process through `bingo.cli.main` (a subprocess spends ~5 s importing); the warnings
a terminal would show count as lines. `test_the_command_prints_one_line` runs one case as a real
subprocess.

Not every kind applies everywhere: an empty YAML file is an empty config (valid), and a missing
last.ckpt makes --resume start the run. Covered elsewhere, so not here: a truncated teacher cache
(test_teacher_cache.py), a subset file that is another program's zip (test_cli.py, a bag file given
as one), a code-running pickle as --teacher (test_cli.py, test_checkpoints.py), and .pth files that
are no checkpoint given to the encoder loader (test_checkpoints.py).
"""

from __future__ import annotations

import io
import json
import pickle
import random
import shutil
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import safe_open, save_file

from bingo.cli import main
from bingo.data.datasets import build_dataset
from bingo.eval.semi import SUBSETS_FILE, label_subsets
from bingo.models.encoder import Encoder
from bingo.stages.cache import run_cache
from conftest import EMBED, TRAIN_SIZE, run_process, snapshot, tiny_config, tiny_encoder, tiny_model_config, tiny_sets

KINDS = ("missing", "empty", "truncated", "text", "pickle", "zip")


@dataclass
class Input:
    """A file a command reads: the real one, the command that reads it, and what its refusals tell to do."""

    good: Callable[[dict], Path]  # the real file, from the good files of `goods`
    command: Callable[[Path, Path, dict], tuple]  # (bad file, --out folder, good files) -> the command line
    fix: str  # what every refusal of this input tells the user to do
    beside: tuple[str, ...] = ()  # files that go with it (copied from beside the real one)


def _student(goods: dict) -> Path:
    return goods["chain"].bingo / "student.safetensors"


def _resume(bad: Path, out: Path, goods: dict) -> tuple:
    chain = goods["chain"]
    return ("distill", *tiny_sets(), "--method", "bingo", "--teacher", chain.teacher, "--bags", chain.bags,
            "--out", bad.parent.parent, "--resume")


INPUTS = {
    "teacher": Input(lambda g: g["chain"].teacher,
                     lambda bad, out, g: ("bags", *tiny_sets(), "--teacher", bad, "--out", out),
                     "pass a"),
    "model": Input(_student,
                   lambda bad, out, g: ("eval", "knn", *tiny_sets(), "--model", bad, "--out", out),
                   "pass a"),
    "bags": Input(lambda g: g["chain"].bags,
                  lambda bad, out, g: ("distill", *tiny_sets(), "--method", "bingo", "--teacher", g["chain"].teacher,
                                       "--bags", bad, "--out", out),
                  "with 'bingo bags'"),
    "features": Input(lambda g: g["chain"].bags.parent / "features.npy",  # written by 'bingo bags'
                      lambda bad, out, g: ("bags", *tiny_sets(), "--features", bad, "--out", out),
                      "with 'bingo embed'"),
    "cache": Input(lambda g: g["cache"],
                   lambda bad, out, g: ("distill", *tiny_sets(), "--method", "bingo", "--bags", g["chain"].bags,
                                        "--teacher-cache", bad, "--out", out),
                   "with 'bingo cache'", beside=("views.npy", "outputs.json")),
    "config": Input(lambda g: g["config"],
                    lambda bad, out, g: ("eval", "knn", *tiny_sets(), "--config", bad, "--model", _student(g),
                                         "--out", out),
                    "--config"),
    "subsets": Input(lambda g: g["subsets"],
                     lambda bad, out, g: ("eval", "semi", *tiny_sets(f"eval.semi.subsets={bad}"), "--model",
                                          _student(g), "--out", out),
                     "'bingo eval semi'"),
    "resume": Input(lambda g: g["chain"].bingo / "checkpoints" / "last.ckpt", _resume, "--resume"),
}


def another_programs_zip() -> bytes:
    """A zip archive with one member of random bytes (seeded)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.bin", random.Random(0).randbytes(256))
    return buffer.getvalue()


def write_kind(kind: str, good: Path, path: Path) -> Path:
    """Write a bad file of `kind` at `path` (nothing for 'missing'); returns the file the refusal must name."""
    data = {"empty": b"", "truncated": good.read_bytes()[: good.stat().st_size // 2], "text": b"hello\n",
            "pickle": pickle.dumps({"a": 1}), "zip": another_programs_zip()}
    if kind != "missing":
        path.write_bytes(data[kind])
    return path


# The right format with the wrong shapes (or content): (good, path) -> the file the refusal must name.

def wider_torchvision_resnet(good: Path, path: Path) -> Path:
    """A torchvision-layout ResNet-18 of width 16, for a run whose teacher has width 8."""
    state = Encoder(tiny_model_config(width=16), 3).backbone.state_dict()
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


def encoder_of_another_width_under_this_ones_metadata(good: Path, path: Path) -> Path:
    """The weights of a width-16 encoder in a bingo file whose metadata names the width-8 one."""
    with safe_open(str(good), "pt") as file:
        meta = file.metadata()
    state = Encoder(tiny_model_config(width=16), 3).state_dict()
    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata=meta)
    return path


def rewrite_bags(good: Path, path: Path, change: Callable[[dict], None]) -> Path:
    with np.load(good) as stored:
        arrays = dict(stored)
    change(arrays)
    with open(path, "wb") as file:
        np.savez(file, **arrays)
    return path


def bags_of_half_the_images(good: Path, path: Path) -> Path:
    """The bag file's meta names 128 images; its arrays hold bags of 64."""
    return rewrite_bags(good, path, lambda a: a.update(neighbours=a["neighbours"][:64],
                                                       similarities=a["similarities"][:64]))


def bags_beyond_the_data_set(good: Path, path: Path) -> Path:
    """One neighbour index past the last image."""
    return rewrite_bags(good, path, lambda a: a["neighbours"].__setitem__((5, 1), TRAIN_SIZE))


def features_of_half_the_images(good: Path, path: Path) -> Path:
    np.save(path, np.load(good)[: TRAIN_SIZE // 2])
    return path


def features_with_a_text_description(good: Path, path: Path) -> Path:
    shutil.copy(good, path)
    path.with_suffix(".json").write_text("hello\n")
    return path.with_suffix(".json")


def cache_of_another_dim(good: Path, path: Path) -> Path:
    """Keys of half the dimensions its outputs.json describes."""
    np.save(path, np.load(good)[:, :, : EMBED // 2])
    return path


def cache_with_a_text_description(good: Path, path: Path) -> Path:
    shutil.copy(good, path)
    path.with_suffix(".json").write_text("hello\n")
    return path


def config_with_a_wrong_type(good: Path, path: Path) -> Path:
    path.write_text("distill:\n  optim:\n    lr: fast\n")
    return path


def subsets_beyond_the_data_set(good: Path, path: Path) -> Path:
    stored = json.loads(good.read_text())
    stored["subsets"]["10%"][0] = TRAIN_SIZE
    path.write_text(json.dumps(stored))
    return path


def encoder_weights_as_checkpoint(good: Path, path: Path) -> Path:
    """A torch file, but an encoder's state dict rather than a Lightning checkpoint."""
    torch.save(tiny_encoder().state_dict(), path)
    return path


SHAPES = {  # case -> (input, maker, what the refusal says to do when it is not the input's usual fix)
    "teacher-wider": ("teacher", wider_torchvision_resnet, "set teacher.arch/width"),
    "model-mislabelled": ("model", encoder_of_another_width_under_this_ones_metadata, None),
    "bags-half-the-images": ("bags", bags_of_half_the_images, None),
    "bags-beyond-the-data-set": ("bags", bags_beyond_the_data_set, None),
    "features-half-the-images": ("features", features_of_half_the_images, "compute them on the same data set"),
    "features-text-description": ("features", features_with_a_text_description, "compute the features again"),
    "cache-another-dim": ("cache", cache_of_another_dim, None),
    "cache-text-description": ("cache", cache_with_a_text_description, None),
    "config-wrong-type": ("config", config_with_a_wrong_type, "'distill.optim.lr' expects float"),
    "subsets-beyond-the-data-set": ("subsets", subsets_beyond_the_data_set, None),
    "resume-encoder-weights": ("resume", encoder_weights_as_checkpoint, None),
}
LEFT_OUT = {("config", "empty"), ("resume", "missing"), ("cache", "truncated"), ("subsets", "zip")}  # see above
CASES = {**{f"{name}-{kind}": (name, kind, None, None) for name in INPUTS for kind in KINDS
            if (name, kind) not in LEFT_OUT},
         **{case: (name, "shapes", maker, fix) for case, (name, maker, fix) in SHAPES.items()}}
NAMES = {("teacher", "pickle"): "teacher.pth"}  # another program's pickle under a torch name: torch.load reads it


@pytest.fixture(scope="module")
def goods(chain, tmp_path_factory) -> dict:
    """The real files: the shared chain's, a teacher cache, a subset file and a config file."""
    folder = tmp_path_factory.mktemp("goods")
    cache = run_cache(tiny_config(f"teacher.checkpoint={chain.teacher}", "cache.views=3"), folder / "cache")
    cfg = tiny_config()
    label_subsets(cfg, build_dataset(cfg.data, "labeled"), folder)
    config = folder / "config.yaml"
    config.write_text("{distill: {optim: {lr: 0.06}}, eval: {knn_temperature: 0.1}}\n")  # half of it: no YAML
    return {"chain": chain, "cache": cache, "subsets": folder / SUBSETS_FILE, "config": config}


def make_case(case: str, goods: dict, tmp_path: Path) -> tuple[tuple, Path, str]:
    """The command line of a case, the bad file its refusal must name, and what it must tell to do."""
    name, kind, maker, fix = CASES[case]
    spec = INPUTS[name]
    good = spec.good(goods)
    if name == "resume":  # a copy of the chain's BINGO run, interrupted (no student yet), its checkpoint replaced
        bad = shutil.copytree(good.parent.parent, tmp_path / "run") / "checkpoints" / good.name
        bad.unlink()
        (bad.parent.parent / "student.safetensors").unlink()
    else:
        (tmp_path / "in").mkdir()
        bad = tmp_path / "in" / NAMES.get((name, kind), good.name)
        for other in spec.beside:
            shutil.copy(good.with_name(other), bad.with_name(other))
    named = maker(good, bad) if maker else write_kind(kind, good, bad)
    return spec.command(bad, tmp_path / "out", goods), named, fix or spec.fix


def run_main(args: tuple) -> tuple[int, list[str]]:
    """`bingo ARGS` in this process: the exit status and the warnings a terminal would have shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code = main([str(arg) for arg in args])
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # Python's defaults
    return code, [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, hidden)]


def contents(folder: Path) -> dict[str, bytes]:
    return {name: data for name, (_, data) in snapshot(folder).items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_refused_in_one_line(case, goods, tmp_path, capsys, bingo_logger_guard):
    args, named, fix = make_case(case, goods, tmp_path)
    chain_before = snapshot(goods["chain"].root)
    inputs = tmp_path / ("run" if case.startswith("resume") else "in")
    before = snapshot(inputs)
    code, shown = run_main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines() + shown
    assert code == 2 and len(lines) == 1, f"exit {code}\n{err}{shown}"
    assert lines[0].startswith("bingo: error: ") and "Traceback" not in err
    assert str(named) in lines[0] and fix in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    assert snapshot(goods["chain"].root) == chain_before
    assert snapshot(inputs) == before


def test_the_command_prints_one_line(goods, tmp_path):
    """The real command, in its own process, on a checkpoint that Lightning reads for --resume."""
    args, named, fix = make_case("resume-pickle", goods, tmp_path)
    before = contents(tmp_path / "run")
    proc = run_process(*args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(named) in lines[0] and fix in lines[0] and "Traceback" not in proc.stderr
    assert contents(tmp_path / "run") == before


def test_resuming_with_other_networks_is_refused_before_anything_is_written(goods, tmp_path, capsys,
                                                                           bingo_logger_guard):
    chain = goods["chain"]
    run = shutil.copytree(chain.bingo, tmp_path / "run")
    before = snapshot(run)
    code, shown = run_main(("distill", *tiny_sets("student.width=16", "trainer.loggers=[csv]"), "--method", "bingo",
                            "--teacher", chain.teacher, "--bags", chain.bags, "--out", run, "--resume"))
    lines = capsys.readouterr().err.strip().splitlines() + shown
    assert code == 2 and len(lines) == 1, lines
    assert f"{run} was made with other settings (student.width=8, now 16)" in lines[0]
    assert snapshot(run) == before
