"""`bingo embed` and `bingo bags` from the command line: every strategy, features files, and what distil refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from bingo.bags.features import extract_features
from bingo.bags.files import load_bags
from bingo.cli import main
from bingo.data.datasets import build_dataset
from bingo.models.checkpoints import load_encoder
from conftest import TRAIN_SIZE, check_ok, read_json, run_cli, snapshot, tiny_config, tiny_sets


def embed(chain, out, *extra: str):
    return run_cli("embed", *tiny_sets(*extra), "--teacher", chain.teacher, "--out", out)


@pytest.fixture(scope="module")
def features(chain, tmp_path_factory):
    """The teacher's features of the tiny training set, as float16, from `bingo embed`."""
    out = tmp_path_factory.mktemp("embed") / "run"
    check_ok(embed(chain, out, "embed.dtype=float16"))
    return out / "features.npy"


def test_embed_writes_the_teachers_normalised_features(chain, features):
    cfg = tiny_config()
    data = build_dataset(cfg.data, "train")
    stored = np.load(features)
    assert stored.shape == (TRAIN_SIZE, 64) and stored.dtype == np.float16  # ResNet-18 width 8: 8 * 8 channels
    teacher = load_encoder(chain.teacher, cfg.teacher, cfg.data)
    want = extract_features(teacher, data, cfg.data, 32, progress=False)
    np.testing.assert_allclose(stored.astype(np.float32), want, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(want, axis=1), 1, atol=1e-5)
    meta = read_json(features.with_suffix(".json"))
    assert meta["dataset"] == data.identity and meta["source"]["kind"] == "teacher" and meta["dtype"] == "float16"
    assert read_json(features.parent / "results.json")["stage"] == "embed"


@pytest.mark.parametrize("strategy,extra,check", [
    ("kmeans", ["bags.clusters=8"], lambda bags, labels: bags.meta["clusters"] == 8 and len(set(bags.groups)) <= 8),
    ("labels", [], lambda bags, labels: bags.purity(labels) == 1.0),
    ("random", [], lambda bags, labels: bags.neighbours.shape == (TRAIN_SIZE, 3)),
    ("knn", ["bags.index=IVF4,Flat", "bags.nprobe=4", "bags.recall_queries=50"],
     lambda bags, labels: {k: bags.meta["recall"][k] for k in ("at_k", "queries")} == {"at_k": 3, "queries": 50}
     and bags.meta["recall"]["value"] >= 0.95),
])
def test_bags_from_a_features_file(features, tmp_path, strategy, extra, check):
    out = tmp_path / strategy
    check_ok(run_cli("bags", *tiny_sets(*extra), "--strategy", strategy, "--features", features, "--out", out))
    bags = load_bags(out / "bags.npz")
    labels = build_dataset(tiny_config().data, "train").labels
    assert bags.meta["strategy"] == strategy and check(bags, labels)
    assert bags.meta["source"]["kind"] == "teacher"  # carried over from the features' description
    report = read_json(out / "results.json")["report"]
    assert report["purity"] == pytest.approx(bags.purity(labels)) and "similarity" in report
    assert (out / "montage.png").is_file() and not (out / "features.npy").exists()


def test_student_relation_bags_come_from_the_students_features(chain, tmp_path):
    student = chain.moco / "student.safetensors"
    out = tmp_path / "student"
    check_ok(run_cli("bags", *tiny_sets(), "--strategy", "student", "--model", student, "--out", out))
    bags = load_bags(out / "bags.npz")
    assert bags.meta["strategy"] == "student" and bags.meta["source"]["kind"] == "student"
    cfg = tiny_config()
    own = extract_features(load_encoder(student, cfg.student, cfg.data), build_dataset(cfg.data, "train"), cfg.data,
                           64, progress=False)
    sims = own @ own.T
    np.fill_diagonal(sims, -2)
    np.testing.assert_array_equal(np.sort(bags.neighbours, 1), np.sort(np.argsort(-sims, 1)[:, :3], 1))


def distill(chain, bags, out, *extra: str):
    return run_cli("distill", *tiny_sets("trainer.limit_train_batches=1", *extra), "--method", "bingo",
                   "--teacher", chain.teacher, "--bags", bags, "--out", out)


