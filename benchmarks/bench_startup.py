"""How long the CLI takes to start: ``slc --version`` and ``slc --help`` next to ``import numpy`` (and torch).

The CLI imports no torch and no numpy until a command runs; the target is ``slc --version`` under 3x
of a bare ``python -c "import numpy"`` measured in the same run. Medians of ``--repeats`` runs.

    python benchmarks/bench_startup.py --repeats 15
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

SLC = os.path.join(os.path.dirname(sys.executable), "slc")
CASES = [
    ("python -c 'import numpy' (baseline)", [sys.executable, "-c", "import numpy"]),
    ("python -c 'pass'", [sys.executable, "-c", "pass"]),
    ("slc --version", [SLC, "--version"]),
    ("slc --help", [SLC, "--help"]),
    ("slc compress --help", [SLC, "compress", "--help"]),
    ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
]


def seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name, _ in CASES}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits every case alike
        for name, cmd in CASES:
            times[name].append(seconds(cmd))
    base = statistics.median(times[CASES[0][0]])
    t = Table(title=f"startup, medians of {args.repeats} runs (interleaved)")
    for col in ("command", "median ms", "min ms", "vs import numpy"):
        t.add_column(col, justify="left" if col == "command" else "right")
    for name, _ in CASES:
        med = statistics.median(times[name])
        t.add_row(name, f"{1000 * med:.0f}", f"{1000 * min(times[name]):.0f}", f"{med / base:.2f}x")
    Console().print(t)


if __name__ == "__main__":
    main()
