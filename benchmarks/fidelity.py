"""Fidelity of each codec on real 1000-class soft labels at equal bytes.

EfficientNet-Lite0 logits over augmented Fashion-MNIST crops (see real_labels.py). For each
temperature and target ratio, every codec writes a real .slc file; we report its real size
and the KL(original || decoded) at that temperature, top-1 agreement and top-5 overlap over
every label in the file.

    python benchmarks/fidelity.py --ratios 10,40,100 --temperatures 1,4,20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import slc  # noqa: E402
from slc.errors import SlcInputError  # noqa: E402
from slc.labels import to_logp  # noqa: E402
from slc.metrics import Fidelity  # noqa: E402
from slc.vqae import FitConfig  # noqa: E402


def measure(logits: np.ndarray, codec: str, ratio: float, t: float, workdir: str, **kw) -> dict:
    path = os.path.join(workdir, f"{codec}-{ratio}-{t}.slc")
    t0 = time.perf_counter()
    r = slc.compress(logits, path, codec=codec, temperature=t, ratio=ratio, force=True, source="logits", **kw)
    fit_s = time.perf_counter() - t0
    meter = Fidelity()
    e_count, n, _ = logits.shape
    t0 = time.perf_counter()
    with slc.open_slc(path) as f:
        for e, s, dec in f.iter_chunks():
            meter.update(to_logp(logits[e, s:s + len(dec)], "logits", t), dec)
    dec_s = time.perf_counter() - t0
    res = meter.result()
    os.unlink(path)
    return {"codec": codec, "picked": r.codec, "T": t, "target": ratio, "bytes": r.bytes, "ratio": r.ratio, "params": r.plan.params,
            **res, "compress_s": fit_s, "decode_s": dec_s, "fit": r.fit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="10,40,100")
    ap.add_argument("--temperatures", default="1,4,20")
    ap.add_argument("--codecs", default="vqae-paper,vqae,topk")
    ap.add_argument("--labels", default="fmnist-effnet-l0")
    ap.add_argument("--fit-steps", type=int, default=None)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    from real_labels import load_real_labels

    logits = load_real_labels(args.labels)["logits"]
    console = Console()
    console.print(f"labels: {logits.shape} EfficientNet-Lite0 logits over augmented Fashion-MNIST crops")
    rows = []
    with tempfile.TemporaryDirectory() as wd:
        for t in map(float, args.temperatures.split(",")):
            for ratio in map(float, args.ratios.split(",")):
                for codec in args.codecs.split(","):
                    kw = {}
                    if args.fit_steps and codec.startswith("vqae"):
                        cfg = FitConfig.paper() if codec == "vqae-paper" else FitConfig()
                        cfg.steps = args.fit_steps
                        kw["fit_config"] = cfg
                    try:
                        row = measure(logits, codec, ratio, t, wd, **kw)
                    except SlcInputError as e:
                        console.print(f"[yellow]T={t:g} {ratio:g}x {codec}: {e}[/yellow]")
                        continue
                    rows.append(row)
                    console.print(f"T={t:g} {ratio:g}x {codec:10s} {row['ratio']:6.1f}x KL={row['kl']:.4f} "
                                  f"top1={row['top1_agreement']:.3f} {row['params']} ({row['compress_s']:.0f}s)")
    table = Table(title=f"fidelity on {logits.shape[0] * logits.shape[1]:,} real labels, {logits.shape[2]} classes")
    for col in ("T", "target", "codec", "params", "bytes", "ratio", "KL", "top-1 agr.", "top-5 ovl.", "time"):
        table.add_column(col, justify="right" if col not in ("codec", "params") else "left")
    for r in rows:
        p = ",".join(f"{k}={v}" for k, v in r["params"].items())
        table.add_row(f"{r['T']:g}", f"{r['target']:g}x", r["codec"], p, f"{r['bytes']:,}", f"{r['ratio']:.1f}x",
                      f"{r['kl']:.4f}", f"{100 * r['top1_agreement']:.1f}%", f"{100 * r['top5_overlap']:.1f}%",
                      f"{r['compress_s']:.0f}s")
    console.print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
