"""Long crash test: SIGKILL `slc compress` and `slc encode` at random points until each run finishes.

Each trial runs the command with --resume and kills it at a random moment (a random delay, or
after a random number of chunks), again and again, until a run completes; the result must be
byte-identical to an uninterrupted run, nothing may appear at the output path early, and a left
.partial must never validate (tests/conftest.kill_until_done checks all three after every kill).
The regular suite does 2 trials per command; this does as many as you ask.

    python benchmarks/crash.py               # 10 trials per command
    python benchmarks/crash.py --trials 30
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import kill_until_done, run_slc, synthetic_logits  # noqa: E402
from tests.test_encode import SMALL, SUBSET, Tiny, script  # noqa: E402


def commands(d: Path) -> dict[str, list]:
    npy = d / "logits.npy"
    np.save(npy, synthetic_logits(epochs=8, samples=2000, classes=100))
    torch.manual_seed(0)
    teacher = script(Tiny(), d / "tiny.pt")
    return {
        "compress vqae": ["compress", npy, "--codec", "vqae", "--ratio", "8", "--fit-steps", "100", "--chunk-size", "50",
                          "-q"],
        "compress fp16+zstd": ["compress", npy, "--codec", "fp16", "--zstd", "--chunk-size", "50", "-q"],
        "encode vqae": ["encode", teacher, SUBSET, "--epochs", "8", *SMALL, "--codec", "vqae", "--fit-steps", "30",
                        "--fit-labels", "1000", "--ratio", "3", "--chunk-size", "100", "--invert", "-q"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10, help="finished files per command")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    table = Table(title=f"slc crash test: SIGKILL at random points, {args.trials} resumed files per command")
    for col in ("command", "kills", "before setup was durable", "during chunks", "resumed files (byte-identical)",
                "minutes"):
        table.add_column(col, justify="left" if col == "command" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, cmd in commands(d).items():
            whole = d / "whole.slc"
            t0 = time.monotonic()
            run_slc(*cmd, "-o", whole, check=True)
            duration = time.monotonic() - t0
            kills: list[int] = []
            for trial in range(args.trials):
                out = d / f"r{trial}.slc"
                kills += kill_until_done(cmd, out, whole.read_bytes(), rng, duration, max_chunks=6)
                out.unlink()
            table.add_row(name, f"{len(kills)}", f"{sum(k < 0 for k in kills)}", f"{sum(k >= 0 for k in kills)}",
                          f"{args.trials}", f"{(time.monotonic() - t0) / 60:.1f}")
            whole.unlink()
    Console().print(table)  # reaching here means every check after every kill passed: a failure raises


if __name__ == "__main__":
    main()
