"""The demo's page: results.md for the repository and report.html to look at, from the demo's results.json.

Both show the same table, charts (accuracy against the references, training curves, the bag montage)
and one verdict sentence per claim. A verdict rests on the seed spread that `benchmarks/demo_seeds.py`
measured over 5 seeds of the same settings (demo_seeds.json beside this module), when it matches the
run's settings; otherwise the page reports the one run's differences and says it has no spread.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from bingo.config import Config, to_dict
from bingo.models.checkpoints import atomic_write
from bingo.plots import legend_below, plot_runs, pyplot, save_figure
from bingo.report import flat_metrics, results_table
from bingo.store import drop_added_later

FIGURES = "demo-figures"  # charts of the page, beside results.md (docs/ keeps the same layout)
SEEDS_FILE = Path(__file__).with_name("demo_seeds.json")
METRICS = ("kNN@10 top-1", "linear top-1")
REFERENCES = {"raw pixels": ("black", "--"), "student, random weights, BN at init": ("grey", ":"),
              "teacher (MoCo-v2)": ("tab:green", "-")}
SEEDLESS = ("teacher (MoCo-v2)", "raw pixels")  # rows that do not depend on the demo's seed
COLOURS = {"BINGO": "tab:blue", "teacher": "tab:green"}  # every other student: PEER_COLOUR
PEER_COLOUR = "tab:orange"


@dataclass(frozen=True)
class Claim:
    """A sentence the demo judges: `better` beats `worse` (or is at least as good, `at_least`)."""

    text: str
    better: str
    worse: str
    at_least: bool = False


CLAIMS = (Claim("BINGO's student beats MoCo-v2's at equal epochs", "student, BINGO", "student, MoCo-v2"),
          Claim("BINGO's student beats MoCo-v2's given BINGO's wall time", "student, BINGO",
                "student, MoCo-v2, BINGO's wall time"),
          Claim("BINGO's student is at least as good as DisCo's (the strongest peer in docs/results.md)",
                "student, BINGO", "student, DisCo", at_least=True),
          Claim("BINGO's student is above the random-weight student (the stronger of the two: BatchNorm at init)",
                "student, BINGO", "student, random weights, BN at init"),
          Claim("the teacher is ahead of raw pixels", "teacher (MoCo-v2)", "raw pixels"))


def settings_digest(cfg: Config, teacher_digest: str) -> str:
    """What a demo student depends on (data, networks, training, bags, evaluation, teacher file), as a short hash."""
    tree = to_dict(cfg)
    tree["distill"].pop("bags", None)
    kept = {k: tree[k] for k in ("data", "augment", "student", "distill", "bags", "eval")}
    kept["data"].pop("num_workers", None)
    kept["teacher"] = teacher_digest
    kept["demo"] = {"methods": cfg.demo.methods, "equal_time": cfg.demo.equal_time}
    drop_added_later(kept)  # a setting added later, at what bingo did before it, leaves the digest as it was
    return hashlib.sha256(yaml.safe_dump(kept, sort_keys=True).encode()).hexdigest()[:16]


def seed_spread(digest: str, path: Path = SEEDS_FILE) -> dict | None:
    """The 5-seed measurement of the demo's students with these settings, or None when there is none."""
    if not path.is_file():
        return None
    measured = json.loads(path.read_text())
    return measured if measured.get("settings") == digest else None


