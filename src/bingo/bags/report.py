"""Whether bags are any good: purity, anchor-member similarities, hubness, group sizes, and a montage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bingo.bags.files import Bags, GroupBags
from bingo.data.datasets import ImageDataset
from bingo.models.checkpoints import atomic_write

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def bag_report(bags: Bags, labels: np.ndarray, features: np.ndarray | None, sample: int = 10000,
               seed: int = 0) -> dict:
    """Purity, similarity distribution (when features are given), positive usage and, for groups, group sizes."""
    report: dict = {"images": len(bags), "purity": bags.purity(labels)}
    if features is not None:
        report["similarity"] = member_similarities(bags, features, sample, seed)
    usage = bags.usage()
    most = np.argsort(-usage, kind="stable")[:10]
    report["usage"] = {"max": round(float(usage.max()), 2), "never_used": round(float((usage == 0).mean()), 4),
                       "top_1_percent_share": round(float(np.sort(usage)[-max(1, len(usage) // 100):].sum()
                                                          / max(usage.sum(), 1e-12)), 4),
                       "most_used": [[int(i), round(float(usage[i]), 2)] for i in most]}
    if isinstance(bags, GroupBags):
        sizes = bags.sizes[bags.sizes > 0]
        report["groups"] = {"count": len(sizes), "singletons": int((sizes == 1).sum()),
                            "size_quantiles": _quantiles(sizes), "largest": int(sizes.max())}
    return report


def member_similarities(bags: Bags, features: np.ndarray, sample: int, seed: int) -> dict:
    """Quantiles and mean of cosine similarity between sampled anchors and (up to 8 of) their bag members."""
    rng = np.random.default_rng(seed)
    anchors = np.sort(rng.permutation(len(bags))[:sample])
    sims = []
    for anchor in anchors:
        members = bags.members(anchor)
        if len(members) > 8:
            members = rng.choice(members, 8, replace=False)
        anchor_row = np.asarray(features[anchor], dtype=np.float32)
        sims.append(np.asarray(features[np.sort(members)], dtype=np.float32) @ anchor_row)
    values = np.concatenate(sims)
    return {"mean": round(float(values.mean()), 4), "quantiles": _quantiles(values)}


def write_montage(path: Path, bags: Bags, dataset: ImageDataset, rows: int = 8, members: int = 8,
                  seed: int = 0) -> None:
    """A PNG grid: each row a random anchor (framed) followed by its bag members; red frame: other label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    anchors = rng.choice(len(bags), size=min(rows, len(bags)), replace=False)
    members = min(members, max(len(bags.members(anchor)) for anchor in anchors))
    figure, axes = plt.subplots(len(anchors), members + 1, figsize=(1.1 * (members + 1), 1.15 * len(anchors)),
                                squeeze=False)
    labels = dataset.labels
    for row, anchor in zip(axes, anchors, strict=True):
        bag = bags.members(anchor)
        shown = bag if len(bag) <= members else np.sort(rng.choice(bag, members, replace=False))
        for column, (axis, index) in enumerate(zip(row, [anchor, *shown], strict=False)):
            image = np.asarray(dataset.image(int(index)))
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
            colour = "black" if column == 0 else "red" if labels[index] != labels[anchor] else "green"
            if labels[index] < 0:
                colour = "black" if column == 0 else "grey"
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if column == 0 else 1.5)
            axis.set_xticks([])
            axis.set_yticks([])
        for axis in row[len(shown) + 1:]:
            axis.axis("off")
        row[0].set_ylabel(f"#{anchor}", fontsize=7)
    axes[0][0].set_title("anchor", fontsize=8)
    if members:
        axes[0][1].set_title("bag members", fontsize=8, loc="left")
    figure.suptitle(f"{bags.meta.get('strategy', '?')} bags (green: anchor's label, red: another)", fontsize=9)
    figure.tight_layout()
    atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{round(q * 100)}": round(float(v), 4) for q, v in zip(QUANTILES, np.quantile(values, QUANTILES),
                                                                      strict=True)}
