"""`bingo`: one command, a subcommand per stage. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path

import yaml

from bingo.config import PROTOCOLS, Config, load_config, preset_names
from bingo.errors import Preempted, UserError
from bingo.zoo import resolve_checkpoint

STAGES = ("pretrain", "embed", "cache", "bags", "distill", "eval", "compare", "repro", "demo")
# One rule for --set keys: a full dotted path, or a path inside the subcommand's own section
# (distill: optim.lr = distill.optim.lr). Each subcommand's help shows an example that works there.
SET_EXAMPLES = {"pretrain": "optim.lr=0.06", "embed": "dtype=float16", "cache": "views=4", "bags": "k=10",
                "distill": "optim.lr=0.06", "eval": "linear.epochs=50", "compare": "distill.optim.epochs=5",
                "repro": "distill.optim.epochs=5", "demo": "distill.optim.epochs=5"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="bingo", description="Self-supervised distillation of small image models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"pretrain": "pretrain a MoCo-v2 teacher",
             "embed": "write a network's L2-normalised backbone features of a data set to a .npy file",
             "cache": "run the teacher once over V augmented views of every training image and store its keys "
                      "(float16), for 'bingo distill --teacher-cache'",
             "bags": "build every image's bag (kNN, k-means, labels, random or student features), with a report",
             "distill": "train a student with a distillation method",
             "eval": "evaluate a model: kNN, linear, semi-supervised fine-tuning, transfer "
                     "(the protocols of BINGO, arXiv 2107.01691)",
             "compare": "train and evaluate several methods alike over seeds: one table, accuracy and training charts",
             "repro": "the paper's tables in miniature: one teacher, every bag file, every table over seeds, "
                      "with a verdict per claim (docs/results.md)",
             "demo": "the whole chain on Fashion-MNIST, with a results table"}
    for name in STAGES:
        sub = commands.add_parser(name, help=helps[name], description=helps[name])
        default = "repro" if name == "repro" else "demo"
        sub.add_argument("--preset", default=default,
                         help=f"named preset: {', '.join(preset_names())} (default {default})")
        sub.add_argument("--config", help="YAML file with config sections, applied over the preset")
        own = f"; keys inside the {name} section may drop its prefix" if f"{name}." in _section_prefixes() else ""
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help=f"override a config value by its dotted path{own}, e.g. --set {SET_EXAMPLES[name]} "
                              "(repeatable)")
        sub.add_argument("--out", required=True, type=Path, help="run folder (config, logs, checkpoints, results)")
        if name not in ("compare", "repro"):  # these take --seeds, one run per seed
            sub.add_argument("--seed", type=int, help="random seed (makes a CPU run repeatable)")
        sub.add_argument("--resume", action="store_true",
                         help="continue an interrupted run in --out from its last checkpoint (a stage without "
                              "checkpoints starts again); a finished one with the same settings is kept either way")
        if name in ("embed", "cache", "bags", "distill", "compare", "repro"):
            sub.add_argument("--teacher", help="teacher checkpoint: teacher.safetensors, MoCo v1/v2/v3, SwAV, SimCLR, "
                                               "DINO, BYOL, torchvision or timm weights (docs/models.md)")
            sub.add_argument("--layout", help="the teacher checkpoint's layout when detection is not wanted: "
                                              "bingo, moco, mocov3, swav, dino, byol, simclr, torchvision, timm")
        if name == "embed":
            sub.add_argument("--model", help="a student-architecture network instead of the teacher: encoder file, "
                                             "zoo:NAME, 'random' or 'random-init'")
        if name == "bags":
            sub.add_argument("--strategy",
                             help="knn (default) | kmeans | labels | random | student | self (no relation)")
            sub.add_argument("--features", help=".npy file of L2-normalised features (e.g. from 'bingo embed') "
                                                "instead of running the teacher")
            sub.add_argument("--model", help="the student's weights for --strategy student: encoder file or 'random'")
        if name == "distill":
            sub.add_argument("--method", help="bingo | moco | seed | compress-1q | compress-2q | disco | simreg")
        if name in ("distill", "compare"):
            sub.add_argument("--bags", help="bag file from 'bingo bags'")
            sub.add_argument("--teacher-cache", help="keys.npy from 'bingo cache': BINGO takes its teacher keys "
                                                     "from there and never runs the teacher")
        if name == "cache":
            sub.add_argument("--views", type=int, help="augmented views of each image (default 16)")
        if name in ("compare", "repro"):
            sub.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                             help="seeds of every run (default: compare.seeds; 0 1 2, the repro preset 0-4)")
        if name == "repro":
            sub.add_argument("--tables", nargs="+", metavar="TABLE",
                             help="run only these tables (the experiment in parts; default: the paper's, in order; "
                                  "investigations only when named)")
            sub.add_argument("--report", action="store_true",
                             help="only rewrite OUT/results.md and results.json from what OUT holds; train nothing")
            sub.add_argument("--from", dest="report_from", type=Path, metavar="RESULTS_JSON",
                             help="with --report: re-render the page (claims judged again, charts) from this "
                                  "results.json alone, e.g. docs/results.json, into --out")
        if name == "compare":
            sub.add_argument("--methods", nargs="+", metavar="METHOD",
                             help="methods to compare (variants: compare.runs in a --config file)")
        if name == "eval":
            sub.add_argument("protocols", nargs="+", choices=(*PROTOCOLS, "all"), metavar="PROTOCOL",
                             help=f"one or more of {', '.join(PROTOCOLS)}, or all")
            sub.add_argument("--model", required=True,
                             help="encoder file or zoo:NAME, 'pixels' (raw pixels), 'random' (student with random "
                                  "weights, "
                                  "BatchNorm statistics estimated on the data) or 'random-init' (BatchNorm at init)")
    plot = commands.add_parser("plot", help="draw loss curves, monitor accuracy, lr, alignment and throughput "
                                            "of training runs into PNG files")
    plot.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="pretrain or distill run folders")
    plot.add_argument("--out", required=True, type=Path, help="folder for losses.png, monitor.png, training.png")
    export = commands.add_parser("export", help="a student's backbone for torchvision, timm, detectron2 and ONNX, "
                                                "checked against bingo, with a deployment card")
    export.add_argument("--model", required=True, type=Path, help="bingo encoder file (student.safetensors)")
    export.add_argument("--out", required=True, type=Path, help="folder for the exported files and the card")
    export.add_argument("--formats", nargs="*", metavar="FORMAT",
                        help="torchvision timm detectron2 onnx (default: every format the model fits; none: the card)")
    export.add_argument("--evals", nargs="+", type=Path, default=[], metavar="DIR",
                        help="'bingo eval' folders of this model: their accuracies go into the card")
    export.add_argument("--teacher", type=Path, help="the teacher's encoder file, measured beside the student")
    export.add_argument("--teacher-evals", nargs="+", type=Path, default=[], metavar="DIR",
                        help="'bingo eval' folders of the teacher")
    export.add_argument("--latency-repeats", type=int, default=50, help="timed runs at batch 1 (median reported)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    zoo = commands.add_parser("zoo", help="the models that ship with bingo (teachers trained by its own commands): "
                                          "list them, or show one's card after checking its file")
    zoo.add_argument("action", choices=("list", "show"), help="list: one line per model; show: the card of NAME")
    zoo.add_argument("name", nargs="?", help="the model to show (e.g. fashion-mnist-teacher)")
    return parser


def run_zoo(action: str, name: str | None) -> None:
    """`bingo zoo list` / `bingo zoo show NAME`: what ships, how it was made, its file checked against its card."""
    from bingo.zoo import zoo_model, zoo_models

    if action == "list":
        for model in zoo_models():
            print(f"zoo:{model.summary()}")
        return
    if not name:
        raise UserError("'bingo zoo show' needs a model name; 'bingo zoo list' shows them")
    model = zoo_model(name)
    print(yaml.safe_dump(model.card, sort_keys=False).rstrip())
    print(f"file: {model.file} (sha256 checked); use it as --teacher zoo:{model.name}")


def _section_prefixes() -> set[str]:
    """'pretrain.', 'distill.', ...: the config sections a subcommand's keys may be relative to."""
    return {f"{field.name}." for field in dataclasses.fields(Config)}


