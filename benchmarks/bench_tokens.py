"""Token-level codec speed (issue 7 targets: compress >= 50k tokens/s from dense logits at V = 50k on
2 cores once fitted; decode >= 200k tokens/s to sparse top-k).

Speed does not depend on what the distributions mean, so the logits are Zipf-shaped synthetic
ones (quality claims use the real trigram labels: benchmarks/lm_tokens.py). Each figure is the
median of ``--repeats`` runs over the same block, next to two baselines measured in the same run:
one read pass over the logits (``amax``: the memory-bandwidth floor of anything that reads them),
``torch.topk`` alone, and the selection done the plain way (``torch.topk`` + ``logsumexp``).

    python benchmarks/bench_tokens.py [--vocab 50257] [--tokens 8192] [--k 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from slc.codecs.topkvq import TopKVQCodec  # noqa: E402
from slc.codecs.labels import to_logp  # noqa: E402
from slc.codecs.sparse import select_topk  # noqa: E402


def zipf_logits(tokens: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((tokens, vocab), np.float32)
    base = (-1.1 * np.log(np.arange(1, vocab + 1))).astype(np.float32)
    for s in range(0, tokens, 1024):  # row blocks: no (tokens, vocab) float64 temporary
        n = min(1024, tokens - s)
        out[s:s + n] = base + rng.standard_normal((n, vocab), np.float32) * 1.5
    return out


def rate(fn, rows: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return rows / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    logits = zipf_logits(a.tokens, a.vocab)
    logp = to_logp(logits, "logits", 1.0)
    params = TopKVQCodec.ladder(a.vocab, {"k": a.k})[0]
    codec = TopKVQCodec.fit(TopKVQCodec.reduce_sample([logp[:4096]], a.vocab, params), a.vocab, params)
    z = zstandard.ZstdCompressor(level=codec.zstd_level)
    chunks = [slice(s, min(s + a.chunk, a.tokens)) for s in range(0, a.tokens, a.chunk)]

    def encode(x, from_logits: bool) -> list[bytes]:  # as slc.compress does it, per chunk
        out = []
        for c in chunks:
            s = codec.select(x[c], "logits", 1.0) if from_logits else select_topk(x[c], a.k)
            out.append(z.compress(codec.encode_sparse(s)))
        return out

    payloads = encode(logp, False)
    dz = zstandard.ZstdDecompressor()

    def decode() -> None:
        for c, p in zip(chunks, payloads):
            codec.decode_sparse(dz.decompress(p), c.stop - c.start)

    n = a.tokens
    t = torch.from_numpy(logits)
    rows = [
        ("one read pass (amax): the floor", rate(lambda: t.amax(1), n, a.repeats)),
        ("torch.exp of the whole block (writes n x V floats)", rate(lambda: torch.exp(t), n, a.repeats)),
        (f"torch.topk k={a.k} alone", rate(lambda: torch.topk(t, a.k, 1), n, a.repeats)),
        ("select from logits, plain torch (topk + logsumexp; slc 0.4.0)",
         rate(lambda: [(torch.topk(t[c], a.k, 1), t[c].logsumexp(1)) for c in chunks], n, a.repeats)),
        ("select from logits, slc (block top k + exp2 normaliser in cache)",
         rate(lambda: [select_topk(t[c], a.k, normalised=False) for c in chunks], n, a.repeats)),
        ("compress from logits (top k + log-sum-exp + encode + zstd)", rate(lambda: encode(logits, True), n, a.repeats)),
        ("compress from log-probs (top k + encode + zstd)", rate(lambda: encode(logp, False), n, a.repeats)),
        ("decode to sparse (zstd + ranks + VQAE)", rate(decode, n, a.repeats)),
    ]
    size = sum(len(p) for p in payloads) / n
    table = Table(title=f"topk-vq speed: V={a.vocab:,}, k={a.k}, {n:,} tokens, {a.threads} threads, "
                        f"{size:.1f} payload B/token, median of {a.repeats}")
    table.add_column("step")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs one read pass", justify="right")
    for name, r in rows:
        table.add_row(name, f"{r:,.0f}", f"{r / rows[0][1]:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
