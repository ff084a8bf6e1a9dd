"""The on-device data path and the teacher cache: what each method receives, what it runs, what is refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bingo.bags.files import load_bags
from bingo.cli import main
from bingo.config import AugmentConfig
from bingo.data.augment import PARAMS, BatchAugment
from bingo.data.datasets import build_dataset
from bingo.data.keys import TeacherOutputs
from bingo.data.views import ImageBatches
from bingo.methods import Bingo
from bingo.methods.base import Method
from bingo.models.checkpoints import load_encoder
from conftest import EMBED, TRAIN_SIZE, read_json, snapshot, tiny_config, tiny_sets

VIEWS = 3


def build_cache(chain, folder, *extra: str) -> Path:
    assert main(["cache", *tiny_sets(*extra), "--teacher", str(chain.teacher), "--views", str(VIEWS), "--out",
                 str(folder)]) == 0
    return folder / "outputs.npy"


@pytest.fixture(scope="module")
def cache(chain, tmp_path_factory) -> tuple:
    """`bingo cache` of the shared chain's teacher (embeddings), run in-process."""
    return build_cache(chain, tmp_path_factory.mktemp("cache") / "embedding"), chain


@pytest.fixture(scope="module")
def feature_cache(chain, tmp_path_factory) -> Path:
    """`bingo cache` of the shared chain's teacher's backbone features."""
    return build_cache(chain, tmp_path_factory.mktemp("cache") / "features", "cache.layer=features")


def open_cache(path: Path) -> TeacherOutputs:
    return TeacherOutputs(np.load(path, mmap_mode="r"), np.load(path.with_name("views.npy"), mmap_mode="r"), {})


def test_cache_holds_normalised_keys_of_every_view(cache):
    path, _ = cache
    keys = np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert keys.shape == (TRAIN_SIZE, VIEWS, EMBED) and keys.dtype == np.float16
    assert np.load(path.with_name("views.npy")).shape == (TRAIN_SIZE, VIEWS, PARAMS)
    assert np.allclose(np.linalg.norm(keys.astype(np.float32), axis=2), 1, atol=2e-3)
    assert not np.allclose(keys[:, 0], keys[:, 1], atol=1e-2)  # each view augmented anew
    assert meta["shape"] == list(keys.shape) and meta["augment"]["image_size"] == 16
    assert meta["layer"] == "embedding" and read_json(path.parent / "results.json")["stage"] == "cache"


@pytest.mark.parametrize("layer", ["embedding", "features"])
def test_a_replayed_view_is_the_view_the_teacher_saw(cache, feature_cache, layer):
    """The student's view, rebuilt from the stored parameters, gives the teacher the output it cached."""
    path, chain = cache
    path = path if layer == "embedding" else feature_cache
    cfg = tiny_config()
    teacher = load_encoder(chain.teacher, cfg.teacher, cfg.data).eval()
    data = build_dataset(cfg.data, "train")
    indices = np.array([3, 50, 100])
    outputs, params = open_cache(path).sample_views(indices, 2)  # (3, 2, D), (3, 2, P)
    assert not torch.equal(params[:, 0], params[:, 1])  # two distinct views
    augment = BatchAugment(cfg.data, cfg.augment)
    network = teacher if layer == "embedding" else teacher.backbone
    with torch.no_grad():
        for view in range(2):
            again = network(augment.apply(data.batch(indices), params[:, view]))
            assert torch.allclose(again, outputs[:, view], atol=2e-2, rtol=1e-2)
            other = network(augment.apply(data.batch(indices), params[:, 1 - view]))
            assert not torch.allclose(other, outputs[:, view], atol=2e-2, rtol=1e-2)


def test_batches_carry_one_cached_key_per_anchor_and_positive(cache):
    path, chain = cache
    cfg = tiny_config()
    data = build_dataset(cfg.data, "train")
    keys = open_cache(path)
    bags = load_bags(chain.bags)
    anchors, positives, labels, index, positive_index, ya, yp = ImageBatches(data, bags, keys).__getitems__([4, 9])
    assert anchors.dtype == torch.uint8 and anchors.shape == (2, 3, 16, 16)
    assert torch.equal(anchors[1], data.batch(np.array([9]))[0])
    assert all(int(p) in bags.members(int(a)) for a, p in zip(index, positive_index, strict=True))
    cached = torch.from_numpy(np.load(path)[[4, 9]].astype(np.float32))  # (2, V, D)
    for row, key in enumerate(ya):  # each key is one of its image's cached views
        assert torch.isclose(cached[row], key, atol=2e-3).all(1).any()


