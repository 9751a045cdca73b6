#!/usr/bin/env python
"""How long does each of ``auto``'s candidates take to fit on 16,384 labels, as the class count grows?

Issue 17 asks for at most 2 minutes per codec at any C on this machine (2 CPU cores). Fit time does
not depend on what the labels mean, only on their shape, so above 5,000 classes the labels are
Zipf-shaped logits with per-row noise (no real teacher with 21,843 or 30,000 classes runs here);
at 5,000 classes they are the real KJV trigram slice (``benchmarks/kjv_slice_labels.py``) when cached.
Each codec is planned for a file of 100,000 labels at the ratio and fitted as ``slc compress`` fits
it (one thread). ``hybrid`` is timed too, though ``auto`` leaves it out above 4,096 classes.

    python benchmarks/fit_time.py [--classes 5000,21843,30000] [--ratios 10,40,200] [-T 4] [--codecs pca,topk]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from real_labels import _cache_root  # noqa: E402
from slc.codecs.planner import Unreachable, plan_for  # noqa: E402
from slc.codecs.presets import PRESETS  # noqa: E402

CODECS = ("hybrid-prior", "hybrid-pca", "topk", "pca", "hybrid")
LABELS = 16_384


def labels(classes: int, t: float) -> tuple[np.ndarray, str]:
    real = _cache_root(None) / "kjv-trigram-5000" / "logits.npy"
    if classes == 5000 and real.exists():
        x = torch.from_numpy(np.array(np.load(real, mmap_mode="r")[0, :LABELS]))
        return torch.log_softmax(x / t, 1).numpy(), "KJV trigram slice (real)"
    rng = np.random.default_rng(0)
    base = -1.1 * np.log(np.arange(1, classes + 1))
    x = torch.from_numpy((base + rng.normal(size=(LABELS, classes)) * 1.5).astype(np.float32))
    return torch.log_softmax(x / t, 1).numpy(), "Zipf logits + noise (synthetic, timing only)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", default="5000,21843,30000")
    ap.add_argument("--ratios", default="10,40,200")
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    ap.add_argument("--codecs", default=",".join(CODECS), help="which of them to time")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    codecs = tuple(n for n in CODECS if n in a.codecs.split(","))
    rows = []
    for c in map(int, a.classes.split(",")):
        lp, what = labels(c, a.temperature)
        for r in map(float, a.ratios.split(",")):
            for name in codecs:
                try:
                    plan = plan_for(name, (1, 100_000, c), 2048, ratio=r)
                except Unreachable:
                    rows.append({"classes": c, "ratio": r, "codec": name, "fit_s": None, "labels": what})
                    continue
                t0 = time.perf_counter()
                codec = PRESETS[name].build(plan.params, lp, c)
                rows.append({"classes": c, "ratio": r, "codec": name, "describe": codec.describe(),
                             "plan_ratio": plan.ratio, "fit_s": time.perf_counter() - t0, "labels": what,
                             "auto_candidate": name in PRESETS["auto"].candidates(c)})
                print(json.dumps(rows[-1]), flush=True)
        del lp
    table = Table(title=f"fit seconds on {LABELS:,} labels (T={a.temperature:g}, one thread)")
    for col in ("classes", "ratio", *codecs, "auto (its candidates)"):
        table.add_column(col, justify="right")
    for c in sorted({r["classes"] for r in rows}):
        for ratio in sorted({r["ratio"] for r in rows}):
            cell = {r["codec"]: r for r in rows if r["classes"] == c and r["ratio"] == ratio}
            auto = sum(r["fit_s"] for r in cell.values() if r["fit_s"] is not None and r.get("auto_candidate"))
            table.add_row(f"{c:,}", f"{ratio:g}x", *(("-" if cell[n]["fit_s"] is None else f"{cell[n]['fit_s']:.1f}")
                                                     for n in codecs), f"{auto:.1f}")
    Console().print(table)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
