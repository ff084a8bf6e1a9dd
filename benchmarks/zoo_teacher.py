"""Ship a pretrained teacher into bingo's zoo: float16 copy, card with measured accuracies, curve, docs page.

    # 1. train (hours on 2 cores; rerun with --resume after an interruption)
    .venv/bin/bingo pretrain --preset zoo-fashion-mnist --out runs/zoo/fashion-mnist-teacher --seed 0
    # 2. measure and ship
    .venv/bin/python benchmarks/zoo_teacher.py runs/zoo/fashion-mnist-teacher

Writes src/bingo/zoo/NAME.safetensors (float16) and NAME.yaml (the card), docs/zoo/NAME-curve.png and
docs/zoo.md. Every accuracy in the card is measured here by `bingo eval` on the shipped float16 file,
beside raw pixels and random weights of the same network, with the preset the teacher was trained with.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bingo.plots import pyplot, save_figure  # noqa: E402
from bingo.report import flat_metrics  # noqa: E402
from bingo.training import machine_info  # noqa: E402
from bingo.zoo import sha256, zoo_folder  # noqa: E402

BINGO = str(ROOT / ".venv" / "bin" / "bingo")
SHOWN = ("kNN@10 top-1", "kNN@200 top-1", "linear top-1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the finished `bingo pretrain` run folder")
    parser.add_argument("--name", default="fashion-mnist-teacher")
    parser.add_argument("--preset", default="zoo-fashion-mnist")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every `bingo eval` (e.g. a smaller data set to try the script)")
    args = parser.parse_args()
    results = json.loads((args.run / "results.json").read_text())
    shipped = zoo_folder() / f"{args.name}.safetensors"
    to_float16(args.run / "teacher.safetensors", shipped)
    evals = args.run / "zoo-eval"
    rows = {"model": evaluate(str(shipped), evals / "float16", args),
            "float32 original": evaluate(str(args.run / "teacher.safetensors"), evals / "float32", args),
            "raw pixels": evaluate("pixels", evals / "pixels", args),
            "random weights": evaluate("random", evals / "random", args, teacher_arch=True),
            "random weights, BN at init": evaluate("random-init", evals / "random-init", args,
                                                   teacher_arch=True)}
    curve = monitor_curve(args.run / "logs" / "metrics.csv")
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    arch = config["teacher"]
    card = {"name": args.name, "file": shipped.name, "bytes": shipped.stat().st_size, "sha256": sha256(shipped),
            "dtype": "float16 (trained in float32 with bf16 autocast; loads into float32)",
            "network": f"{arch['arch']} width {arch['width']}, {arch['stem']} stem, projection head "
                       f"{arch['head_hidden']}-{arch['embed_dim']}",
            "method": "MoCo-v2", "data": f"{config['data']['name']}, {results['images']} training images, "
                                         f"{config['data']['image_size']} px, labels unused",
            "command": f"bingo pretrain --preset {args.preset} --out {args.run} --seed {config['seed']}",
            "recipe": {"optim": config["pretrain"]["optim"], "moco": config["pretrain"]["moco"],
                       "augment": config["augment"]},
            "epochs": results["epochs"], "steps": results["steps"], "wall_time_s": results["wall_time_s"],
            "machine": describe(machine_info()),
            "evaluation": f"bingo eval knn linear --preset {args.preset} (bank: every training image; "
                          "test: all 10,000 test images)",
            "accuracy": {name: {k: round(v, 2) for k, v in flat_metrics(row).items() if k in SHOWN}
                         for name, row in rows.items()},
            "bag_purity": {name: round(row["bag_purity"], 4) for name, row in rows.items()},
            "curve": {"metric": "online kNN@20 (2,000 test images, bank of 10,000 training images)",
                      "epochs": [e for e, _ in curve], "accuracy": [round(a, 2) for _, a in curve]}}
    card_path = zoo_folder() / f"{args.name}.yaml"
    card_path.write_text(yaml.safe_dump(card, sort_keys=False))
    figure_path = ROOT / "docs" / "zoo" / f"{args.name}-curve.png"
    plot_curve(curve, rows, figure_path)
    (ROOT / "docs" / "zoo.md").write_text(page(card, figure_path))
    print(card_path.read_text())


def to_float16(source: Path, target: Path) -> None:
    """Copy an encoder file with its floating-point tensors in float16 and its metadata unchanged."""
    with safe_open(str(source), "pt") as f:
        meta = f.metadata()
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(source)).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target), metadata=meta)


def evaluate(model: str, out: Path, args: argparse.Namespace, teacher_arch: bool = False) -> dict:
    """`bingo eval knn linear` of `model`; its result row (reused when OUT already holds it)."""
    if not (out / "results.json").is_file():
        sets = ["--set", "trainer.progress_bar=false"] + [x for kv in args.overrides for x in ("--set", kv)]
        if teacher_arch:  # 'random' builds the student architecture: make it the teacher's (the preset's)
            sets += ["--set", "student.width=32"]
        subprocess.run([BINGO, "eval", "knn", "linear", "--preset", args.preset, "--model", model, "--out", str(out),
                        *sets], check=True, stdout=subprocess.DEVNULL)
    return next(iter(json.loads((out / "results.json").read_text())["rows"].values()))


def monitor_curve(metrics: Path) -> list[tuple[int, float]]:
    """(epoch, online kNN accuracy %) pairs logged by the pretraining's monitor."""
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in rows[0] if c.startswith("monitor/")), None)
    points = [(int(r["epoch"]) + 1, float(r[column])) for r in rows if column and r.get(column)]
    return sorted(set(points))


