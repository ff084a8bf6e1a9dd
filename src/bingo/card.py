"""Deployment card of an exported backbone: size, FLOPs, CPU latency and accuracy, beside its teacher's.

Only measured values go in: parameters are counted, FLOPs come from torch's FlopCounterMode,
latency is timed on this machine (named in the card), accuracies are read from `bingo eval` folders.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bingo.errors import UserError
from bingo.models.backbones import count_parameters
from bingo.report import flat_metrics

WARMUP = 10  # untimed runs before the timed ones


def run_config(folder: Path) -> dict:
    """The resolved config.yaml of a run folder, or {} when it has none."""
    path = Path(folder) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_accuracies(folders: Sequence[Path], params: int | None) -> dict[str, float]:
    """Accuracies (%) from `bingo eval` folders, as {'<data set> kNN@10 top-1': 71.2, ...}.

    Each folder must hold one model's results.json; with `params` given, that model must have as many
    backbone parameters, so that a folder of another model is refused.
    """
    accuracies: dict[str, float] = {}
    for folder in map(Path, folders):
        data = run_config(folder).get("data", {}).get("name")
        for name, value in flat_metrics(_eval_row(folder, params)).items():
            key = f"{data} {name}" if data else name
            if key in accuracies:
                raise UserError(f"{key} is in two eval folders (the second: {folder}); pass only one of them")
            accuracies[key] = value
    return accuracies


def _eval_row(folder: Path, params: int | None) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise UserError(f"eval folder {folder} has no results.json; pass the --out folder of a finished `bingo eval`")
    try:
        rows = json.loads(path.read_text())["rows"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a bingo results file ({type(err).__name__}: {err})") from None
    if not isinstance(rows, dict) or len(rows) != 1:
        count = len(rows) if isinstance(rows, dict) else 0
        raise UserError(f"{path} holds {count} models, not one; pass the folder of a `bingo eval` of this model")
    (row,) = rows.values()
    if params is not None and row.get("params") not in (None, params):
        raise UserError(f"{path} evaluated a model with {row['params']:,} backbone parameters, not {params:,}; "
                        "pass the eval folder of this model")
    return row


def measure(backbone: nn.Module, shape: tuple[int, ...], repeats: int, onnx_path: Path | None = None) -> dict:
    """Parameters, FLOPs and CPU latency (torch eager; onnxruntime when `onnx_path` is given) at input `shape`."""
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    backbone = backbone.eval()
    with torch.inference_mode():
        latency = {"torch": latency_ms(lambda: backbone(images), repeats)}
    if onnx_path is not None:
        session, feed = ort_session(onnx_path), {"images": images.numpy()}
        latency["onnxruntime"] = latency_ms(lambda: session.run(None, feed), repeats)
    return {"params": count_parameters(backbone), "flops": flops(backbone, shape), "latency_ms": latency}


def flops(backbone: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass at input `shape`, as torch's FlopCounterMode counts them (2 per multiply-add)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone.eval()(torch.zeros(shape))
    return counter.get_total_flops()


def latency_ms(run: Callable[[], Any], repeats: int) -> dict:
    """Median and interquartile range (ms) of `repeats` timed calls of `run`, after WARMUP untimed ones."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - start))
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1), "repeats": repeats, "warmup": WARMUP}


def ort_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session using as many threads as torch does, so that their latencies compare."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def machine() -> dict:
    """The CPU, the threads latency runs on, how busy the machine was and the library versions, for the card."""
    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def render_card(card: dict, load_py: str, detectron2_yaml: str | None) -> str:
    """card.md: input format, the measured table (student beside teacher), the files and how to load them."""
    lines = [f"# Deployment card: {card['student']['arch']} from {card['student']['file']}", "",
             f"Exported by `bingo export` to: {', '.join(card['formats']) or 'no format (card only)'}.", "",
             "## Input", "", _input_text(card["input"]), "", "## Measured", "", *_table(card), "",
             *_notes(card), "", "## Files", "", *_files_text(card), "", "## Loading", "",
             "`load.py` (in this folder):", "", "```python", load_py.rstrip(), "```"]
    if detectron2_yaml:
        lines += ["", "detectron2 (config keys for `detectron2.pkl`; detectron2 itself was not run by bingo):",
                  "", "```yaml", detectron2_yaml.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _input_text(spec: dict) -> str:
    resize = (f"resize the shorter side to {spec['eval_resize']} px, centre-crop {spec['image_size']} px"
              if spec["eval_resize"] else f"a {spec['image_size']} px crop (the eval resize was not recorded)")
    return (f"{spec['channels']}-channel ({spec['colour']}) images of {spec['image_size']} x {spec['image_size']} px: "
            f"{resize}, scale to [0, 1], normalise with mean {spec['mean']} and std {spec['std']}. "
            f"Output: {spec['feature_dim']} pooled features per image.")


def _table(card: dict) -> list[str]:
    models = {"student": card["student"], "teacher": card["teacher"]}
    models = {name: m for name, m in models.items() if m is not None}
    rows = [("model", lambda m: m["model"]),
            ("input (channels x height x width)", lambda m: " x ".join(map(str, m["input_shape"][1:]))),
            ("backbone parameters", lambda m: f"{m['params'] / 1e6:.2f}M"),
            ("FLOPs, batch 1", lambda m: f"{m['flops'] / 1e9:.3f} G"),
            ("CPU latency, torch eager, batch 1", lambda m: _latency(m, "torch")),
            ("CPU latency, onnxruntime, batch 1", lambda m: _latency(m, "onnxruntime"))]
    metrics = list(dict.fromkeys(k for m in models.values() for k in m["accuracy"]))
    rows += [(f"{k} (%)", lambda m, k=k: f"{m['accuracy'][k]:.1f}" if k in m["accuracy"] else "-") for k in metrics]
    lines = ["| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(cell(m) for m in models.values()) + " |" for name, cell in rows]


def _latency(model: dict, runtime: str) -> str:
    timing = model["latency_ms"].get(runtime)
    return "-" if timing is None else f"{timing['median']:.2f} ms (IQR {timing['iqr']:.2f})"


def _notes(card: dict) -> list[str]:
    host, timing = card["machine"], card["student"]["latency_ms"]["torch"]
    models = {"student": card["student"], "teacher": card["teacher"]}
    sources = [f"{name}: " + ", ".join(f"`{f}`" for f in m["evals"]) for name, m in models.items() if m and m["evals"]]
    return [f"Latency: median and interquartile range of {timing['repeats']} runs at batch 1 after "
            f"{timing['warmup']} warm-up runs, on {host['cpu']} ({host['logical_cpus']} logical CPUs) using "
            f"{host['threads']} thread(s), 1-minute load average {host['load_average_1min']:.1f} before timing "
            f"(torch {host['torch']}, onnxruntime {host['onnxruntime']}). "
            "FLOPs: torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products, 2 per multiply-add).",
            "", "Accuracies: in % on the test split of the data set named first, as `bingo eval` measured them (semi: "
            "after fine-tuning on that share of the labels; transfer: the linear protocol on that data set; "
            + ("; ".join(sources) if sources else "no eval folder given") + ")."]


def _files_text(card: dict) -> list[str]:
    lines = []
    for fmt, names in card["files"].items():
        check = card["checks"].get(fmt)
        verified = (f"; checked against bingo's backbone at batches {check['batches']}: max abs diff "
                    f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.2e})") if check else ""
        lines.append(f"- {', '.join(f'`{n}`' for n in names)}: {card['targets'][fmt]}{verified}.")
    return lines
