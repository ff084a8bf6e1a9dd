"""Draw docs/architecture.png: bingo's layers, each box a package or module, arrows for 'calls'.

    .venv/bin/python benchmarks/architecture_diagram.py

The boxes are read from the source tree (a module listed here that does not exist stops the script),
so the picture cannot name a module the code no longer has.
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bingo.plots import pyplot, save_figure  # noqa: E402

# (layer title, [(box label, module path under src/bingo, what it holds)]), top to bottom
LAYERS = [
    ("command line", [("cli.py", "cli.py", "argparse, one line per error, exit codes")]),
    ("experiments", [("experiments/demo.py", "experiments/demo.py", "demo chain + page"),
                     ("experiments/compare.py", "experiments/compare.py", "methods x seeds"),
                     ("experiments/repro.py", "experiments/repro.py", "the paper's tables")]),
    ("stages", [("stages/", "stages/__init__.py", "pretrain, embed, cache, bags, distill, eval"),
                ("store.py", "store.py", "settings hash: reuse, resume, refuse"),
                ("zoo/", "zoo/__init__.py", "shipped teachers + cards")]),
    ("engine", [("training.py", "training.py", "Lightning fit, checkpoints, run folders"),
                ("eval/", "eval/__init__.py", "engine: kNN, linear, semi, transfer"),
                ("bags/", "bags/__init__.py", "features, faiss kNN, bag files")]),
    ("method layer", [("methods/", "methods/__init__.py", "losses, queue, momentum, BINGO + peers"),
                      ("models/", "models/__init__.py", "backbones, encoder, checkpoints, export"),
                      ("data/", "data/__init__.py", "data sets, batch augment, order, keys")]),
    ("settings", [("config.py", "config.py", "dataclasses, presets, --set")]),
]
CALLS = [("cli.py", "experiments/demo.py"), ("cli.py", "experiments/compare.py"), ("cli.py", "experiments/repro.py"),
         ("cli.py", "stages/"), ("experiments/demo.py", "stages/"), ("experiments/compare.py", "stages/"),
         ("experiments/repro.py", "stages/"), ("stages/", "store.py"), ("stages/", "training.py"), ("stages/", "eval/"),
         ("stages/", "bags/"), ("experiments/demo.py", "zoo/"), ("store.py", "training.py"),
         ("training.py", "methods/"), ("training.py", "data/"),
         ("bags/", "models/"), ("eval/", "models/"), ("methods/", "models/"), ("methods/", "config.py"),
         ("data/", "config.py"), ("models/", "config.py")]
WIDTH, HEIGHT, ROW = 3.2, 0.8, 1.35


def main() -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(12, 9))
    centres = {}
    for row, (title, boxes) in enumerate(LAYERS):
        y = -row * ROW
        axis.text(-6.3, y, title, ha="left", va="center", fontsize=10, style="italic", color="#555")
        for i, (label, module, what) in enumerate(boxes):
            if not (ROOT / "src" / "bingo" / module).is_file():
                sys.exit(f"src/bingo/{module} does not exist: update LAYERS")
            x = (i - (len(boxes) - 1) / 2) * (WIDTH + 0.5) + 1.0
            centres[label] = (x, y)
            axis.add_patch(FancyBboxPatch((x - WIDTH / 2, y - HEIGHT / 2), WIDTH, HEIGHT,
                                          boxstyle="round,pad=0.05", facecolor="#eef3fb", edgecolor="#3b6db3"))
            axis.text(x, y + 0.13, label, ha="center", va="center", fontsize=10, weight="bold")
            axis.text(x, y - 0.17, what, ha="center", va="center", fontsize=7.5)
    for start, end in CALLS:
        (x0, y0), (x1, y1) = centres[start], centres[end]
        if y0 == y1:  # neighbours in one layer: from the right edge to the left edge
            tail, head = (x0 + WIDTH / 2 + 0.05, y0), (x1 - WIDTH / 2 - 0.05, y1)
        else:
            tail, head = (x0, y0 - HEIGHT / 2 - 0.05), (x1, y1 + HEIGHT / 2 + 0.05)
        axis.add_patch(FancyArrowPatch(tail, head, arrowstyle="-|>", mutation_scale=10, color="#888",
                                       linewidth=0.8))
    axis.set_xlim(-6.5, 7.5)
    axis.set_ylim(-(len(LAYERS) - 1) * ROW - 0.8, 0.8)
    axis.axis("off")
    axis.set_title("bingo: layers (an arrow: calls)", fontsize=12)
    save_figure(figure, ROOT / "docs" / "architecture.png")


if __name__ == "__main__":
    main()
