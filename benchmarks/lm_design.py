"""WIP (issue 7): which token-level design wins at equal bytes on the real trigram labels.

Fits on the first 80% of the tokens from ``benchmarks/lm_labels.py``, scores the rest: KL(teacher ||
reconstruction) over the whole 72,547-word vocabulary, bytes per token, top-20 recall, for top-k in
bf16 with int32 indices (the issue's reference), rank-coded zstd indices, a uniform or prior tail,
and VQAE-coded values of the collapsed (k+1)-class distribution. Bytes do not include the prior
(2 bytes x V once: 7 B/token at 20k tokens). Writes examples/results/lm_design.json.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np, torch, zstandard
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from slc.codecs.sparse import select_topk, collapse, uncollapse, expand, kl_rows, SparseLabels
from slc.codecs.vqae import FitConfig
from slc.codecs.vqae import VQAECodec
from benchmarks.lm_labels import CACHE

torch.set_num_threads(2)
lp_all = np.load(CACHE / "logp.npy", mmap_mode="r")
N, V = lp_all.shape
NFIT = int(N * 0.8)
EV = slice(NFIT, N)
KMAX = 256
t0 = time.time()
def topk_blocks(sl, k):
    out = []
    for s in range(sl.start, sl.stop, 1024):
        out.append(select_topk(np.asarray(lp_all[s:min(s + 1024, sl.stop)]), k))
    return SparseLabels(np.concatenate([o.indices for o in out]), np.concatenate([o.logp for o in out]),
                        np.concatenate([o.tail for o in out]))
fit_sp = topk_blocks(slice(0, NFIT), KMAX)
ev_sp = topk_blocks(EV, KMAX)
print("topk", time.time() - t0, flush=True)
# prior: mean teacher distribution over the fit rows
acc = np.zeros(V, np.float64)
for s in range(0, NFIT, 1024):
    acc += np.exp(np.asarray(lp_all[s:min(s + 1024, NFIT)], np.float64)).sum(0)
prior = np.log(acc / acc.sum() + 1e-30).astype(np.float32)
# the vocabulary by frequency of appearing in the fit top-k
def sub(sp, k):
    return SparseLabels(sp.indices[:, :k], sp.logp[:, :k],
                        np.logaddexp(sp.tail, np.logaddexp.reduce(sp.logp[:, k:], axis=1)) if k < sp.k else sp.tail)

def kl_of(sp_rec, tail):
    kls = []
    for s in range(0, len(sp_rec), 512):
        rows = slice(s, min(s + 512, len(sp_rec)))
        q = expand(SparseLabels(sp_rec.indices[rows], sp_rec.logp[rows], sp_rec.tail[rows]), V, tail, prior)
        kls.append(kl_rows(np.asarray(lp_all[NFIT + rows.start:NFIT + rows.stop]), q))
    return float(np.concatenate(kls).mean())

def recall(sp_rec, k=20):
    true = ev_sp.indices[:, :k]
    rec = sp_rec.indices[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(true, rec)]))

freq = np.bincount(fit_sp.indices[:, :64].ravel(), minlength=V)
order = np.argsort(-freq, kind="stable")
rank = np.empty(V, np.int64); rank[order] = np.arange(V)
cctx = zstandard.ZstdCompressor(level=19)

def idx_bytes(idx, mode):
    n, k = idx.shape
    if mode == "int32":
        return 4.0 * k
    if mode == "packed17":
        return k * 17 / 8
    r = (rank[idx] if mode == "rank" else idx).astype("<u4")  # byte planes, zstd per 256-token chunk
    total = 0
    for s in range(0, n, 256):
        b = r[s:s + 256]
        planes = np.stack([(b >> (8 * j)) & 0xFF for j in range(3)]).astype(np.uint8)
        total += len(cctx.compress(planes.tobytes()))
    return total / n

rows = []
def add(name, k, bpt, kl, rec):
    rows.append(dict(name=name, k=k, bytes=bpt, ratio=2 * V / bpt, kl=kl, recall=rec))
    print(json.dumps(rows[-1]), flush=True)

for k in (8, 16, 20, 32, 64, 128):
    ev = sub(ev_sp, k)
    rk = idx_bytes(ev.indices, "rank")
    print("raw-id byte planes zstd bytes/token", k, idx_bytes(ev.indices, "raw"), flush=True)
    # bf16 values (the reference) vs exact
    bf = torch.tensor(ev.logp).exp().to(torch.bfloat16).float()
    bf_sp = SparseLabels(ev.indices, torch.log(bf).numpy(), np.log(np.clip(1 - bf.sum(1).numpy(), 1e-12, None)).astype(np.float32))
    add("topk bf16 + int32 idx, uniform tail", k, 6 * k, kl_of(bf_sp, "uniform"), recall(ev))
    add("topk bf16 + rank-zstd idx, prior tail", k, 2 * k + rk, kl_of(bf_sp, "prior"), recall(ev))
    add("topk exact + rank-zstd idx, uniform", k, float("nan"), kl_of(ev, "uniform"), recall(ev))
    add("topk exact, prior tail", k, float("nan"), kl_of(ev, "prior"), recall(ev))
    print("rank-zstd idx bytes/token", k, rk, "packed17", k * 17 / 8, flush=True)
    # VQAE of the collapsed (k+1) distribution
    fit_c = collapse(sub(fit_sp, k))
    for m, kk in ((max(1, k // 8), 256), (max(1, k // 4), 256), (max(2, k // 2), 1024)):
        dc = max(1, -(-min(k + 1, 40) // m))
        codec = VQAECodec.fit(fit_c, kk, dc, dc * m, FitConfig(steps=400))
        dec, kind = codec.decode(codec.encode(collapse(ev)), len(ev))
        rec = uncollapse(ev.indices, dec if kind == "logits" else np.log(np.clip(dec, 1e-30, None)))
        vb = m * np.log2(kk) / 8
        tens = sum(a.nbytes for a in codec.tensors().values()) / 2 / N  # fp16 tensors amortised over N tokens
        add(f"VQAE m={m} k={kk} dc={dc} + rank idx, prior", k, rk + vb + tens, kl_of(rec, "prior"), recall(ev))
json.dump(rows, open(Path(__file__).resolve().parent.parent / "examples" / "results" / "lm_design.json", "w"), indent=1)