def run_labels(folders: list[Path]) -> dict[str, Path]:
    """A distinct label per run folder: its name, or as much of its path as tells it apart."""
    for depth in range(1, max(len(f.parts) for f in folders) + 1):
        labels = ["/".join(f.parts[-depth:]) for f in folders]
        if len(set(labels)) == len(labels):
            return dict(zip(labels, folders, strict=True))
    raise UserError("the same run folder is named twice")


def resolve_config(args: argparse.Namespace) -> Config:
    """The run's config: preset, YAML file, --set overrides, then the dedicated flags."""
    overrides = list(args.overrides)
    flags = {"seed": "seed", "teacher": "teacher.checkpoint", "layout": "teacher.layout", "method": "distill.method",
             "bags": "distill.bags", "strategy": "bags.strategy", "features": "bags.features",
             "teacher_cache": "distill.teacher_cache", "views": "cache.views"}
    if args.command == "bags" and args.model is not None:
        overrides.append(f"student.checkpoint={args.model}")
    if getattr(args, "methods", None):
        overrides.append("compare.runs={" + ", ".join(f"{m}: {{}}" for m in args.methods) + "}")
    if getattr(args, "seeds", None):
        overrides.append(f"compare.seeds={args.seeds}")
    for flag, key in flags.items():
        if getattr(args, flag, None) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return load_config(args.preset, args.config, overrides, stage=args.command)


