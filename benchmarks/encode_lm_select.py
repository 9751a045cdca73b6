"""``encode-lm``: selecting the top k where the teacher's logits are, against copying them to the host first
(issue 20, item 1).

Both paths take a block of teacher logits on ``--device`` (CUDA when present, else the CPU), make the
float32 log-probabilities there as ``encode-lm`` does, and end with ``(ids, values, tails)`` on the
host: the host path copies the dense (n, V) block over and selects from it (slc before 0.11), the
device path selects where the block is and copies only (n, k) ids and values and (n,) tails. On a CPU
the two differ only by the copy; on a GPU the selection also runs at the accelerator's speed. Synthetic
Zipf-shaped logits (speed does not depend on what they mean). Medians of ``--repeats`` runs, interleaved.

    python benchmarks/encode_lm_select.py [--vocab 50257] [--tokens 4096] [--k 64] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokens import zipf_logits  # noqa: E402
from timing import timed  # noqa: E402
from slc.codecs.sparse import select_topk  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    logits = torch.from_numpy(zipf_logits(a.tokens, a.vocab)).to(dev)

    def host_path():
        logp = torch.log_softmax(logits.float(), -1)
        dense = np.empty((a.tokens, a.vocab), np.float32)  # as iter_logp filled its host buffer
        torch.from_numpy(dense).copy_(logp)
        return select_topk(torch.from_numpy(dense), a.k, normalised=False)

    def device_path():
        s = select_topk(torch.log_softmax(logits.float(), -1), a.k, normalised=False)
        sync(dev)
        return s

    a_, b_ = host_path(), device_path()
    same = np.array_equal(a_.indices, b_.indices) and np.array_equal(a_.logp, b_.logp)
    diff = float(np.abs(a_.logp - b_.logp).max())
    times = timed({"host": host_path, "device": device_path}, a.repeats)  # each path ends synchronised
    rate = {name: a.tokens / statistics.median(ts) for name, ts in times.items()}
    per_token = {"host": 4 * a.vocab, "device": a.k * (8 + 4) + 4}
    table = Table(title=f"encode-lm selection on {dev}: V={a.vocab:,}, k={a.k}, {a.tokens:,} tokens, "
                        f"median of {a.repeats}")
    for col, justify in (("path", "left"), ("tokens/s", "right"), ("vs host path", "right"),
                         ("bytes to the host per token", "right")):
        table.add_column(col, justify=justify)
    table.add_row("dense log-probs copied to the host, selected there (baseline)", f"{rate['host']:,.0f}", "1.00x",
                  f"{per_token['host']:,}")
    table.add_row("selected on the teacher's device (ids, values, tails copied)", f"{rate['device']:,.0f}",
                  f"{rate['device'] / rate['host']:.2f}x", f"{per_token['device']:,}")
    Console().print(table)
    Console().print(f"same words and values as the host path: {same} (max |diff| of values {diff:.2e})")


if __name__ == "__main__":
    main()
