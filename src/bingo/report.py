"""The demo's result table: Markdown for people, beside the JSON for programs."""

from __future__ import annotations

from pathlib import Path

from bingo.config import Config


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def results_table(results: dict) -> str:
    """Markdown table: one row per model, kNN / linear top-1 (%), bag purity, parameters."""
    ks = sorted({int(k) for row in results["rows"].values() for k in row.get("knn", {})})
    header = ["model", "params"] + [f"kNN@{k} top-1" for k in ks] + ["linear top-1", "bag purity K=5"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results["rows"].items():
        params = "-" if row.get("params") is None else f"{row['params'] / 1e6:.2f}M"
        knn = [_pct(row.get("knn", {}).get(str(k), {}).get("top1")) for k in ks]
        linear = _pct(row.get("linear", {}).get("top1"))
        purity = _pct(None if row.get("bag_purity") is None else 100 * row["bag_purity"])
        lines.append("| " + " | ".join([name, params, *knn, linear, purity]) + " |")
    return "\n".join(lines)


def write_report(out: Path, results: dict, cfg: Config) -> str:
    """Write results.md (table, stage times, memory) into `out` and return its text."""
    times = " | ".join(f"{name}: {seconds:.0f} s" for name, seconds in results["stage_wall_time_s"].items())
    memory = results["peak_memory"]
    text = "\n".join([
        f"# bingo demo: {cfg.data.name}, teacher {cfg.teacher.arch} (width {cfg.teacher.width}), "
        f"student {cfg.student.arch} (width {cfg.student.width}), seed {cfg.seed}",
        "", results_table(results), "",
        "Accuracies in % on the test split; bag purity: share of each training image's 5 nearest "
        "neighbours (in that model's features) that carry its label.",
        f"Wall time per stage: {times or 'all stages reused'}.",
        f"Peak memory: main process {memory['main_mib']:.0f} MiB, "
        f"largest worker {memory['largest_child_mib']:.0f} MiB.",
        ""])
    (out / "results.md").write_text(text)
    return text
