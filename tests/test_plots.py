"""`bingo.plots`: reading CSVLogger metrics files and charting runs, on small synthetic metrics.csv files."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from bingo import plots
from bingo.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS_PER_EPOCH, EPOCHS = 3, 4


def fake_run(root, terms=("anchor",), monitor=True, reverse_header=False):
    """A run folder with logs/metrics.csv laid out like Lightning's CSVLogger writes it (sorted header)."""
    rows, step = [], 0
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            row = {"epoch": epoch, "step": step, "train/loss_step": 10 - step, "train/alignment_step": 0.01 * step,
                   "train/lr": 0.1 / (step + 1)}
            row.update({f"train/{term}_step": step + 0.5 for term in terms})
            rows += [row, {"step": step, "train|device/samples_per_sec": 100 + step}]
            step += 1
        row = {"epoch": epoch, "step": step - 1, "train/loss_epoch": 100 + epoch, "train/alignment_epoch": 0.5,
               "train/intra_epoch": 20 + epoch}
        row.update({f"train/{term}_epoch": -1 for term in terms})
        rows.append(row)
        if monitor and epoch % 2 == 1:
            rows.append({"epoch": epoch, "step": step - 1, "monitor/knn_top1": 40 + epoch, "monitor/knn_top5": 80})
    path = root / "logs" / "metrics.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as file:
        header = sorted({key for row in rows for key in row}, reverse=reverse_header)
        writer = csv.DictWriter(file, header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.mark.parametrize("reverse_header", [False, True])
def test_read_metrics_series_and_axes(tmp_path, reverse_header):
    run = fake_run(tmp_path / "run", reverse_header=reverse_header)
    series = plots.read_metrics(run / "logs" / "metrics.csv")
    assert set(series) == {"train/loss", "train/alignment", "train/anchor", "train/intra", "train/lr",
                           "train|device/samples_per_sec", "monitor/knn_top1", "monitor/knn_top5"}
    steps = np.arange(EPOCHS * STEPS_PER_EPOCH)
    x, y = series["train/loss"]  # the _step series wins over its _epoch twin
    np.testing.assert_array_equal(x, steps)
    np.testing.assert_array_equal(y, 10 - steps)
    np.testing.assert_array_equal(series["train/anchor"][1], steps + 0.5)
    np.testing.assert_array_equal(series["train|device/samples_per_sec"][0], steps)
    x, y = series["train/intra"]  # only an _epoch series: at the step of each epoch's last row
    np.testing.assert_array_equal(x, STEPS_PER_EPOCH * np.arange(1, EPOCHS + 1) - 1)
    np.testing.assert_array_equal(y, 20 + np.arange(EPOCHS))
    x, y = series["monitor/knn_top1"]  # against epoch, only where it was logged
    np.testing.assert_array_equal(x, [1, 3])
    np.testing.assert_array_equal(y, [41, 43])


def test_plot_runs_writes_three_charts(tmp_path, monkeypatch):
    runs = {"bingo": fake_run(tmp_path / "a"), "moco": fake_run(tmp_path / "b", terms=("moco", "anchor"))}
    charts, colours = {}, {}
    save = plots.save_figure

    def record(figure, path):
        charts[path.name] = [(axis.get_title(), [line.get_label() for line in axis.get_lines()])
                             for axis in figure.axes if axis.get_visible()]
        colours[path.name] = {(line.get_label(), line.get_color()) for axis in figure.axes for line in axis.get_lines()}
        save(figure, path)

    monkeypatch.setattr(plots, "save_figure", record)
    out = tmp_path / "out" / "plots"
    paths = plots.plot_runs(runs, out)
    assert paths == [out / "losses.png", out / "monitor.png", out / "training.png"]
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
    assert charts["losses.png"] == [("train/loss", ["bingo", "moco"]), ("train/anchor", ["bingo", "moco"]),
                                    ("train/intra", ["bingo", "moco"]), ("train/moco", ["moco"])]
    # one colour per run in every panel, the panel that only one run has included
    assert len(colours["losses.png"]) == 2 and len({colour for _, colour in colours["losses.png"]}) == 2
    assert charts["monitor.png"] == [("monitor/knn_top1", ["bingo", "moco"]), ("monitor/knn_top5", ["bingo", "moco"])]
    assert {title for title, _ in charts["training.png"]} == {"train/alignment", "train/lr",
                                                               "train|device/samples_per_sec"}
    assert sorted(p.name for p in out.iterdir()) == ["losses.png", "monitor.png", "training.png"]


def test_plot_runs_without_monitor_metrics_skips_monitor_chart(tmp_path):
    csv_path = fake_run(tmp_path / "run", monitor=False) / "logs" / "metrics.csv"
    out = tmp_path / "out"
    assert plots.plot_runs({"run": csv_path}, out) == [out / "losses.png", out / "training.png"]
    assert not (out / "monitor.png").exists()


def test_run_without_metrics_csv_is_a_user_error(tmp_path):
    run = tmp_path / "not-a-run"
    run.mkdir()
    with pytest.raises(UserError, match=r"not-a-run has no logs/metrics\.csv: plot a training run folder"):
        plots.plot_runs({"x": run}, tmp_path / "out")
    with pytest.raises(UserError, match=r"gone\.csv does not exist"):
        plots.plot_runs({"x": tmp_path / "gone.csv"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["", "epoch,step,train/loss_step\n", "epoch,step,train/loss_step\n0,0,\n"])
def test_csv_without_metrics_is_a_user_error(tmp_path, text):
    csv_path = tmp_path / "run" / "logs" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text(text)
    with pytest.raises(UserError, match="metrics.csv has no metrics"):
        plots.plot_runs({"run": tmp_path / "run"}, tmp_path / "out")


def test_import_is_cheap():
    code = "import sys, bingo.plots; assert not {'matplotlib', 'torch'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
