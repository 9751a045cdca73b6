"""Decode to fp32 probabilities at C=1000 on real labels: the fused path against the old one. One command, one table.

    python benchmarks/decode_speed.py [--repeats 5] [--steps 100] [-T 4] [--sweep]

Real labels: EfficientNet-Lite0 over Fashion-MNIST crops (``fmnist-effnet-l0``, 24,000 labels of 1,000
classes), laid out as 2 epochs x 12,000 samples (chunks of 4,096) and compressed with the codec params a
3M-label 40x file gets (``plan_for``, as ``bench_codec.py``): ``vqae`` k=256, d_c=2, d_h=98 and the default
codec ``hybrid`` (top-1 + 48 8-bit codes of 2 dims). ``--steps``: VQAE fit steps (decode speed does not
depend on them; the default recipe's 500 take minutes on 2 cores).

Rows (the methods take turns within each repeat, so load from other processes hits all alike): labels/s (median
over repeats), the median of the per-repeat ratios to the baseline's speed in the same repeat, and the ratio
of the fastest repeats (nearer what idle cores give):
  raw fp16 read     np.load of the same labels stored as fp16 probabilities, to fp32 (the baseline)
  chunk, old        codec.decode of one 4,096-label chunk payload, then retemper to probabilities
  chunk, fused      slc.codecs.labels.decode_probs on the same payload (logits -> softmax by row block)
  file, old         every epoch read as the reader did before: decode, retemper per chunk, concatenate
  file, fused       open_slc(path).decode(e) for every epoch (what users get)
``--sweep`` adds the fused chunk decode at 256 / 1,024 / 4,096 rows a block on 1 and 2 workers, and on torch's
intra-op threads instead of workers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import slc  # noqa: E402
from slc.codecs.labels import decode_probs, retemper, softmax_rows  # noqa: E402
from slc.codecs.planner import plan_for  # noqa: E402
from timing import timed  # noqa: E402

SHAPE = (2, 12_000)


def summary(secs: dict[str, list[float]], labels: dict[str, int]) -> list[tuple[str, str, str, str]]:
    """Per method: median labels/s, the median over repeats of its speed relative to the baseline's in the same
    repeat (the first method), and the same of the fastest repeats."""
    rate = {k: np.array([labels[k] / t for t in v]) for k, v in secs.items()}
    base = next(iter(rate.values()))
    return [(k, f"{np.median(r):,.0f}", f"{np.median(r / base):.2f}x", f"{r.max() / base.max():.2f}x")
            for k, r in rate.items()]


def old_file_decode(f, epoch: int) -> np.ndarray:
    """One epoch as ``SlcFile.decode`` read it before the fused path (files whose chunks hold one epoch)."""
    parts = []
    for i, a, b, _ in f.tiling.locate(epoch, 0, f.shape[1]):
        c = f.index[i]
        labels, kind = f.codec.decode(f.chunk_payload(c), c.count)
        parts.append(retemper(labels, kind, f.temperature, "probs")[a:b])
    return np.concatenate(parts)


def intra_op(codec, payload, n: int) -> np.ndarray:
    """The fused decode on torch's intra-op threads (what the first version did) instead of workers."""
    out, scratch, fill = torch.empty(n, codec.classes), torch.empty(1024, codec.classes), codec.logit_rows(payload, n)
    for lo in range(0, n, 1024):
        x = scratch[:min(n, lo + 1024) - lo]
        fill(lo, lo + len(x), x)
        torch.softmax(x, -1, out=out[lo:lo + len(x)])
    return out.numpy()


def build(wd: str, logits: np.ndarray, t: float, steps: int) -> dict[str, str]:
    """The vqae and hybrid files, with the params of a 3M-label 40x file."""
    frame = (300, 10_000, logits.shape[-1])
    vq = plan_for("vqae", frame, 4096, ratio=40).params
    hy = plan_for("hybrid", frame, 4096, ratio=40).params
    paths = {}
    for name, kw in {f"vqae (k={vq['k']}, d_c={vq['dc']}, d_h={vq['dh']})": dict(codec="vqae", **vq),
                     f"hybrid (top-{hy['top']} + {hy['m']} x {hy['codes']} codes, d_c={hy['dc']})":
                         dict(codec="hybrid", options={k: hy[k] for k in ("top", "m", "dc", "codes")})}.items():
        path = os.path.join(wd, f"{kw['codec']}.slc")
        t0 = time.perf_counter()
        slc.compress(logits, path, source="logits", temperature=t, fit_config={"steps": steps}, **kw)
        print(f"{name}: compressed in {time.perf_counter() - t0:.0f} s", flush=True)
        paths[name] = path
    return paths


