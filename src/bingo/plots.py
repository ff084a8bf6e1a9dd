"""`bingo plot`: training curves of one or more runs, read from their CSVLogger `logs/metrics.csv`.

Writes `losses.png` (the total loss and each loss term), `monitor.png` (online kNN accuracy against epoch,
when some run logged it) and `training.png` (learning rate, alignments, throughput, any other metric),
one panel per metric and one line per run.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from bingo.errors import UserError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Series = dict[str, tuple[np.ndarray, np.ndarray]]
AXES = ("epoch", "step")
NOT_LOSSES = ("alignment", "images_per_s")  # metrics logged like loss terms (per step and per epoch)


def read_metrics(csv_path: Path) -> Series:
    """Each metric's points as (x, y), by name less `_step`/`_epoch`; x is the epoch for `monitor/*`, else the step."""
    return _parse(Path(csv_path))[0]


def _parse(csv_path: Path) -> tuple[Series, set[str]]:
    """The series of `read_metrics`, and the names logged as `_step`/`_epoch` pairs (loss terms, alignments)."""
    with open(csv_path, newline="") as file:
        reader = csv.DictReader(file)
        header, rows = reader.fieldnames or [], list(reader)
    found = {}
    for column in [c for c in header if c not in AXES]:
        axis = "epoch" if column.startswith("monitor/") else "step"
        cells = [(row.get(axis), row.get(column)) for row in rows]
        try:
            points = np.array([c for c in cells if all(isinstance(v, str) and v for v in c)], dtype=float)
        except ValueError:
            continue  # not a numeric column
        if len(points):
            found[column] = (points[:, 0], points[:, 1])
    series, paired = {}, set()
    for column, xy in found.items():
        match = re.fullmatch(r"(.+)_(step|epoch)", column)
        name, suffix = match.groups() if match else (column, None)
        if suffix == "epoch" and f"{name}_step" in found:
            continue
        series[name] = xy
        if suffix:
            paired.add(name)
    if not series:
        raise UserError(f"{csv_path} has no metrics: plot a run that has trained for at least one logging step")
    return series, paired


def _metrics_csv(run: Path) -> Path:
    """The metrics file of a run folder (or the file itself), which must exist."""
    path = run if run.suffix == ".csv" else run / "logs" / "metrics.csv"
    if not path.is_file():
        what = "does not exist" if path == run else "has no logs/metrics.csv"
        raise UserError(f"{run} {what}: plot a training run folder (pretrain or distill) made with the csv logger")
    return path


def plot_runs(runs: dict[str, Path], out: Path) -> list[Path]:
    """Chart the runs (label -> run folder or metrics.csv) into `out`: losses, monitor and training PNGs."""
    parsed = {label: _parse(_metrics_csv(Path(run))) for label, run in runs.items()}
    data = {label: series for label, (series, _) in parsed.items()}
    paired = set().union(*(names for _, names in parsed.values()))
    names = list(dict.fromkeys(name for series in data.values() for name in series))
    losses = [n for n in names if n == "train/loss"
              or (n in paired and n.startswith("train/") and not n.endswith(NOT_LOSSES))]
    losses.sort(key=lambda n: n != "train/loss")
    monitor = sorted(n for n in names if n.startswith("monitor/"))
    training = [n for n in names if n not in losses and n not in monitor]
    written = []
    for filename, panels, xlabel in (("losses.png", losses, "step"), ("monitor.png", monitor, "epoch"),
                                     ("training.png", training, "step")):
        if panels:
            written.append(Path(out) / filename)
            _plot_panels(data, panels, xlabel, written[-1])
    return written


def _plot_panels(data: dict[str, Series], names: list[str], xlabel: str, path: Path) -> None:
    """One panel per metric name, one line per run; markers on the sparse per-epoch series."""
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = pyplot().subplots(rows, columns, squeeze=False, figsize=(4.5 * columns, 3.2 * rows))
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(data)}  # one colour per run, in every panel
    for axis, name in zip(axes.flat, names, strict=False):
        for label, series in data.items():
            if name in series:
                axis.plot(*series[name], label=label, color=colours[label], linewidth=1,
                          marker="o" if xlabel == "epoch" else None, markersize=3)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(xlabel)
    legend_below(figure, axes.flat)
    save_figure(figure, path)


def legend_below(figure: Figure, axes: Iterable[Axes]) -> None:
    """One legend for the whole figure, below its panels (outside the data), each label once."""
    named = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            named.setdefault(label, handle)
    handles, labels = list(named.values()), list(named)
    if handles:
        figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
                      fontsize=8, frameon=False)


def pyplot() -> ModuleType:
    """matplotlib.pyplot, drawing off-screen (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Figure, path: Path) -> None:
    """Lay out `figure`, write it to `path` as a PNG (atomically) and close it."""
    from bingo.models.checkpoints import atomic_write  # imports torch: only once there is something to save

    try:
        figure.tight_layout()
        atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        pyplot().close(figure)