def judge(claim: Claim, rows: dict[str, dict], seeds: dict | None, test_images: int | None = None) -> str | None:
    """One sentence: the claim, its differences here and over the seeds, and the verdict; None when not measured.

    The teacher and raw pixels do not depend on the seed: their differences are judged against the
    standard error of a difference of two accuracies on `test_images` images.
    """
    if claim.better not in rows or claim.worse not in rows:
        return None
    here = {m: flat_metrics(rows[claim.better]).get(m, np.nan) - flat_metrics(rows[claim.worse]).get(m, np.nan)
            for m in METRICS}
    said = " / ".join(f"{here[m]:+.1f} {m.removesuffix(' top-1')}" for m in METRICS)
    students = (seeds or {}).get("students", {})
    seedless = claim.better in SEEDLESS and claim.worse in SEEDLESS  # the same numbers for every seed
    if seedless or claim.better not in students or claim.worse not in students:
        if seedless and test_images:
            error = {m: _standard_error(rows[claim.better], rows[claim.worse], m, test_images) for m in METRICS}
            spread = " / ".join(f"{error[m]:.1f}" for m in METRICS)
            verdict = _verdict({m: (here[m], error[m]) for m in METRICS}, claim.at_least, "its standard error")
            return f"{claim.text}: {said} (standard error {spread} on {test_images:,} test images); {verdict}."
        return (f"{claim.text}: {said} here; no verdict: one seed, and no seed spread measured for these "
                "settings (benchmarks/demo_seeds.py).")
    paired = {}
    for m in METRICS:
        better, worse = np.array(students[claim.better][m]), np.array(students[claim.worse][m])
        spread = max(better.std(ddof=1), worse.std(ddof=1))
        paired[m] = (float((better - worse).mean()), float(spread))
    over = " / ".join(f"{d:+.1f} (spread {s:.1f})" for d, s in paired.values())
    verdict = _verdict(paired, claim.at_least)
    return (f"{claim.text}: {said} here; over {len(seeds['seeds'])} seeds {over} "
            f"(mean paired difference, the larger seed standard deviation of the two); {verdict}.")


def _standard_error(better: dict, worse: dict, metric: str, images: int) -> float:
    """Standard error, in points, of the difference of two independent accuracies measured on `images` images."""
    p, q = flat_metrics(better)[metric] / 100, flat_metrics(worse)[metric] / 100
    return 100 * float(np.sqrt((p * (1 - p) + q * (1 - q)) / images))


def _verdict(differences: dict[str, tuple[float, float]], at_least: bool, spread: str = "the seed spread") -> str:
    """'holds' when every difference clears its spread (or, for at_least, stays above minus it); else the rest."""
    if all(d > s for d, s in differences.values()) or (at_least and all(d > -s for d, s in differences.values())):
        return "**holds**"
    if all(d < -s for d, s in differences.values()):
        return "**reversed**"
    return f"**inconclusive** (a difference within {spread})"


def accuracy_chart(rows: dict[str, dict], path: Path) -> Path:
    """Dot plot of kNN@10 and linear accuracy per student and the teacher, with the references as lines."""
    plt = pyplot()
    models = [name for name in rows if name.startswith("student, ") and "random" not in name] + ["teacher (MoCo-v2)"]
    models = [m for m in models if m in rows]
    figure, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 0.45 * len(models) + 1.6),
                                sharey=True, squeeze=False)
    for axis, metric in zip(axes[0], METRICS, strict=True):
        values = [flat_metrics(rows[m]).get(metric, np.nan) for m in models]
        colours = [COLOURS["teacher"] if m.startswith("teacher") else
                   COLOURS["BINGO"] if m == "student, BINGO" else PEER_COLOUR for m in models]
        axis.scatter(values, range(len(models)), c=colours, s=40, zorder=3)
        for reference, (colour, style) in REFERENCES.items():
            if reference in rows and metric in flat_metrics(rows[reference]):
                axis.axvline(flat_metrics(rows[reference])[metric], color=colour, linestyle=style, linewidth=1.2,
                             label=reference)
        axis.set_title(metric.replace("top-1", "top-1 accuracy (%)"), fontsize=10)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(models)), [m.removeprefix("student, ") for m in models])
    axes[0][0].invert_yaxis()
    legend_below(figure, axes[0])
    save_figure(figure, path)
    return path


def write_demo_page(out: Path, results: dict) -> str:
    """Write OUT/results.md and OUT/report.html (charts in OUT/demo-figures); returns the Markdown."""
    figures = out / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    charts = {"Accuracy against the references": accuracy_chart(results["rows"], figures / "accuracy.png")}
    runs = {name: out / _run_folder(name) for name in results["students"]}
    runs = {name: folder for name, folder in runs.items() if (folder / "logs" / "metrics.csv").is_file()}
    for path in plot_runs(runs, figures) if runs else []:
        charts[{"losses.png": "Training losses", "monitor.png": "Online kNN accuracy during training",
                "training.png": "Learning rate, alignment, throughput"}[path.name]] = path
    if (out / "bags" / "montage.png").is_file():
        charts["Bags: each row an anchor and its nearest neighbours in the teacher's features"] = \
            Path(shutil.copyfile(out / "bags" / "montage.png", figures / "bags-montage.png"))
    seeds = seed_spread(results["settings"])
    verdicts = [v for v in (judge(claim, results["rows"], seeds, results.get("test_images"))
                            for claim in CLAIMS) if v]
    markdown = _markdown(results, charts, verdicts, seeds)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(markdown))
    page = _html(results, charts, verdicts)
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page))
    return markdown