def step_inputs(module: Method, batch: tuple) -> tuple:
    """What the module's training_step receives after the device hook."""
    return module.on_after_batch_transfer(batch, 0)


def bingo_module(teacher, **bingo) -> Bingo:
    cfg = tiny_config(*(f"distill.bingo.{k}={v}" for k, v in bingo.items()))
    from bingo.models.encoder import Encoder

    module = Bingo(student=Encoder(cfg.student, 3), teacher=teacher, optim=cfg.distill.optim, bingo=cfg.distill.bingo)
    module.use_device_augment(BatchAugment(cfg.data, AugmentConfig()), channels_last=True)
    return module


@pytest.mark.parametrize("settings, queries", [({}, 2), ({"cutmix": False, "symmetric": False}, 1)])
def test_bingo_on_the_cache_augments_only_its_queries(settings, queries, monkeypatch):
    monkeypatch.setattr(Bingo, "log_terms", lambda self, terms, batch_size: None)  # self.log needs a Trainer
    module = bingo_module(None, **settings)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    keys = torch.nn.functional.normalize(torch.randn(4, EMBED), dim=1)
    batch = (images, images.flip(0), torch.zeros(4), torch.arange(4), torch.arange(4).flip(0), keys, keys)
    views, *rest = step_inputs(module, batch)
    assert len(views) == queries and views[0].shape == (4, 3, 16, 16)
    assert views[0].is_contiguous(memory_format=torch.channels_last)
    loss = module.training_step((views, *rest), 0)
    loss.backward()
    assert torch.equal(module.queue.keys[:4], keys)  # the cached anchor keys entered the queue


def test_bingo_without_cache_augments_four_views(chain):
    from bingo.models.checkpoints import load_encoder

    cfg = tiny_config()
    module = bingo_module(load_encoder(chain.teacher, cfg.teacher, cfg.data))
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    views, *_ = step_inputs(module, (images, images, torch.zeros(4), torch.arange(4), torch.arange(4)))
    assert len(views) == 4


def distill(tmp_path, chain, out: str, *extra: str) -> int:
    return main(["distill", *tiny_sets(*extra), "--method", "bingo", "--bags", str(chain.bags),
                 "--out", str(tmp_path / out)])


def test_distill_on_the_cache_never_runs_the_teacher(cache, tmp_path, monkeypatch, bingo_logger_guard):
    path, chain = cache
    monkeypatch.setattr(Method, "_run_teacher", lambda *a: pytest.fail("the teacher ran"))
    assert distill(tmp_path, chain, "cached", f"distill.teacher_cache={path}") == 0
    assert (tmp_path / "cached" / "student.safetensors").exists()
    settings = read_json(tmp_path / "cached" / "run.json")["settings"]
    assert settings["input.teacher"] == json.loads(path.with_suffix(".json").read_text())["teacher"]
    assert "input.teacher_cache" in settings


@pytest.mark.parametrize("method", ["seed", "disco", "compress-2q", "simreg"])
def test_peers_on_the_cache_never_run_the_teacher(cache, feature_cache, method, tmp_path, monkeypatch,
                                                   bingo_logger_guard):
    path, chain = cache
    path = feature_cache if method in ("compress-2q", "simreg") else path
    monkeypatch.setattr(Method, "_run_teacher", lambda *a: pytest.fail("the teacher ran"))
    strong = ("distill.compress.weak_view=false", "distill.simreg.weak_view=false")  # the cache's augmentation
    code = main(["distill", *tiny_sets(f"distill.teacher_cache={path}", "trainer.limit_train_batches=2", *strong),
                 "--method", method, "--teacher", str(chain.teacher), "--out", str(tmp_path / method)])
    assert code == 0 and (tmp_path / method / "student.safetensors").exists()


