"""Speed of dense-mode ``kd_loss`` per training step: the ``capped`` tail in closed form against the ``prior`` tail
(the baseline) and the old ``capped`` path that built the (n, V) float64 teacher with ``capped_tail``.

    python benchmarks/kd_loss_speed.py [--vocab 5000,50257,72547] [-k 64] [--batch 256] [--repeats 5]

Student and step as ``examples/lm_student.py``: a neural trigram LM (two previous words embedded, 128-d,
an MLP 256-512-128, logits tied to the embeddings), Adam, a batch of 256 tokens; one step is forward +
``kd_loss(mode="dense")`` + backward + ``opt.step()``. "loss only" is ``kd_loss`` forward + backward on
(n, V) leaf logits. Labels: top-k of real teacher rows where there are some (V = 5,000: the KJV trigram
teacher's rows over its 5,000 most frequent words, ``$SLC_CACHE/real_labels/kjv-trigram-5000``, from
``benchmarks/kjv_slice_labels.py``), else Zipf-shaped logits with per-token noise (as tests/test_tokens.py);
the prior is the mean of 4,096 teacher rows mixed with 1% uniform, as ``topk-vq`` stores it. Medians over
--repeats steps after one warm-up, the three tails interleaved per repeat (the ratios are paired); ``R``:
how many words in prior order the closed form gathers (the most capped in a row of the batch). As in the
example, glibc keeps freed buffers (``mallopt``), else every step page-faults its (n, V) tensors in again.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import slc.lm.distill as distill
from slc.codecs.sparse import capped_tail, mixed_prior, select_topk

REAL = Path(os.environ.get("SLC_CACHE", Path.home() / ".cache" / "slc")) / "real_labels" / "kjv-trigram-5000"


def old_tail_capped(q: torch.Tensor, idx: torch.Tensor, lp: torch.Tensor, tail: torch.Tensor,
                    prior_logp: torch.Tensor) -> torch.Tensor:
    """The path before the closed form: the (n, V) float64 teacher tail from ``capped_tail``."""
    with torch.no_grad():
        t = capped_tail(idx, lp, tail, prior_logp)
        t_log = torch.where(t > 0, t.log(), 0.0)
    return (t * t_log).sum(1).to(q) - (t.to(q) * torch.where(t > 0, q, 0)).sum(1)


class TrigramLM(torch.nn.Module):
    """The student of examples/lm_student.py."""

    def __init__(self, V: int, dim: int = 128, hidden: int = 512):
        super().__init__()
        self.V = V
        self.emb = torch.nn.Embedding(V + 1, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, dim), torch.nn.LayerNorm(dim))
        self.bias = torch.nn.Parameter(torch.zeros(V))

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return F.linear(self.mlp(self.emb(ctx).flatten(1)), self.emb.weight[:self.V], self.bias)


def teacher_rows(V: int, n: int, seed: int) -> tuple[np.ndarray, str]:
    """(n, V) teacher log-probabilities: real KJV rows for V = 5,000 when cached, else Zipf + noise."""
    if V == 5000 and (REAL / "logits.npy").exists():
        x = np.load(REAL / "logits.npy", mmap_mode="r").reshape(-1, V)
        start = np.random.default_rng(seed).integers(0, len(x) - n)
        return torch.log_softmax(torch.from_numpy(np.array(x[start:start + n], np.float32)), 1).numpy(), "KJV"
    g = np.random.default_rng(seed)
    base = -1.1 * np.log(np.arange(1, V + 1))
    x = (base + g.normal(size=(n, V)) * 1.5).astype(np.float32)
    return torch.log_softmax(torch.from_numpy(x), 1).numpy(), "Zipf"


def setup(V: int, k: int, n: int) -> dict:
    """Labels of one batch, the prior, the student and its batch of contexts."""
    fit, src = teacher_rows(V, 4096, 1)
    prior = mixed_prior(np.exp(fit.astype(np.float64)).mean(0), 0.99)
    rows, _ = teacher_rows(V, n, 2)
    s = select_topk(rows, k)
    torch.manual_seed(0)
    model = TrigramLM(V)
    return {"labels": [torch.from_numpy(a) for a in (s.indices, s.logp, s.tail)], "prior": torch.from_numpy(prior),
            "model": model, "opt": torch.optim.Adam(model.parameters(), lr=1e-3),
            "ctx": torch.randint(0, V + 1, (n, 2), generator=torch.Generator().manual_seed(3)), "src": src}


def step(d: dict, tail: str, loss_only: bool) -> float:
    """Seconds for one step (train step, or kd_loss forward + backward on leaf logits)."""
    idx, lp, tl = d["labels"]
    if loss_only:
        logits = d.setdefault("leaf", d["model"](d["ctx"]).detach().requires_grad_())
        t0 = time.perf_counter()
        distill.kd_loss(logits, idx, lp, tl, mode="dense", prior_logp=d["prior"], tail_mode=tail).backward()
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = distill.kd_loss(d["model"](d["ctx"]), idx, lp, tl, mode="dense", prior_logp=d["prior"], tail_mode=tail)
    d["opt"].zero_grad(set_to_none=True)
    loss.backward()
    d["opt"].step()
    return time.perf_counter() - t0


def measure(d: dict, repeats: int, loss_only: bool) -> dict[str, float]:
    """Median seconds per step of each path, interleaved per repeat after one warm-up each."""
    new = distill._tail_capped
    paths = {"prior": ("prior", new), "capped": ("capped", new), "capped (old)": ("capped", old_tail_capped)}
    times: dict[str, list[float]] = {p: [] for p in paths}
    try:
        for r in range(repeats + 1):
            for name, (tail, fn) in paths.items():
                distill._tail_capped = fn
                dt = step(d, tail, loss_only)
                if r:
                    times[name].append(dt)
    finally:
        distill._tail_capped = new
    return {p: statistics.median(v) for p, v in times.items()}


def block_width(d: dict) -> int:
    idx, lp, tl = d["labels"]
    co = distill._capped_coefficients(idx.long(), lp, tl, d["prior"])
    return co["w"].shape[1]


def check(d: dict) -> float:
    """Largest relative difference of the per-token losses, closed form vs the old path (same float32 logits)."""
    idx, lp, tl = d["labels"]
    with torch.no_grad():
        q = torch.log_softmax(d["model"](d["ctx"]), 1)
        a = distill._tail_capped(q, idx.long(), lp, tl, d["prior"])
        b = old_tail_capped(q, idx.long(), lp, tl, d["prior"])
    return float(((a - b).abs() / b.abs().clamp_min(1e-6)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", default="5000,50257,72547")
    ap.add_argument("-k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:  # as examples/lm_student.py trains (Linux/glibc only)
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"dense-mode kd_loss per step: batch {a.batch}, k = {a.k}, {a.threads} threads, medians of "
                    f"{a.repeats} (ms)", title_justify="left")
    for c in ("V", "labels", "step", "R", "prior", "capped", "capped (old)", "capped / prior", "old / prior",
              "max rel diff"):
        t.add_column(c, justify="left" if c in ("labels", "step") else "right")
    for V in (int(v) for v in a.vocab.split(",")):
        d = setup(V, a.k, a.batch)
        R, diff = block_width(d), check(d)
        for loss_only in (False, True):
            m = measure(d, a.repeats, loss_only)
            t.add_row(f"{V:,}", d["src"], "loss only" if loss_only else "train step", f"{R:,}",
                      *(f"{1e3 * m[p]:.1f}" for p in ("prior", "capped", "capped (old)")),
                      f"{m['capped'] / m['prior']:.2f}x", f"{m['capped (old)'] / m['prior']:.2f}x",
                      f"{diff:.1e}" if not math.isnan(diff) else "nan")
    Console(width=None if os.isatty(1) else 160).print(t)


if __name__ == "__main__":
    main()