def _run_folder(student: str) -> str:
    """The demo's folder of a student label: 'moco' -> 'moco', "moco, BINGO's wall time" -> 'moco-equal-time'."""
    return student.split(",")[0] + ("-equal-time" if "," in student else "")


def _facts(results: dict) -> list[str]:
    machine, times = results["machine"], results["stage_wall_time_s"]
    teacher = results["teacher"]
    where = {"pretrained": "pretrained by this demo (demo.pretrain=true)"}.get(
        teacher["source"], f"`{teacher['source']}`" + (" (shipped in bingo's zoo: `bingo zoo list`)"
                                                       if teacher["source"].startswith("zoo:") else ""))
    students = results["students"]
    trained = "; ".join(f"{name}: {s.get('epochs')} epoch{'s' * (s.get('epochs') != 1)} in {s.get('fit_time_s')} s"
                        for name, s in students.items())
    resumed = "".join(f" It resumed `{run['command']}` (bingo commit {run['commit']}), whose finished stages it reused."
                      for run in results.get("earlier_runs", []))
    return [f"Command: `{results['command']}`, seed {results['seed']}, bingo commit {machine['commit']}.{resumed}",
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads"
            + (f", {machine['gpu']}" if machine["gpu"] else ", no GPU") + f"; torch {machine['torch']}.",
            f"Teacher: {Path(teacher['file']).name}, {where}.",
            f"Students (training time, the teacher's bags and keys paid once for all): {trained}.",
            "Wall time per stage: " + (" | ".join(f"{k}: {v:.0f} s" for k, v in times.items()) or "all reused")
            + f"; peak memory {_memory(results['peak_memory'])}."]


def _memory(peak: dict) -> str:
    names = {"main_mib": "main process", "largest_child_mib": "largest worker", "gpu_mib": "GPU"}
    return ", ".join(f"{names.get(k, k)} {v / 1024:.1f} GiB" for k, v in peak.items() if v)


def _markdown(results: dict, charts: dict[str, Path], verdicts: list[str], seeds: dict | None) -> str:
    lines = ["# bingo demo", "", *[f"- {fact}" for fact in _facts(results)], "", results_table(results), "",
             "## Verdicts", "", *[f"- {v}" for v in verdicts], ""]
    if seeds:
        lines += [f"Seed spread: `{seeds['command']}` at commit {seeds['commit']} ({len(seeds['seeds'])} seeds).", ""]
    for title, path in charts.items():
        lines += [f"## {title}", "", f"![{title}]({FIGURES}/{path.name})", ""]
    return "\n".join(lines)


def _html(results: dict, charts: dict[str, Path], verdicts: list[str]) -> str:
    head, _, *body = results_table(results).splitlines()
    rows = "".join(f"<tr>{_cells(line, 'td')}</tr>" for line in body)
    images = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
                     for title, path in charts.items())
    items = "".join(f"<li>{_bold(html.escape(v))}</li>" for v in verdicts)
    facts = "".join(f"<li>{_code(html.escape(f))}</li>" for f in _facts(results))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>bingo demo</title><style>{CSS}"
            f"</style></head><body><h1>bingo demo</h1><ul class='facts'>{facts}</ul>"
            f"<table><thead><tr>{_cells(head, 'th')}</tr></thead><tbody>{rows}</tbody></table>"
            f"<h2>Verdicts</h2><ul>{items}</ul>{images}</body></html>")


def _cells(line: str, tag: str) -> str:
    """A Markdown table line's cells as HTML <td> or <th> elements."""
    return "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in line.strip().strip("|").split("|"))


def _code(text: str) -> str:
    """Markdown `code` as <code>."""
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _bold(text: str) -> str:
    """Markdown **bold** as <strong>."""
    parts = text.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
       "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"
       ".facts{font-size:13px;color:#555}")
