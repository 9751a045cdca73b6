#!/usr/bin/env python
"""Where does each of ``auto``'s candidates land against a target ratio, for any class count?

Planning only (no labels, no fitting): each candidate is planned for a whole file at each ratio, as
``slc compress --ratio R`` plans it (raw chunks, exact bytes). A cell shows the planned ratio, ``*``
where it misses [R, 1.1 R] (the codec's next step would pass the target) and ``-`` where the codec
cannot reach R at all. Files of up to 100 classes have the ground-truth run's shape (100 epochs x
1,000 labels), larger ones one epoch of 100,000 labels. Token codecs (``topk-vq``) are sized after
zstd on real data: ``benchmarks/token_ratio.py``.

    python benchmarks/plan_window.py [--classes 2,10,100,140,200,1000,6625,21843,30000] [--ratios 10,20,40,100,200]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from slc.codecs.planner import Unreachable, default_chunk_size, plan_for  # noqa: E402
from slc.codecs.presets import PRESETS  # noqa: E402
from slc.format.header import MAX_CHUNK_ELEMENTS  # noqa: E402


def cell(name: str, shape: tuple[int, int, int], ratio: float) -> tuple[str, bool | None]:
    try:
        p = plan_for(name, shape, default_chunk_size(shape[2], MAX_CHUNK_ELEMENTS), ratio=ratio)
    except Unreachable:
        return "-", None
    ok = ratio <= p.ratio <= 1.1 * ratio
    return f"{p.ratio:.1f}" + ("" if ok else "*"), ok


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="2,10,100,140,200,1000,6625,21843,30000")
    ap.add_argument("--ratios", default="10,20,40,100,200")
    a = ap.parse_args(argv)
    names = PRESETS["auto"].chooses
    table = Table(title="planned whole-file ratio per auto candidate (* outside [R, 1.1 R], - unreachable)")
    for col in ("classes", "target", *names, "any in window"):
        table.add_column(col, justify="right")
    for c in map(int, a.classes.split(",")):
        shape = (100, 1000, c) if c <= 100 else (1, 100_000, c)
        for r in map(float, a.ratios.split(",")):
            cells = {n: cell(n, shape, r) if n in PRESETS["auto"].candidates(c) else ("left out", None)
                     for n in names}
            table.add_row(f"{c:,}", f"{r:g}x", *(cells[n][0] for n in names),
                          "yes" if any(ok for _, ok in cells.values()) else "no")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
