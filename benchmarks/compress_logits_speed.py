"""``compress`` from dense logits at V = 50k against the machine's exp-bound limit (issue 20, item 4).

The limit is measured in the same run: one pass that takes each row's maximum and a float32 sum of
``exp2`` over every logit, 32 rows at a time in a reused buffer (the least any exact normaliser does).
Next to it: plain torch (``torch.topk`` + ``logsumexp``), slc's selection (block top k + the same
``exp2`` normaliser) and the whole per-chunk work of ``slc compress`` once fitted (the input check,
selection, ``topk-vq`` encode, zstd), as 0.10 did it (a separate NaN/inf pass) and as now (the check
read off the selection). Speed does not depend on what the distributions mean, so the logits are Zipf-shaped
synthetic ones (bench_tokens.zipf_logits). Medians of ``--repeats`` runs, interleaved.

    python benchmarks/compress_logits_speed.py [--vocab 50257] [--tokens 4096] [--k 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import zstandard
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokens import zipf_logits  # noqa: E402
from timing import timed  # noqa: E402
from slc.codecs.labels import check_block, to_logp  # noqa: E402
from slc.compression import check_selected  # noqa: E402
from slc.codecs.sparse import LOG2E, LSE_ROWS, select_topk  # noqa: E402
from slc.codecs.topkvq import TopKVQCodec  # noqa: E402


def exp_limit(x: torch.Tensor) -> None:
    """Row max and a float32 sum of exp2 over every logit, a few rows at a time in cache."""
    buf = torch.empty(LSE_ROWS, x.shape[1])
    for r in range(0, len(x), LSE_ROWS):
        b = x[r:r + LSE_ROWS]
        m = b.amax(1, keepdim=True)
        torch.add(m * -LOG2E, b, alpha=LOG2E, out=buf[:len(b)]).exp2_().sum(1)


def checked(s, raw):
    check_selected(s, raw, 0)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=2048, help="rows per chunk (slc's default at V = 50k)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logits = zipf_logits(a.tokens, a.vocab)
    x = torch.from_numpy(logits)
    params = TopKVQCodec.ladder(a.vocab, {"k": a.k})[0]
    sample = TopKVQCodec.reduce_sample([to_logp(logits[:2048], "logits", 1.0)], a.vocab, params)
    codec = TopKVQCodec.fit(sample, a.vocab, params)
    z = zstandard.ZstdCompressor(level=codec.zstd_level)
    chunks = [slice(s, min(s + a.chunk, a.tokens)) for s in range(0, a.tokens, a.chunk)]
    steps = {
        "exp-bound limit: row max + float32 sum of exp2 (baseline)": lambda: exp_limit(x),
        "plain torch: torch.topk + logsumexp": lambda: [(torch.topk(x[c], a.k, 1), x[c].logsumexp(1)) for c in chunks],
        "slc selection (block top k + exp2 normaliser)":
            lambda: [select_topk(x[c], a.k, normalised=False) for c in chunks],
        "slc compress per chunk, 0.10 (check pass + selection + topk-vq encode + zstd)":
            lambda: [(check_block(logits[c], "logits", 0, True),
                      z.compress(codec.encode_sparse(codec.select(logits[c], "logits", 1.0)))) for c in chunks],
        "slc compress per chunk (selection, checked from its top k + topk-vq encode + zstd)":
            lambda: [z.compress(codec.encode_sparse(checked(codec.select(logits[c], "logits", 1.0), logits[c])))
                     for c in chunks],
    }
    times = timed(steps, a.repeats)
    rates = {name: a.tokens / statistics.median(ts) for name, ts in times.items()}
    base = next(iter(rates.values()))
    table = Table(title=f"compress from dense logits: V={a.vocab:,}, k={a.k}, {a.tokens:,} tokens, "
                        f"{a.threads} threads, median of {a.repeats}")
    table.add_column("step")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs the limit", justify="right")
    for name, r in rates.items():
        table.add_row(name, f"{r:,.0f}", f"{r / base:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
