"""Recall against time for kNN bags held to a recall target, on easy, hard or real features.

For one features file (.npy, L2-normalised rows): builds the K = 5 bags the way `bingo bags` does at
scale (`bags.index=auto`'s approximate index, its effort tuned to `--recall` within `--budget` s),
prints every operating point measured (recall on the tuning queries, projected search time for all
rows), then checks the chosen bags' recall on fresh queries against exact search.

    python benchmarks/clustered_features.py --count 300000 --hard --out /tmp/hard-300k.npy
    python benchmarks/bag_recall.py /tmp/hard-300k.npy --json docs/bag_recall_hard_300k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bingo.bags.knn import recall_at_k  # noqa: E402
from bingo.bags.strategies import neighbour_strategy  # noqa: E402
from bingo.config import BagsConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--budget", type=float, default=1800.0, help="bags.time_budget (s)")
    parser.add_argument("--index", default="auto", help="bags.index (auto: approximate above 200,000 rows)")
    parser.add_argument("--check-queries", type=int, default=2000, help="fresh queries for the final recall")
    parser.add_argument("--fixed", action="store_true",
                        help="no target: the fixed effort bags.nprobe / bags.refine_factor, as before bags.recall")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    features = np.load(args.features, mmap_mode="r")
    cfg = BagsConfig(k=5, index=args.index, recall=args.recall, time_budget=args.budget,
                     **({"recall_queries": 0} if args.fixed else {}))
    started = time.perf_counter()
    bags = neighbour_strategy(features, cfg, seed=0)
    seconds = time.perf_counter() - started
    checked = recall_at_k(features, bags.neighbours, args.check_queries, seed=12345)
    record = bags.meta.get("recall") or {}
    result = {"features": str(args.features), "rows": len(features), "dim": features.shape[1],
              "index": bags.meta["index"], "target": None if args.fixed else args.recall, "budget_s": args.budget,
              "total_s": round(seconds, 1), "checked_recall": round(checked, 4),
              "check_queries": args.check_queries, **record}
    for point in record.get("points", []):
        projected = point["ms_per_query"] / 1e3 * len(features)
        print(f"{point['parameters']:32s} recall {point['recall']:.3f}  projected search {projected:7.1f} s")
    fixed = f"fixed nprobe={cfg.nprobe}, refine {cfg.refine_factor}"
    chosen = fixed if args.fixed else record.get("parameters", "exact")
    print(f"chosen: {chosen}, tuning recall {record.get('value', 'not measured')}, "
          f"fresh-query recall {checked:.4f}, total {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
