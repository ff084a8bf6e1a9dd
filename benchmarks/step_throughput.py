"""Training throughput: what a real `bingo distill` run logs, next to the bare compute of the same networks.

For each method, in one process and interleaved over repeats (medians reported):
- logged: `bingo distill` on the demo's data and networks for a few dozen steps; the median of the
  `train/images_per_s` values it logs (anchors/s for BINGO), the first logged window dropped;
- bare: the method's network passes alone on random tensors (student forward + backward passes,
  teacher and momentum-encoder forward passes, an SGD step), with and without channels-last.

Usage:
    python benchmarks/step_throughput.py                         # every method, demo networks (28 px)
    python benchmarks/step_throughput.py --methods bingo moco --repeats 5
    python benchmarks/step_throughput.py --large --steps 6       # ResNet-18 <- ResNet-50 at 224 px
    python benchmarks/step_throughput.py --set trainer.precision=bf16-mixed   # both runs under bf16 autocast
    python benchmarks/step_throughput.py --methods seed seed-cache bingo-cache   # on a teacher cache (V: --cache-views)
Writes the table to stdout and, with --json FILE, the raw numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bingo.cli import main as bingo
from bingo.config import load_config
from bingo.models.checkpoints import save_encoder
from bingo.models.encoder import Encoder

METHODS = ("moco", "bingo", "seed", "compress-1q", "compress-2q", "disco", "simreg")
# BINGO on a teacher-key cache ('bingo cache'): in full, and with its anchor query alone
# Methods on a teacher cache ('bingo cache'): name -> (method, cached layer, overrides); BINGO also with its
# anchor query alone
CACHED = {"bingo-cache": ("bingo", "embedding", []),
          "bingo-anchor-cache": ("bingo", "embedding", ["distill.bingo.cutmix=false", "distill.bingo.symmetric=false"]),
          "seed-cache": ("seed", "embedding", []), "disco-cache": ("disco", "embedding", []),
          "compress-2q-cache": ("compress-2q", "features", []), "simreg-cache": ("simreg", "features", [])}
# (student forward+backward passes, teacher forward passes, momentum-encoder forward passes) per batch
PASSES = {"moco": (1, 0, 1), "bingo": (3, 2, 0), "seed": (1, 1, 0), "compress-1q": (1, 1, 0),
          "compress-2q": (1, 1, 1), "disco": (2, 2, 1), "simreg": (1, 1, 0), "bingo-cache": (3, 0, 0),
          "bingo-anchor-cache": (1, 0, 0), "seed-cache": (1, 0, 0), "disco-cache": (2, 0, 1),
          "compress-2q-cache": (1, 0, 1), "simreg-cache": (1, 0, 0)}
LARGE = ["data.name=generated", "data.image_size=224", "data.eval_resize=256", "data.channels=3",
         "data.mean=[0.485,0.456,0.406]", "data.std=[0.229,0.224,0.225]", "data.generated_train_size=1024",
         "data.generated_test_size=64", "data.train_subset=0", "data.test_subset=0",
         "teacher.arch=resnet50", "teacher.width=64", "teacher.stem=imagenet", "teacher.embed_dim=128",
         "student.arch=resnet18", "student.width=64", "student.stem=imagenet", "student.embed_dim=128",
         "distill.optim.batch_size=32", "bags.k=5", "augment.blur_prob=0.5"]
COMMON = ["trainer.progress_bar=false", "trainer.loggers=[csv]", "monitor.every_n_epochs=0", "distill.optim.epochs=1",
          "trainer.precision=32-true"]  # fp32 unless --set trainer.precision=bf16-mixed


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def method_overrides(method: str, overrides: list[str]) -> list[str]:
    """`overrides` plus what a method needs: CompRess-1q's student embeds into the teacher's feature space."""
    if method in CACHED:
        return [*overrides, *CACHED[method][2]]
    if method != "compress-1q":
        return overrides
    cfg = load_config("demo", None, overrides, stage="distill")
    return [*overrides, f"student.embed_dim={Encoder(cfg.teacher, cfg.data.channels).feature_dim}"]


def logged_rate(method: str, folder: Path, overrides: list[str], teacher: Path, bags: Path, caches: dict[str, Path],
                steps: int, window: int) -> float:
    """Median images/s logged by a real `bingo distill` run of `steps` steps (first window dropped)."""
    out = folder / f"{method}-{time.monotonic_ns()}"
    overrides = method_overrides(method, overrides)
    extra = [f"trainer.limit_train_batches={steps}", f"trainer.log_every_n_steps={window}"]
    if method in CACHED:
        method, layer, _ = CACHED[method]
        extra = [*extra, f"distill.teacher_cache={caches[layer]}"]
    code = bingo(["distill", "--method", method, "--teacher", str(teacher), "--bags", str(bags), "--out", str(out),
                  *sets(overrides + extra)])
    if code:
        sys.exit(f"bingo distill --method {method} failed ({code})")
    with open(out / "logs" / "metrics.csv") as file:
        rates = [float(row["train/images_per_s_step"]) for row in csv.DictReader(file)
                 if row.get("train/images_per_s_step")]
    return statistics.median(rates[1:] or rates)


def bare_rate(method: str, overrides: list[str], steps: int, channels_last: bool) -> float:
    """Images/s of the method's network passes alone on random tensors, with an SGD step.

    Under bf16 autocast when the overrides ask for trainer.precision=bf16-mixed, as the real run is.
    """
    cfg = load_config("demo", None, method_overrides(method, overrides), stage="distill")
    student_passes, teacher_passes, momentum_passes = PASSES[method]
    student, teacher = Encoder(cfg.student, cfg.data.channels), Encoder(cfg.teacher, cfg.data.channels).eval()
    key = Encoder(cfg.student, cfg.data.channels) if momentum_passes else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for net in (student, teacher, key):
        if net is not None:
            net.to(memory_format=fmt)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batch, size = cfg.distill.optim.batch_size, cfg.data.image_size
    images = torch.randn(batch, cfg.data.channels, size, size).contiguous(memory_format=fmt)
    teacher_net = teacher.backbone if method in ("compress-1q", "compress-2q", "simreg") else teacher

    bf16 = cfg.trainer.precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(student(images).sum() for _ in range(student_passes))
            with torch.inference_mode():
                if teacher_passes:
                    teacher_net(torch.cat([images] * teacher_passes).contiguous(memory_format=fmt))
                for _ in range(momentum_passes):
                    key(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def official_bingo_rate(overrides: list[str], steps: int, channels_last: bool) -> float:
    """Anchors/s of the official BINGO step (haohang96/bingo, moco/builder.py and main_moco.py), re-created here.

    As the official code does it: CutMix of the anchor and positive queries; three separate student
    passes (anchor, positive, mixed); two separate teacher passes, each with shuffle-BN (a permutation,
    then its inverse; all_gather is the identity in one process); logits of each query against both
    keys and the queue (N x 2 x (1 + K)); the two-positive cross-entropies weighted by (λs, λo), the
    CutMix one by its area; their sum over 3; an SGD step. Random tensors, no data pipeline.
    """
    cfg = load_config("demo", None, overrides, stage="distill")
    student, teacher = Encoder(cfg.student, cfg.data.channels), Encoder(cfg.teacher, cfg.data.channels).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student.to(memory_format=fmt)
    teacher.to(memory_format=fmt)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batch, size, bingo_cfg = cfg.distill.optim.batch_size, cfg.data.image_size, cfg.distill.bingo
    queue = torch.nn.functional.normalize(torch.randn(student.embed_dim, bingo_cfg.queue_size), dim=0)  # (D, K)
    images = [torch.randn(batch, cfg.data.channels, size, size).contiguous(memory_format=fmt) for _ in range(4)]
    lam_self, lam_other = bingo_cfg.lam_self, bingo_cfg.lam_other

    def shuffled_keys(view: torch.Tensor) -> torch.Tensor:
        order = torch.randperm(len(view))
        return torch.nn.functional.normalize(teacher(view[order]), dim=1)[torch.argsort(order)]

    def logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:  # (N, D), (N, 2, D) -> (N, 2, 1 + K)
        positive = torch.einsum("nmc,nc->nm", keys, query).unsqueeze(-1)
        negative = (query @ queue).unsqueeze(1).repeat(1, 2, 1)
        return torch.cat([positive, negative], 2) / bingo_cfg.temperature

    def two_positive_ce(out: torch.Tensor, weights: tuple[float, float]) -> torch.Tensor:
        log_p = torch.log_softmax(out, dim=2)[..., 0]  # (N, 2): each positive against the shared negatives
        return -(weights[0] * log_p[:, 0] + weights[1] * log_p[:, 1]).mean()

    def step() -> None:
        query, key, positive_query, positive_key = images
        keep = float(torch.distributions.Beta(2.0, 2.0).sample())
        cut = int(size * (1 - keep) ** 0.5)
        y, x = int(torch.randint(size, ())), int(torch.randint(size, ()))
        y0, y1, x0, x1 = max(y - cut // 2, 0), min(y + cut // 2, size), max(x - cut // 2, 0), min(x + cut // 2, size)
        mixed = query.clone()
        mixed[..., y0:y1, x0:x1] = positive_query[..., y0:y1, x0:x1]
        area = 1 - (y1 - y0) * (x1 - x0) / size**2
        queries = [torch.nn.functional.normalize(student(v), dim=1) for v in (query, positive_query, mixed)]
        with torch.no_grad():
            keys = torch.stack([shuffled_keys(key), shuffled_keys(positive_key)], 1)  # (N, 2, D)
        loss = two_positive_ce(logits(queries[0], keys), (lam_self, lam_other)) \
            + two_positive_ce(logits(queries[1], keys), (lam_other, lam_self)) \
            + two_positive_ce(logits(queries[2], keys), (area, 1 - area))
        optimizer.zero_grad()
        (loss / 3).backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def prepare(folder: Path, overrides: list[str], cache_views: int, layers: set[str]) -> tuple[Path, Path, dict]:
    """A random-weight teacher file, its kNN bag file and its teacher caches of `layers` (layer -> outputs.npy)."""
    cfg = load_config("demo", None, overrides, stage="distill")
    torch.manual_seed(0)
    teacher = folder / "teacher.safetensors"
    save_encoder(Encoder(cfg.teacher, cfg.data.channels), cfg.teacher, cfg.data, teacher)
    if bingo(["bags", "--teacher", str(teacher), "--out", str(folder / "bags"), *sets(overrides)]):
        sys.exit("bingo bags failed")
    for layer in layers:
        if bingo(["cache", "--teacher", str(teacher), "--views", str(cache_views), "--out", str(folder / layer),
                  *sets([*overrides, f"cache.layer={layer}"])]):
            sys.exit("bingo cache failed")
    return teacher, folder / "bags" / "bags.npz", {layer: folder / layer / "outputs.npy" for layer in layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(PASSES),
                        help="methods; NAME-cache: that method on a teacher cache (bingo-anchor-cache: anchor alone)")
    parser.add_argument("--cache-views", type=int, default=4, help="views per image of the teacher-key cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each real run")
    parser.add_argument("--bare-steps", type=int, default=10, help="timed steps of each bare measurement")
    parser.add_argument("--window", type=int, default=10, help="steps per logged throughput value")
    parser.add_argument("--large", action="store_true", help="ResNet-18 student, ResNet-50 teacher, 224 px")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides for the real run (and the networks of the bare one)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    overrides = COMMON + (LARGE if args.large else []) + args.overrides
    results: dict[str, dict[str, list[float]]] = {m: {"logged": [], "bare": [], "bare_cl": []} for m in args.methods}
    official = []  # the official BINGO step, channels-last as the anchor
    with tempfile.TemporaryDirectory() as tmp:
        layers = {CACHED[method][1] for method in args.methods if method in CACHED}
        teacher, bags, caches = prepare(Path(tmp), overrides, args.cache_views, layers)
        for _ in range(args.repeats):
            for method in args.methods:
                row = results[method]
                row["logged"].append(logged_rate(method, Path(tmp), overrides, teacher, bags, caches, args.steps,
                                                 args.window))
                row["bare"].append(bare_rate(method, overrides, args.bare_steps, channels_last=False))
                row["bare_cl"].append(bare_rate(method, overrides, args.bare_steps, channels_last=True))
            if "bingo" in args.methods:
                official.append(official_bingo_rate(overrides, args.bare_steps, channels_last=True))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} repeats")
    print("| method | logged images/s | bare | bare, channels-last | logged / bare channels-last |")
    print("|---|---|---|---|---|")
    summary = {}
    for method, row in results.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        summary[method] = {**med, "ratio": med["logged"] / med["bare_cl"], "raw": row}
        print(f"| {method} | {med['logged']:.0f} | {med['bare']:.0f} | {med['bare_cl']:.0f} | "
              f"{med['logged'] / med['bare_cl']:.2f} |")
    if official:
        print(f"| official BINGO step (re-created, random tensors, channels-last) | | | "
              f"{statistics.median(official):.0f} | |")
        summary["official-bingo"] = {"bare_cl": statistics.median(official), "raw": official}
    if args.json:
        args.json.write_text(json.dumps({"overrides": overrides, "results": summary}, indent=2))


if __name__ == "__main__":
    main()
