"""Image files that cannot be read never kill a run: they are skipped, reported once and counted."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from bingo.config import load_config
from bingo.data.datasets import build_dataset
from conftest import check_ok, read_json, run_cli, tiny_sets

GOOD, BATCH = 60, 16


def image_folder(root, bad: bool = True):
    """ROOT/train/CLASS/*.png (GOOD images) and ROOT/val/..., plus three broken .jpg files in the training classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", GOOD), ("val", 20)):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8) // (1 + i % 2)
            Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    if bad:
        jpeg = io.BytesIO()
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(jpeg, format="JPEG")
        (root / "train" / "class0" / "empty.jpg").write_bytes(b"")  # an interrupted download
        (root / "train" / "class0" / "page.jpg").write_text("<html>not found</html>")  # the wrong kind of file
        (root / "train" / "class1" / "cut.jpg").write_bytes(jpeg.getvalue()[:200])  # truncated
    return root


def folder_sets(root, *extra: str) -> list[str]:
    return tiny_sets("data.name=imagefolder", f"data.root={root}", "data.eval_resize=16",
                     f"pretrain.optim.batch_size={BATCH}", "data.num_workers=1", *extra)


def test_unreadable_images_are_skipped_reported_once_and_counted(tmp_path):
    root = image_folder(tmp_path / "images")
    out = tmp_path / "teacher"
    proc = run_cli("pretrain", *folder_sets(root, "pretrain.optim.epochs=2", "data.max_bad_images=0.1"),
                   "--out", out)
    check_ok(proc)
    for name in ("empty.jpg", "page.jpg", "cut.jpg"):
        assert proc.stderr.count(name) == 1, proc.stderr  # reported once, in 2 epochs
    assert "Traceback" not in proc.stderr
    assert "3 unreadable images skipped" in proc.stderr.strip().splitlines()[-1]
    results = read_json(out / "results.json")
    assert results["unreadable_images"] == 3 and results["images"] == GOOD + 3 and results["epochs"] == 2
    listed = (out / "unreadable-train.tsv").read_text()
    assert all(name in listed for name in ("empty.jpg", "page.jpg", "cut.jpg"))


def test_too_many_unreadable_images_stop_the_run_in_one_line(tmp_path):
    root = image_folder(tmp_path / "images")
    proc = run_cli("pretrain", *folder_sets(root, "data.max_bad_images=0.01"), "--out", tmp_path / "teacher")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"[123] of 63 images cannot be read", lines[-1]) and "data.max_bad_images" in lines[-1]


def test_features_of_unreadable_images_are_zero_listed_and_accepted_by_bags(tmp_path, chain):
    root = image_folder(tmp_path / "images")
    out = tmp_path / "embed"
    check_ok(run_cli("embed", *folder_sets(root), "--teacher", chain.teacher, "--out", out))
    meta = read_json(out / "features.json")
    features = np.load(out / "features.npy")
    data = build_dataset(load_config("demo", None, [*folder_sets(root)[1::2]]).data, "train")
    bad = sorted(i for i, file in enumerate(data.files) if file.endswith(".jpg"))
    assert meta["unreadable"] == bad and len(bad) == 3
    assert (features[bad] == 0).all() and (np.abs(features).sum(1) > 0).sum() == GOOD
    assert read_json(out / "results.json")["unreadable"] == bad
    # bags from these features: the zero rows are accepted, being listed as unreadable
    check_ok(run_cli("bags", *folder_sets(root), "--features", out / "features.npy", "--out", tmp_path / "bags"))
    assert read_json(tmp_path / "bags" / "results.json")["images"] == GOOD + 3


def test_a_decoded_folder_keeps_the_record_of_its_unreadable_images(tmp_path):
    root = image_folder(tmp_path / "images")
    sets = folder_sets(root, f"data.decode_cache={tmp_path / 'decoded'}")[1::2]
    decoded = build_dataset(load_config("demo", None, sets).data, "train")
    assert decoded.in_memory and len(decoded) == GOOD + 3
    assert sorted(name.split(" ")[0].split("/")[1] for name in decoded.unreadable().values()) == \
        ["cut.jpg", "empty.jpg", "page.jpg"]
    again = build_dataset(load_config("demo", None, sets).data, "train")  # the cache reused: its record too
    assert again.unreadable() == decoded.unreadable()