def asked_bags(args: argparse.Namespace) -> tuple[str, ...]:
    """The bags.* settings the command line (--set) or the --config file asks for."""
    asked = [item.split("=", 1)[0].removeprefix("bags.") for item in args.overrides if item.startswith("bags.")]
    if args.config:
        asked += list((yaml.safe_load(Path(args.config).read_text()) or {}).get("bags") or {})
    return tuple(asked)


def quiet_libraries() -> None:
    """bingo's own log lines on stderr; the libraries' chatter only when it is a warning."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[bingo] %(message)s"))
    logging.getLogger("bingo").addHandler(handler)
    logging.getLogger("bingo").setLevel(logging.INFO)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "faiss", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bingo` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "plot":
            from bingo.plots import plot_runs

            for path in plot_runs(run_labels(args.runs), args.out):
                print(path)
            return 0
        if args.command == "zoo":
            run_zoo(args.action, args.name)
            return 0
        if args.command == "export":
            from bingo.models.export import export

            export(args.model, args.out, args.formats, args.evals, args.teacher, args.teacher_evals,
                   args.latency_repeats, args.overwrite)
            print((args.out / "card.md").read_text())
            return 0
        cfg = resolve_config(args)
        import lightning  # noqa: F401  # heavy imports only once the command line is valid; Lightning sets up
        quiet_libraries()  # its loggers when imported, so they are quieted after
        if args.command == "pretrain":
            from bingo.stages.pretrain import run_pretrain

            run_pretrain(cfg, args.out, args.resume)
        elif args.command == "embed":
            from bingo.stages.embed import run_embed

            run_embed(cfg, args.out, resolve_checkpoint(args.model), args.resume)
        elif args.command == "bags":
            from bingo.stages.bags import run_bags

            run_bags(cfg, args.out, args.resume)
        elif args.command == "cache":
            from bingo.stages.cache import run_cache

            run_cache(cfg, args.out, args.resume)
        elif args.command == "distill":
            from bingo.stages.distill import run_distill

            run_distill(cfg, args.out, args.resume, asked_bags(args))
        elif args.command == "compare":
            from bingo.experiments.compare import run_compare

            run_compare(cfg, args.out, args.resume)
        elif args.command == "repro":
            from bingo.experiments.repro import run_repro

            command = " ".join(["bingo", *(sys.argv[1:] if argv is None else argv)])
            if args.report_from and not args.report:
                raise UserError("--from re-renders a report: pass --report as well")
            report = run_repro(cfg, args.out, args.tables, args.resume, command, args.report, args.report_from)
            print((args.out / "results.md").read_text() if report else "")
        elif args.command == "eval":
            from bingo.stages.evaluate import run_eval

            protocols = PROTOCOLS if "all" in args.protocols else tuple(dict.fromkeys(args.protocols))
            print(json.dumps(run_eval(cfg, args.out, resolve_checkpoint(args.model), protocols, args.resume), indent=2))
        else:
            from bingo.experiments.demo import run_demo

            command = " ".join(["bingo", *(sys.argv[1:] if argv is None else argv)])
            run_demo(cfg, args.out, args.resume, command)
    except UserError as err:
        print(f"bingo: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"bingo: {err}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as a process killed by it
    except KeyboardInterrupt:
        print("bingo: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
