"""Codec speed and memory at C=1000, 40x, on real labels. One command, one table.

    python benchmarks/bench_codec.py [--repeats 5] [--skip-rss]

Rows (medians over repeats, with the ratio to a raw fp16 read measured in the same run):
  raw fp16 read      read fp16 labels from an .npy and convert to fp32 (the baseline)
  encode             slc codec.encode on log-probabilities, codec already fitted
  decode             chunk payload -> fp32 probabilities
  fit                fitting the default VQAE on 100k labels (one run)
  compress RSS       peak RSS of `slc compress` on a 1M x 1000 fp16 .npy (2 GB), subprocess
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from slc.codecs import VQAECodec  # noqa: E402
from slc.codecs.planner import plan_for  # noqa: E402
from slc.codecs.labels import to_logp  # noqa: E402
from slc.codecs.vqae import FitConfig  # noqa: E402


def median_rate(fn, labels: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return labels / statistics.median(times)


def vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tiled(logits: np.ndarray, rows: int) -> np.ndarray:
    flat = logits.reshape(-1, logits.shape[-1])
    reps = -(-rows // len(flat))
    return np.tile(flat, (reps, 1))[:rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=16384, help="labels per timed block")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    args = ap.parse_args()
    from real_labels import _cache_root, load_real_labels

    logits = load_real_labels("fmnist-effnet-l0")["logits"]
    c = logits.shape[-1]
    t = args.temperature
    console = Console()
    rows = []

    # ---- fit on 100k labels (real labels, repeated to 100k rows)
    fit_logp = to_logp(tiled(logits, 100_000), "logits", t)
    plan = plan_for("vqae", (300, 10_000, c), 4096, ratio=40)  # the codec a 3M-label, 40x file would use
    p = plan.params
    t0 = time.perf_counter()
    codec = VQAECodec.fit(fit_logp, p["k"], p["dc"], p["dh"], FitConfig())
    fit_s = time.perf_counter() - t0
    del fit_logp

    # ---- baseline: raw fp16 read of the same labels
    block = tiled(logits, args.block)
    with tempfile.TemporaryDirectory() as wd:
        path = os.path.join(wd, "block.npy")
        np.save(path, block.astype(np.float16))
        raw = median_rate(lambda: np.load(path).astype(np.float32), args.block, args.repeats)
    logp = to_logp(block, "logits", t)
    enc = median_rate(lambda: codec.encode(logp), args.block, args.repeats)
    payload = codec.encode(logp)
    dec = median_rate(lambda: codec.decode(payload, args.block), args.block, args.repeats)
    # decoding includes the softmax to probabilities, fused as the reader does it (benchmarks/decode_speed.py)
    from slc.codecs.labels import decode_probs

    dec_p = median_rate(lambda: decode_probs(codec, payload, args.block, t), args.block, args.repeats)
    params = f"k={p['k']}, d_c={p['dc']}, d_h={p['dh']}"
    rows += [("raw fp16 read (baseline)", f"{raw:,.0f} labels/s", "1.00x", "-"),
             (f"encode ({params})", f"{enc:,.0f} labels/s", f"{enc / raw:.2f}x", ">= 20,000 labels/s"),
             ("decode to logits", f"{dec:,.0f} labels/s", f"{dec / raw:.2f}x", "-"),
             ("decode to fp32 probabilities", f"{dec_p:,.0f} labels/s", f"{dec_p / raw:.2f}x", ">= 100,000 labels/s"),
             ("fit on 100k labels", f"{fit_s:.1f} s", "", "<= 120 s")]

    if not args.skip_rss:
        big = os.path.join(_cache_root(None), "bench-1M-fp16.npy")
        if not os.path.exists(big):
            console.print("writing a 1M x 1000 fp16 .npy (2 GB) for the RSS check ...")
            arr = np.lib.format.open_memmap(big + ".tmp", mode="w+", dtype=np.float16, shape=(1_000_000, c))
            flat = logits.reshape(-1, c).astype(np.float16)
            for s in range(0, 1_000_000, len(flat)):
                arr[s:s + len(flat)] = flat[: 1_000_000 - s]
            arr.flush()
            del arr
            os.replace(big + ".tmp", big)
        with tempfile.TemporaryDirectory() as wd:
            out = os.path.join(wd, "big.slc")
            peaks, walls = [], []
            for _ in range(2):
                t0 = time.perf_counter()
                proc = subprocess.Popen([sys.executable, "-m", "slc", "compress", big, "-o", out, "--ratio", "40",
                                         "-T", str(t), "-q", "--force"])
                peak = 0
                while proc.poll() is None:  # VmHWM: the child's own high-water mark; getrusage would
                    peak = max(peak, vm_hwm_mb(proc.pid))  # inherit this (large) process's at fork
                    time.sleep(0.1)
                if proc.returncode:
                    raise SystemExit(f"slc compress failed with exit code {proc.returncode}")
                walls.append(time.perf_counter() - t0)
                peaks.append(peak)
            rows.append(("`slc compress` 1M x 1000 fp16 .npy (2 GB), peak RSS",
                         " / ".join(f"{p:,.0f} MB" for p in peaks), f"{statistics.median(walls):.0f} s wall",
                         "<= 1,536 MB"))

    table = Table(title=f"slc codec speed, C={c}, 40x, T={t:g}, {os.cpu_count()} CPU cores (medians of {args.repeats})")
    for col in ("what", "measured", "vs baseline", "target"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


if __name__ == "__main__":
    main()
