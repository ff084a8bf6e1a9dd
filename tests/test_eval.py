"""The evaluation protocols: kNN against a numpy reference, the linear protocol, semi-supervised subsets, transfer,
and the view of training (online kNN monitor, `bingo plot`)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from bingo.bags import search
from bingo.data.datasets import build_dataset
from bingo.errors import UserError
from bingo.eval.knn import knn_accuracy
from bingo.eval.linear import Classifier, lbfgs_probe, linear_eval, paper_lr, train_and_test
from bingo.eval.semi import SUBSETS_FILE, balanced_subset, label_subsets, semi_supervised
from conftest import check_ok, read_json, run_cli, tiny_config, tiny_encoder, tiny_sets


def clustered(count: int, classes: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised features around one random centre per class, and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    labels = rng.integers(0, classes, count)
    x = centres[labels] + spread * rng.normal(size=(count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def reference_knn(bank, bank_labels, queries, query_labels, k, temperature):
    """Weighted kNN written out with float64 numpy loops: (top-1 %, top-5 %)."""
    classes = int(max(bank_labels.max(), query_labels.max())) + 1
    top1 = top5 = 0
    for query, truth in zip(queries.astype(np.float64), query_labels, strict=True):
        sims = bank.astype(np.float64) @ query
        votes = np.zeros(classes)
        for i in np.argsort(-sims)[:k]:
            votes[bank_labels[i]] += np.exp(sims[i] / temperature)
        ranked = list(np.argsort(-votes, kind="stable")[:5])
        top1 += ranked[0] == truth
        top5 += truth in ranked
    return 100 * top1 / len(queries), 100 * top5 / len(queries)


def test_knn_accuracy_equals_a_numpy_reference_with_chunked_bank_and_queries(tmp_path, monkeypatch):
    bank, bank_labels = clustered(600, 8, 16, 0.9, seed=1)
    queries, query_labels = clustered(150, 8, 16, 0.9, seed=2)
    np.save(tmp_path / "bank.npy", bank)
    monkeypatch.setattr(search, "BASE_CHUNK", 128)  # the bank is scanned in 5 chunks, read from disk
    mapped = np.load(tmp_path / "bank.npy", mmap_mode="r")
    got = knn_accuracy(mapped, bank_labels, queries, query_labels, [1, 10, 50], temperature=0.1, chunk=37)
    for k in (1, 10, 50):
        top1, top5 = reference_knn(bank, bank_labels, queries, query_labels, k, 0.1)
        assert got[k]["top1"] == pytest.approx(top1) and got[k]["top5"] == pytest.approx(top5)
    assert 30 < got[10]["top1"] < 100  # the structure is learnable but not trivial: the test can tell k apart
    assert len({got[k]["top1"] for k in (1, 10, 50)}) > 1


def test_knn_with_k_above_the_bank_size_uses_the_whole_bank():
    bank, bank_labels = clustered(20, 3, 8, 0.5, seed=1)
    queries, query_labels = clustered(30, 3, 8, 0.5, seed=2)
    got = knn_accuracy(bank, bank_labels, queries, query_labels, [20, 200], temperature=0.1)
    assert got[200] == got[20]


def test_linear_classifier_separates_linearly_separable_features(tmp_path):
    train_x, train_y = clustered(800, 5, 32, 0.3, seed=1)
    test_x, test_y = clustered(200, 5, 32, 0.3, seed=2)
    torch.manual_seed(0)
    result = train_and_test(Classifier(None, 32, 5, head_lr=0.5, batch_size=64),
                            TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y)),
                            TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y)),
                            tiny_config(), epochs=10, batch_size=64, out=tmp_path)
    assert result["top1"] >= 97 and result["top5"] == 100


def test_shuffled_labels_stay_near_chance(tmp_path):
    """The same probe cannot find a rule that is not there: the separable result above is earned."""
    train_x, train_y = clustered(800, 5, 32, 0.3, seed=1)
    test_x, test_y = clustered(200, 5, 32, 0.3, seed=2)
    shuffled = np.random.default_rng(0).permutation(train_y)
    result = train_and_test(Classifier(None, 32, 5, head_lr=0.5, batch_size=64),
                            TensorDataset(torch.from_numpy(train_x), torch.from_numpy(shuffled)),
                            TensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y)),
                            tiny_config(), epochs=10, batch_size=64, out=tmp_path)
    assert result["top1"] < 40


def test_lbfgs_probe_separates_what_is_separable_and_nothing_else():
    train_x, train_y = (torch.from_numpy(a) for a in clustered(800, 5, 32, 0.3, seed=1))
    test_x, test_y = (torch.from_numpy(a) for a in clustered(200, 5, 32, 0.3, seed=2))
    result = lbfgs_probe(train_x, train_y, test_x, test_y, 5, weight_decay=1e-4, iterations=100)
    assert result["top1"] >= 97 and result["top5"] == 100 and result["train_loss"] < 0.3
    shuffled = train_y[torch.from_numpy(np.random.default_rng(0).permutation(800))]
    assert lbfgs_probe(train_x, shuffled, test_x, test_y, 5, weight_decay=1e-4, iterations=100)["top1"] < 40


def test_lbfgs_probe_does_not_depend_on_the_feature_scale():
    """Converged, unregularised: features ten times larger give the same classifier (the SGD probe does not)."""
    train_x, train_y = (torch.from_numpy(a) for a in clustered(600, 4, 16, 1.5, seed=3))
    test_x, test_y = (torch.from_numpy(a) for a in clustered(300, 4, 16, 1.5, seed=4))
    small = lbfgs_probe(train_x, train_y, test_x, test_y, 4, weight_decay=0.0, iterations=500)
    large = lbfgs_probe(10 * train_x, train_y, 10 * test_x, test_y, 4, weight_decay=0.0, iterations=500)
    assert 40 < small["top1"] < 97 and small["top1"] == pytest.approx(large["top1"], abs=0.34)
    assert small["train_loss"] == pytest.approx(large["train_loss"], abs=1e-3)


def test_paper_linear_protocol_leaves_the_backbone_untouched(tmp_path):
    cfg = tiny_config("eval.linear.variant=paper", "eval.linear.epochs=2")
    encoder = tiny_encoder()
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    train, test = build_dataset(cfg.data, "labeled"), build_dataset(cfg.data, "test")
    result = linear_eval(cfg, encoder, train, test, tmp_path)
    assert result["variant"] == "paper" and 0 <= result["top1"] <= result["top5"] <= 100
    after = encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics alike


def test_paper_learning_rate_per_architecture():
    assert paper_lr("resnet18") == paper_lr("resnet50") == 30.0
    assert paper_lr("efficientnet_b0") == 3.0


def test_balanced_subsets_take_the_same_share_of_every_class_and_repeat_with_the_seed():
    labels = np.repeat([0, 1, 2, 3], [100, 50, 30, 7])
    np.random.default_rng(0).shuffle(labels)
    subset = balanced_subset(labels, 0.1, seed=3)
    assert list(np.bincount(labels[subset])) == [10, 5, 3, 1]  # round(10%), at least one image per class
    assert list(subset) == sorted(set(subset))
    assert np.array_equal(balanced_subset(labels, 0.1, seed=3), subset)
    assert not np.array_equal(balanced_subset(labels, 0.1, seed=4), subset)


def test_saved_subsets_are_reused_whatever_the_seed(tmp_path):
    cfg = tiny_config("eval.semi.fractions=[0.1,0.5]", "eval.semi.seed=1")
    train = build_dataset(cfg.data, "labeled")
    drawn = label_subsets(cfg, train, tmp_path / "first")
    assert list(drawn) == ["10%", "50%"]
    reused_cfg = tiny_config("eval.semi.fractions=[0.5]", "eval.semi.seed=7",
                             f"eval.semi.subsets={tmp_path / 'first' / SUBSETS_FILE}")
    reused = label_subsets(reused_cfg, train, tmp_path / "second")
    assert np.array_equal(reused["50%"], drawn["50%"])
    assert json.loads((tmp_path / "second" / SUBSETS_FILE).read_text())["subsets"]["50%"] == drawn["50%"].tolist()
    redrawn = label_subsets(tiny_config("eval.semi.fractions=[0.5]", "eval.semi.seed=7"), train, tmp_path / "third")
    assert not np.array_equal(redrawn["50%"], drawn["50%"])


@pytest.mark.parametrize("extra,message", [
    (["data.generated_train_size=160"], "was drawn from another data set"),
    (["eval.semi.fractions=[0.2]"], "has no subset for 20% of the labels"),
])
def test_saved_subsets_that_do_not_fit_are_refused(tmp_path, extra, message):
    cfg = tiny_config("eval.semi.fractions=[0.1]")
    label_subsets(cfg, build_dataset(cfg.data, "labeled"), tmp_path)
    other = tiny_config(*extra, f"eval.semi.subsets={tmp_path / SUBSETS_FILE}")
    with pytest.raises(UserError, match=message):
        label_subsets(other, build_dataset(other.data, "labeled"), tmp_path / "other")


def test_semi_supervised_fine_tunes_a_copy(tmp_path):
    cfg = tiny_config("eval.semi.fractions=[0.25]", "eval.semi.epochs=2")
    encoder = tiny_encoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    result = semi_supervised(cfg, encoder, build_dataset(cfg.data, "labeled"), build_dataset(cfg.data, "test"),
                             tmp_path)
    assert list(result) == ["25%"] and result["25%"]["images"] == 32
    assert 0 <= result["25%"]["top1"] <= result["25%"]["top5"] <= 100
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())


def write_image_folder(root, size: int, mode: str, per_class: int) -> None:
    """Two classes of `size` px images in `mode` (bright vs dark) under root/train and root/val."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for label, level in enumerate((200, 40)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")


