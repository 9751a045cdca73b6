"""Long fuzz of the .slc reader: mutated golden files must give SlcFormatError or a valid read, nothing else.

Every golden file in tests/golden (formats 1.0, 1.1, 1.2: every codec, replay sections, a pruned
file) is mutated at random (byte writes, truncation, appended bytes), half of the time with every
CRC recomputed so the checks behind the checksums are exercised too; each result is opened,
verified and fully decoded, with the address space capped at what is mapped after the first
file plus ``--cap-mb`` (so an allocation a lying header asked for is a MemoryError, not a pass on
an overcommitting OS). Prints the outcome counts and slowest read per file, the peak RSS, and
every distinct unclean failure; exits 1 if there was one.

    python benchmarks/fuzz.py                # 100,000 files (about a minute on one core)
    python benchmarks/fuzz.py -n 5000 --seed 3

An atheris (libFuzzer, coverage-guided) target is ``benchmarks/fuzz_atheris.py``.
"""
from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slc.errors import SlcFormatError  # noqa: E402
from tests.test_malformed import cap_address_space, fresh_crcs, read_everything  # noqa: E402


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    d = bytearray(raw)
    for _ in range(int(rng.integers(1, 5))):
        d[int(rng.integers(0, len(d)))] = int(rng.integers(0, 256))
    kind = rng.random()
    if kind < 0.1:
        d = d[:int(rng.integers(0, len(d) + 1))]
    elif kind < 0.15:
        d += bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
    return bytes(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="mutated files in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cap-mb", type=int, default=256, help="address space allowed beyond the warmed-up process")
    args = ap.parse_args()
    files = sorted((ROOT / "tests" / "golden").glob("*.slc"))
    rng = np.random.default_rng(args.seed)
    outcomes: dict[str, collections.Counter] = {f.name: collections.Counter() for f in files}
    unclean: dict[tuple, int] = collections.Counter()
    slowest: dict[str, float] = collections.defaultdict(float)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.slc")
        for i in range(args.n):
            src = files[i % len(files)]
            data = mutate(src.read_bytes(), rng)
            if rng.random() < 0.5:
                try:
                    data = fresh_crcs(data)
                except Exception:  # too broken to locate the CRCs: fuzz it as is
                    pass
            with open(path, "wb") as f:
                f.write(data)
            t = time.perf_counter()
            try:
                read_everything(path)
                outcomes[src.name]["read"] += 1
            except SlcFormatError:
                outcomes[src.name]["SlcFormatError"] += 1
            except Exception as e:  # anything else is a bug
                key = (src.name, type(e).__name__, str(e)[:100])
                if key not in unclean:
                    traceback.print_exc(limit=4)
                unclean[key] += 1
                outcomes[src.name]["unclean"] += 1
            slowest[src.name] = max(slowest[src.name], time.perf_counter() - t)
            if i == 0:
                cap_address_space(args.cap_mb << 20)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = Table(title=f"slc fuzz: {args.n:,} mutated files in {seconds:.0f} s, peak RSS {peak_mb:.0f} MB, "
                        f"address space capped at +{args.cap_mb} MB")
    for col in ("golden file", "SlcFormatError", "read (valid)", "unclean", "slowest read"):
        table.add_column(col, justify="left" if col == "golden file" else "right")
    for name, c in outcomes.items():
        table.add_row(name, f"{c['SlcFormatError']:,}", f"{c['read']:,}", f"{c['unclean']:,}",
                      f"{1000 * slowest[name]:.1f} ms")
    console = Console()
    console.print(table)
    for (name, kind, msg), count in unclean.items():
        console.print(f"[red]{count} x {name}: {kind}: {msg}[/red]")
    sys.exit(1 if unclean else 0)


if __name__ == "__main__":
    main()
