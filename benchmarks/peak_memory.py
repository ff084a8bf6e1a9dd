"""Run a command and report the peak memory of its whole process tree (PSS, so shared pages count once).

    python benchmarks/peak_memory.py -- bingo demo --out runs/demo

Polls /proc every second; prints wall time and peak tree PSS in MiB as the last line (JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def tree(root: int) -> list[int]:
    """The pid and all descendants of `root`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def pss_mib(pid: int) -> float:
    """Proportional set size of one process in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, sum(pss_mib(pid) for pid in tree(process.pid)))
        time.sleep(1.0)
    print(json.dumps({"command": " ".join(command), "exit_code": process.returncode,
                      "wall_time_s": round(time.perf_counter() - started, 1), "peak_tree_pss_mib": round(peak)}))
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
