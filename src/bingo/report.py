"""Result tables: Markdown for people, beside the JSON for programs, in the same shape for every command."""

from __future__ import annotations

from pathlib import Path

NOTE = ("Accuracies in % on the test split (semi: after fine-tuning on that share of the labels; transfer: "
        "the linear protocol on that data set); bag purity: share of each training image's 5 nearest "
        "neighbours (in that model's features) that carry its label.")


def flat_metrics(row: dict) -> dict[str, float]:
    """A result row's accuracies as {"kNN@10 top-1": 71.2, "linear top-1": ..., "semi 1% top-1": ...} (%)."""
    named = {f"kNN@{k}": accuracy for k, accuracy in row.get("knn", {}).items()}
    named |= {"linear": row["linear"]} if "linear" in row else {}
    named |= {f"semi {share}": accuracy for share, accuracy in row.get("semi", {}).items()}
    named |= {f"transfer {name}": accuracy for name, accuracy in row.get("transfer", {}).items()}
    metrics = {}
    for name, accuracy in named.items():
        metrics |= {f"{name} top-1": accuracy["top1"], f"{name} top-5": accuracy["top5"]}
    return metrics


def results_table(results: dict) -> str:
    """Markdown table: one row per model; parameters, every top-1 accuracy (%) measured, bag purity."""
    rows = results["rows"]
    columns = list(dict.fromkeys(k for row in rows.values() for k in flat_metrics(row) if k.endswith("top-1")))
    purity = any(row.get("bag_purity") is not None for row in rows.values())
    header = ["model", "params", *columns] + (["bag purity K=5"] if purity else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        metrics = flat_metrics(row)
        cells = [name, "-" if row.get("params") is None else f"{row['params'] / 1e6:.2f}M"]
        cells += [_pct(metrics.get(k)) for k in columns]
        if purity:
            cells.append(_pct(None if row.get("bag_purity") is None else 100 * row["bag_purity"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict, title: str, notes: list[str] = ()) -> str:
    """Write results.md (title, table, notes, peak memory) into `out` and return its text."""
    memory = results["peak_memory"]
    text = "\n".join([f"# {title}", "", results_table(results), "", NOTE, *notes,
                      f"Peak memory: main process {memory['main_mib']:.0f} MiB, "
                      f"largest worker {memory['largest_child_mib']:.0f} MiB.", ""])
    (out / "results.md").write_text(text)
    return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