def test_distillation_refuses_bags_that_do_not_match_its_config(chain, features, tmp_path, capsys,
                                                                 bingo_logger_guard):
    kmeans = tmp_path / "kmeans"
    assert main(["bags", *tiny_sets("bags.clusters=8"), "--strategy", "kmeans", "--features", str(features),
                 "--out", str(kmeans)]) == 0
    for bags, extra, message in [
        (chain.bags, ["bags.k=4"], "has k 3, but this run asks for 4; drop bags.k from the command"),
        (kmeans / "bags.npz", ["bags.strategy=knn"], "has strategy kmeans, but this run asks for knn; drop"),
        (kmeans / "bags.npz", ["bags.clusters=9"], "has clusters 8, but this run asks for 9; drop bags.clusters"),
        (chain.bags, ["data.generated_train_size=100"], "was built for data set generated/train (128 images"),
    ]:
        out, _ = tmp_path / "refused", capsys.readouterr()
        code = main(["distill", *tiny_sets("trainer.limit_train_batches=1", *extra), "--method", "bingo",
                     "--teacher", str(chain.teacher), "--bags", str(bags), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1, err
        assert message in err and not out.exists()
    # asked for nothing (the tiny config's bags.k=3 does not apply to k-means bags): the file is the truth
    check_ok(distill(chain, kmeans / "bags.npz", tmp_path / "kmeans-student"))
    saved = yaml.safe_load((tmp_path / "kmeans-student" / "config.yaml").read_text())["bags"]
    assert saved["strategy"] == "kmeans" and saved["clusters"] == 8


def test_distillation_refuses_bags_of_another_teacher(chain, tmp_path):
    other = tmp_path / "other.safetensors"
    state = {k: v.clone() for k, v in __import__("safetensors.torch").torch.load_file(str(chain.teacher)).items()}
    from safetensors.torch import safe_open, save_file

    with safe_open(str(chain.teacher), "pt") as f:
        meta = f.metadata()
    state["head.0.bias"] = state["head.0.bias"] + torch.ones_like(state["head.0.bias"])
    save_file(state, str(other), metadata=meta)
    proc = run_cli("distill", *tiny_sets(), "--method", "bingo", "--teacher", other, "--bags", chain.bags,
                   "--out", tmp_path / "run")
    assert proc.returncode == 2 and "built from another teacher" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--strategy", "nope"], "unknown bag strategy 'nope'; choose one of: knn, kmeans, labels, random, student"),
    (["--strategy", "student"], "bags.strategy=student needs the student's weights: pass --model FILE (or 'random')"),
    (["--strategy", "knn"], "no teacher given: pass --teacher FILE (e.g. teacher.safetensors from 'bingo pretrain')"),
    (["--set", "k=500"], "bags.k=500 must be between 1 and 127 for 128 images"),
    (["--strategy", "kmeans", "--set", "clusters=128"], "bags.clusters=128 must be between 1 and 127 for 128 images"),
    (["--features", "missing.npy"], "features file missing.npy does not exist; compute it with 'bingo embed'"),
    (["--set", "index=IVF0,Nope", "--features", "FEATURES"], "faiss cannot build index 'IVF0,Nope': "),
])
def test_bad_bag_requests_fail_with_one_line(features, tmp_path, capsys, bingo_logger_guard, args, message):
    out = tmp_path / "run"
    args = [str(features) if a == "FEATURES" else a for a in args]
    assert main(["bags", *tiny_sets(), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"bingo: error: {message}"), err


def test_bags_are_kept_and_never_overwritten(chain, tmp_path):
    before = snapshot(chain.bags.parent)
    proc = run_cli("bags", *tiny_sets(), "--teacher", chain.teacher, "--out", chain.bags.parent)
    assert proc.returncode == 0 and "already made with these settings" in proc.stderr  # the same bags: kept
    proc = run_cli("bags", *tiny_sets("bags.k=4"), "--teacher", chain.teacher, "--out", chain.bags.parent)
    assert proc.returncode == 2 and "was made with other settings (bags.k=3, now 4)" in proc.stderr
    assert snapshot(chain.bags.parent) == before


def test_label_and_random_bags_need_no_network(tmp_path, capsys, bingo_logger_guard):
    for strategy in ("labels", "random"):
        out = tmp_path / strategy
        assert main(["bags", *tiny_sets(), "--strategy", strategy, "--out", str(out)]) == 0
        result = read_json(out / "results.json")
        assert result["source"] == {"kind": "none"} and "similarity" not in result["report"]
        assert (out / "montage.png").is_file() and not (out / "features.npy").exists()
    assert read_json(tmp_path / "labels" / "results.json")["report"]["purity"] == 1.0


def test_features_are_written_with_the_progress_bar_on(chain, tmp_path):
    cfg = tiny_config()
    teacher = load_encoder(chain.teacher, cfg.teacher, cfg.data)
    data = build_dataset(cfg.data, "train")
    written = extract_features(teacher, data, cfg.data, 32, cfg.trainer, tmp_path / "features.npy", progress=True)
    np.testing.assert_allclose(written, extract_features(teacher, data, cfg.data, 32, progress=False), atol=1e-5)


def test_a_config_file_that_asks_for_other_bags_is_refused(chain, tmp_path, capsys, bingo_logger_guard):
    config = tmp_path / "config.yaml"
    config.write_text("bags: {strategy: kmeans}\n")
    code = main(["distill", *tiny_sets(), "--config", str(config), "--method", "bingo", "--teacher",
                 str(chain.teacher), "--bags", str(chain.bags), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "has strategy knn, but this run asks for kmeans" in err, err
    assert not (tmp_path / "run").exists()