def test_a_cache_of_the_wrong_layer_or_too_few_views_is_refused(cache, feature_cache, tmp_path, capsys,
                                                                bingo_logger_guard):
    path, chain = cache
    for method, cache_path, message in (("simreg", path, "needs its features"),
                                        ("seed", feature_cache, "needs its embedding"),
                                        ("simreg", feature_cache, "simreg sees weak views (crop and flip only): "
                                                                  "build the cache with --set augment.jitter_prob=0")):
        code = main(["distill", *tiny_sets(f"distill.teacher_cache={cache_path}"), "--method", method,
                     "--teacher", str(chain.teacher), "--out", str(tmp_path / method)])
        assert code == 2 and message in capsys.readouterr().err and not (tmp_path / method).exists()


def test_same_seed_repeats_a_device_path_run(tmp_path, chain, bingo_logger_guard):
    sets = ("trainer.limit_train_batches=2", f"teacher.checkpoint={chain.teacher}")
    assert distill(tmp_path, chain, "a", *sets) == 0 and distill(tmp_path, chain, "b", *sets) == 0
    assert distill(tmp_path, chain, "c", *sets, "seed=1") == 0
    weights = [load_file(tmp_path / run / "student.safetensors") for run in ("a", "b", "c")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.parametrize("change, message", [
    ("augment.crop_min_scale=0.5", "another augmentation (differs in crop_min_scale)"),
    ("data.generated_classes=5", "another data set"),
    ("distill.method=moco", "moco and bingo with momentum keys have none"),
    ("distill.bingo.keys=momentum", "moco and bingo with momentum keys have none"),
    ("student.embed_dim=8", "student.embed_dim=16"),
    ("data.augment_on=workers", "needs data.augment_on=device"),
])
def test_a_cache_that_does_not_fit_is_refused(cache, tmp_path, capsys, change, message, bingo_logger_guard):
    path, chain = cache
    code = main(["distill", *tiny_sets(f"distill.teacher_cache={path}", change), "--bags", str(chain.bags),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_cache_of_another_teacher_is_refused(cache, tmp_path, capsys, bingo_logger_guard):
    path, chain = cache
    other = tmp_path / "other.safetensors"
    shutil.copy(chain.teacher, other)
    with open(other, "ab") as file:
        file.write(b" ")  # other bytes: another teacher's identity
    code = main(["distill", *tiny_sets(f"distill.teacher_cache={path}"), "--teacher", str(other), "--bags",
                 str(chain.bags), "--out", str(tmp_path / "run")])
    assert code == 2 and "another teacher" in capsys.readouterr().err


def test_a_truncated_cache_is_refused_and_left_alone(cache, tmp_path, capsys, bingo_logger_guard):
    path, chain = cache
    broken = tmp_path / "keys"
    broken.mkdir()
    (broken / "outputs.npy").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    shutil.copy(path.with_suffix(".json"), broken / "outputs.json")
    shutil.copy(path.with_name("views.npy"), broken / "views.npy")
    before = snapshot(broken)
    code = main(["distill", *tiny_sets(f"distill.teacher_cache={broken / 'outputs.npy'}"), "--bags", str(chain.bags),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be read" in err and len(err.splitlines()) == 1
    assert snapshot(broken) == before


def test_cache_refuses_bad_settings(chain, tmp_path, capsys, bingo_logger_guard):
    code = main(["cache", *tiny_sets(), "--teacher", str(chain.teacher), "--views", "0", "--out",
                 str(tmp_path / "k")])
    assert code == 2 and "cache.views" in capsys.readouterr().err and not (tmp_path / "k").exists()


def test_a_bf16_autocast_run_trains_and_saves_float32_weights(tmp_path, chain, bingo_logger_guard):
    assert distill(tmp_path, chain, "bf16", "trainer.precision=bf16-mixed", "trainer.limit_train_batches=2",
                   f"teacher.checkpoint={chain.teacher}") == 0
    weights = load_file(tmp_path / "bf16" / "student.safetensors")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_bingo_logs_alignment_only_on_logging_steps_and_trains(tmp_path, chain, bingo_logger_guard):
    """Loss terms that appear only on some steps (BINGO's alignment) are checked like the others."""
    assert distill(tmp_path, chain, "sparse", "trainer.log_every_n_steps=3", "trainer.loggers=[csv]",
                   f"teacher.checkpoint={chain.teacher}") == 0
    with open(tmp_path / "sparse" / "logs" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert any(row.get("train/alignment_step") for row in rows)
    assert any(row.get("train/images_per_s_step") for row in rows)
    assert any(row.get("train/images_per_s_epoch") for row in rows)