def measure(path: str, raw_path: str, repeats: int, sweep: bool) -> tuple[dict, dict[str, float], dict[str, int]]:
    """Seconds per call of each method (:func:`timed`), the max abs difference of fused against old (at T and
    at 2T), and the labels each method reads."""
    with slc.open_slc(path) as f:
        c0 = f.index[0]
        payload, n, t = f.chunk_payload(c0), c0.count, f.temperature
        fns = {"raw fp16 read -> fp32 (baseline)": lambda: np.load(raw_path).astype(np.float32),
               "chunk, old": lambda: retemper(*f.codec.decode(payload, n), t, "probs"),
               "chunk, fused": lambda: decode_probs(f.codec, payload, n, t),
               "file, old": lambda: [old_file_decode(f, e) for e in range(f.shape[0])],
               "file, fused": lambda: [f.decode(e) for e in range(f.shape[0])]}
        for workers in (1, 2) if sweep else ():
            for rows in (256, 1024, 4096):
                fns[f"chunk, fused, {rows} rows a block, {workers} worker{'s' * (workers > 1)}"] = (
                    lambda rows=rows, w=workers: softmax_rows(f.codec.logit_rows(payload, n), n, f.shape[2], 1.0,
                                                              rows=rows, workers=w))
        if sweep:  # torch's own threads on one span, as a single worker would run without one_thread
            fns["chunk, fused, 1,024 rows a block, torch's threads"] = lambda: intra_op(f.codec, payload, n)
        secs = timed(fns, repeats)
        diff = {}
        for label, tt in (("T", None), ("2T", 2 * t)):
            old = np.concatenate([retemper(*f.codec.decode(f.chunk_payload(c), c.count), t, "probs", tt)
                                  for c in f.index])
            new = np.concatenate([f.decode(e, temperature=tt) for e in range(f.shape[0])])
            diff[label] = float(np.abs(old - new).max())
        labels = {k: n if k.startswith("chunk") else len(f) for k in fns}
    return secs, diff, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100, help="VQAE fit steps")
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    ap.add_argument("--sweep", action="store_true", help="also rows per block and torch threads")
    args = ap.parse_args()
    from real_labels import load_real_labels

    logits = load_real_labels("fmnist-effnet-l0")["logits"]
    c = logits.shape[-1]
    logits = logits.reshape(*SHAPE, c)
    t = args.temperature
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as wd:
        raw_path = os.path.join(wd, "labels-fp16.npy")
        np.save(raw_path, torch.softmax(torch.tensor(logits) / t, -1).numpy().astype(np.float16))
        paths = build(wd, logits, t, args.steps)
        for name, path in paths.items():
            secs, diff, labels = measure(path, raw_path, args.repeats, args.sweep)
            rows.append(summary(secs, labels))
            notes.append(f"{name}: max |fused - old| {diff['T']:.3g} at T, {diff['2T']:.3g} at 2T")
    table = Table(title=f"decode to fp32 probabilities, C={c}, T={t:g}, {SHAPE[0]} x {SHAPE[1]:,} real labels, "
                        f"{os.cpu_count()} CPU cores, {args.repeats} repeats")
    for col in ("what", "labels/s (median)", "vs raw read (median of repeats)", "vs raw read (fastest)"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for name, group in zip(paths, rows):
        table.add_section()
        table.add_row(f"[bold]{name}[/bold]", "", "", "")
        for r in group:
            table.add_row(*r)
    console = Console(width=120)
    console.print(table)
    for line in notes:
        console.print(line)

if __name__ == "__main__":
    main()