def plot_curve(curve: list[tuple[int, float]], rows: dict, path: Path) -> None:
    """Online kNN accuracy against epochs, with raw pixels and random weights as reference lines."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.plot([e for e, _ in curve], [a for _, a in curve], marker="o", markersize=3, color="tab:green",
              label="teacher, online kNN@20 (2,000 test images)")
    for name, colour, style in (("raw pixels", "black", "--"), ("random weights", "grey", ":")):
        axis.axhline(flat_metrics(rows[name])["kNN@10 top-1"], color=colour, linestyle=style,
                     label=f"{name}, kNN@10 (all test images)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("top-1 accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path)


def describe(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores, " + (machine["gpu"] or "no GPU")
            + f", torch {machine['torch']}, bingo commit {machine['commit']}")


def page(card: dict, figure: Path) -> str:
    """docs/zoo.md: what ships and how it was made."""
    names = list(card["accuracy"])
    table = ["| model | " + " | ".join(SHOWN) + " | bag purity K=5 |", "|---|" + "---|" * (len(SHOWN) + 1)]
    for name in names:
        scores = card["accuracy"][name]
        table.append(f"| {name} | " + " | ".join(f"{scores.get(k, float('nan')):.1f}" for k in SHOWN)
                     + f" | {card['bag_purity'][name]:.3f} |")
    return "\n".join([
        "# The model zoo", "",
        "Models that ship inside bingo (`src/bingo/zoo/`), each trained by bingo's own command and preset, with a",
        "card beside it. `bingo zoo list` shows them; `bingo zoo show NAME` prints a card after checking the file",
        "against the sha256 in it; `--teacher zoo:NAME` (any command that takes a teacher) uses one. `bingo demo`",
        "distils from the Fashion-MNIST teacher by default. This page is written by",
        "`benchmarks/zoo_teacher.py` from the card.", "",
        f"## {card['name']}", "",
        f"- Network: {card['network']}; {card['method']} on {card['data']}.",
        f"- Command: `{card['command']}` (resumable: add `--resume`); then "
        f"`.venv/bin/python benchmarks/zoo_teacher.py {card['command'].split('--out ')[1].split()[0]}`.",
        f"- Trained for {card['epochs']} epochs ({card['steps']} steps) in {card['wall_time_s'] / 3600:.2f} h "
        f"on {card['machine']}.",
        f"- File: `{card['file']}`, {card['bytes'] / 2**20:.1f} MiB, {card['dtype']}; sha256 `{card['sha256']}`.",
        f"- Evaluation: `{card['evaluation']}`.", "",
        *table, "",
        "\"model\" is the shipped float16 file; \"float32 original\" the training run's own file. Random weights:",
        "the same network freshly initialised, its BatchNorm statistics estimated on the training images (or",
        "left at their initial values).", "",
        f"![accuracy against epochs](zoo/{figure.name})", "",
        "A damaged zoo file (missing, truncated, altered) is refused in one line that says how to restore it",
        "(`git checkout -- src/bingo/zoo/...`) or to train a teacher instead (`--set demo.pretrain=true`).", ""])


if __name__ == "__main__":
    main()
