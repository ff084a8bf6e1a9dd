"""Bags at scale: time, peak memory and recall of kNN bags on generated clustered features.

For each size, features are written by clustered_features.py (reused when present), then one
child process builds the K = 5 bags with the approximate index `bags.index=auto` uses above
200,000 images (its peak resident memory is the child's maxrss), and recall@K is measured
against exact search on sampled queries. Exact bags are built too where `--exact-max` allows,
as the reference cost.

    python benchmarks/bag_scale.py --sizes 10000 100000 1000000 1281167 --workdir /tmp/bench \
        --out docs/bag_scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from clustered_features import write_clustered_features  # noqa: E402


def build(path: Path, index: str, k: int, queries: int) -> dict:
    """In this process: bags of one features file, timed, and their recall on sampled queries."""
    from bingo.bags.knn import knn_bags, recall_at_k
    from bingo.bags.search import approximate_index

    features = np.load(path, mmap_mode="r")
    factory = approximate_index(*features.shape) if index == "approximate" else index
    started = time.perf_counter()
    neighbours, _ = knn_bags(features, k, factory)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    recall = recall_at_k(features, neighbours, queries) if factory != "exact" else 1.0
    return {"index": factory, "seconds": round(seconds, 1), "peak_gib": round(peak, 2), "recall": round(recall, 4),
            "recall_queries": queries, "recall_seconds": round(time.perf_counter() - started, 1)}


def run_child(path: Path, index: str, k: int, queries: int) -> dict:
    """`build` in a fresh process, so that its peak memory is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", str(path), "--index", index, "--k", str(k),
                          "--queries", str(queries)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    """Command line: run the sizes and write one JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 1_281_167])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=10_000, help="sampled queries for recall against exact")
    parser.add_argument("--exact-max", type=int, default=100_000, help="also build exact bags up to this size")
    parser.add_argument("--index", default="approximate",
                        help="approximate (what auto picks at scale), exact, or a faiss factory string")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bingo-bench"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(build(args.child, args.index, args.k, args.queries)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        path = args.workdir / f"clustered-{size}x{args.dim}-{args.dtype}.npy"
        if not path.exists():
            write_clustered_features(path, size, args.dim, args.dtype)
        row = {"images": size, "dim": args.dim, "dtype": args.dtype, "k": args.k,
               "approximate": run_child(path, args.index, args.k, args.queries)}
        if size <= args.exact_max:
            row["exact"] = run_child(path, "exact", args.k, 0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
