#!/usr/bin/env python
"""Does ``--codec topk-vq --ratio R`` land in [R, 1.1 R] after zstd, on real token labels?

Real labels: the KJV trigram LM's next-word distributions over its 5,000 most probable words
(``benchmarks/kjv_slice_labels.py``: frame (1, 20480, 5000), float32 log-probabilities, cached under
``${SLC_CACHE:-~/.cache/slc}/real_labels/kjv-trigram-5000/``). Each cell is one ``slc.compress`` of the
whole set as a user runs it (default fit: 16,384 tokens, 500 steps); ``planned`` is the plan's ratio
before fitting (rank planes measured, value codes at half their bytes), ``fitted`` after the value
codes were measured, ``file`` the written file's. KL is the file's labels against the input at T
(mean over every token, nats); top-1 is exact by construction.

    python benchmarks/token_ratio.py [--temperatures 1,4] [--ratios 10,20,40,100,200] [--out examples/results]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
import slc  # noqa: E402
from real_labels import _cache_root  # noqa: E402
from slc.codecs.labels import kl_to_decoded  # noqa: E402

SET = "kjv-trigram-5000"


def file_kl(path: Path, logits: np.ndarray, t: float) -> float:
    total = 0.0
    with slc.open_slc(path) as f:
        for s in range(0, len(logits), 2048):
            ref = torch.log_softmax(torch.from_numpy(np.asarray(logits[s:s + 2048], np.float32)) / t, 1)
            total += float(kl_to_decoded(ref, f.decode(0, s, min(len(logits), s + 2048))).sum())
    return total / len(logits)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--temperatures", default="1,4")
    ap.add_argument("--ratios", default="10,20,40,100,200")
    ap.add_argument("--out", default="examples/results")
    a = ap.parse_args(argv)
    src = _cache_root(None) / SET / "logits.npy"
    if not src.exists():
        sys.exit(f"expected the {SET} labels at {src}: run benchmarks/kjv_slice_labels.py first")
    logits = np.load(src, mmap_mode="r")[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in map(float, a.temperatures.split(",")):
            for r in map(float, a.ratios.split(",")):
                lines: list[str] = []
                out = Path(tmp) / "t.slc"
                t0 = time.perf_counter()
                res = slc.compress(src, out, codec="topk-vq", ratio=r, temperature=t, force=True, log=lines.append)
                seconds = time.perf_counter() - t0
                planned = [float(m.group(1)) for line in lines for m in [re.search(r"= ([0-9.]+)x", line)] if m]
                row = {"T": t, "ratio": r, "k": res.plan.params["k"], "planned": planned[0],
                       "fitted": planned[-1], "file": res.ratio, "in_window": r <= res.ratio <= 1.1 * r,
                       "refit": any(line.startswith("plan: refitting") for line in lines),
                       "bytes": res.bytes, "kl": file_kl(out, logits, t), "seconds": seconds}
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = Table(title=f"topk-vq --ratio on {SET} (whole file after zstd)")
    for col in ("T", "asked", "k", "planned", "fitted", "file", "in [R, 1.1R]", "refit", "KL", "seconds"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(f"{row['T']:g}", f"{row['ratio']:g}x", str(row["k"]), f"{row['planned']:.1f}x",
                      f"{row['fitted']:.1f}x", f"{row['file']:.1f}x", "yes" if row["in_window"] else "no",
                      "yes" if row["refit"] else "", f"{row['kl']:.4f}", f"{row['seconds']:.0f}")
    Console().print(table)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"token_ratio_{SET}.json").write_text(json.dumps({"set": SET, "slc": slc.__version__, "rows": rows},
                                                            indent=1))
    with open(out / f"token_ratio_{SET}.txt", "w") as fh:
        Console(file=fh, width=120).print(table)


if __name__ == "__main__":
    main()