def test_eval_semi_from_the_command_line_saves_and_reuses_its_subsets(chain, tmp_path):
    model = chain.bingo / "student.safetensors"
    check_ok(run_cli("eval", "semi", *tiny_sets("eval.semi.seed=2"), "--model", model, "--out", tmp_path / "a"))
    first = read_json(tmp_path / "a" / "results.json")["rows"][str(model)]["semi"]
    assert list(first) == ["10%", "50%"] and abs(first["50%"]["images"] - 64) <= 2  # half of each of 4 classes
    assert "semi 10% top-1" in (tmp_path / "a" / "results.md").read_text()
    check_ok(run_cli("eval", "semi", *tiny_sets("eval.semi.seed=9",
                                                f"eval.semi.subsets={tmp_path / 'a' / SUBSETS_FILE}"),
                     "--model", model, "--out", tmp_path / "b"))
    assert read_json(tmp_path / "b" / SUBSETS_FILE)["subsets"] == read_json(tmp_path / "a" / SUBSETS_FILE)["subsets"]


def test_eval_all_includes_transfer_to_another_size_and_channel_count(chain, tmp_path):
    """A 3-channel 16 px student evaluated on 24 px grayscale images: resized and converted, not refused."""
    write_image_folder(tmp_path / "faces", 24, "L", per_class=16)
    model = chain.bingo / "student.safetensors"
    sets = tiny_sets("eval.transfer.name=imagefolder", f"eval.transfer.root={tmp_path / 'faces'}",
                     "eval.linear.epochs=30")
    check_ok(run_cli("eval", "all", *sets, "--model", model, "--out", tmp_path / "eval"))
    results = read_json(tmp_path / "eval" / "results.json")
    row = results["rows"][str(model)]
    assert results["protocols"] == ["knn", "linear", "semi", "transfer"]
    assert set(row) >= {"knn", "linear", "semi", "transfer", "bag_purity", "params"}
    assert list(row["transfer"]) == ["imagefolder"]
    assert row["transfer"]["imagefolder"]["top1"] >= 90  # bright vs dark: any network tells them apart
    assert "transfer imagefolder top-1" in (tmp_path / "eval" / "results.md").read_text()


