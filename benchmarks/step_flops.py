"""Counted training FLOPs per sample of every method: equal time as arithmetic, beside equal wall time.

For each method, one training step (forward, loss, backward) of the preset's networks on a batch of
already-augmented views, counted by `torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, forward and backward; the optimizer step and augmentation are not counted). A sample is
what the method's data set yields per index: an image with its views (BINGO: an anchor with a member of
its bag). The last column is the number of epochs at which the method costs what BINGO's
`distill.optim.epochs` cost, counted (the demo's equal-time runs measure it in wall time instead).

    python benchmarks/step_flops.py                       # the demo's networks (28 px)
    python benchmarks/step_flops.py --preset imagenet-r18-r50 --batch 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bingo.config import load_config  # noqa: E402
from bingo.methods import METHODS  # noqa: E402
from bingo.methods.flops import step_flops_per_sample  # noqa: E402


def step_flops(method: str, preset: str, batch: int) -> float:
    """Counted FLOPs of one training step of `method` on `batch` samples, per sample."""
    return step_flops_per_sample(load_config(preset, None, [f"distill.method={method}"]), batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    flops = {method: step_flops(method, args.preset, args.batch) for method in args.methods}
    epochs = load_config(args.preset).distill.optim.epochs
    print(f"| method | GFLOP per sample (forward + backward) | relative to MoCo-v2 | epochs at BINGO's "
          f"{epochs}-epoch FLOPs |")
    print("|---|---|---|---|")
    for method, value in flops.items():
        relative = value / flops["moco"] if "moco" in flops else float("nan")
        equal = epochs * flops["bingo"] / value if "bingo" in flops else float("nan")
        print(f"| {method} | {value / 1e9:.3f} | {relative:.2f}x | {equal:.1f} |")


if __name__ == "__main__":
    main()