def metrics_rows(run) -> list[dict]:
    with open(run / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_monitor_logs_knn_accuracy_on_schedule_without_changing_training(tmp_path):
    common = ("trainer.limit_train_batches=2", "trainer.loggers=[csv]", "distill.optim.epochs=2")
    for name, every in (("plain", 0), ("every", 1), ("second", 2)):
        check_ok(run_cli("distill", *tiny_sets(*common, f"monitor.every_n_epochs={every}"), "--method", "moco",
                         "--out", tmp_path / name))
    for name, epochs in (("plain", []), ("every", ["0", "1"]), ("second", ["1"])):
        monitored = [row for row in metrics_rows(tmp_path / name) if row.get("monitor/knn_top1")]
        assert [row["epoch"] for row in monitored] == epochs
        assert all(0 <= float(row["monitor/knn_top1"]) <= float(row["monitor/knn_top5"]) <= 100 for row in monitored)
    weights = [load_file(tmp_path / name / "student.safetensors") for name in ("plain", "every")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_plot_draws_every_run(tmp_path):
    common = ("trainer.limit_train_batches=2", "trainer.loggers=[csv]", "monitor.every_n_epochs=1")
    for name in ("a", "b"):
        check_ok(run_cli("distill", *tiny_sets(*common), "--method", "moco", "--out", tmp_path / "runs" / name))
    proc = run_cli("plot", tmp_path / "runs" / "a", tmp_path / "runs" / "b", "--out", tmp_path / "plots")
    check_ok(proc)
    names = ["losses.png", "monitor.png", "training.png"]
    assert proc.stdout.split() == [str(tmp_path / "plots" / n) for n in names]
    assert all((tmp_path / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_plot_of_a_folder_without_logs_is_one_line(tmp_path):
    proc = run_cli("plot", tmp_path, "--out", tmp_path / "plots")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "has no logs/metrics.csv" in proc.stderr and not (tmp_path / "plots").exists()
