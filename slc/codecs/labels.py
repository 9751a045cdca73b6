"""Soft labels in and out: validation, and conversion between logits, probabilities and temperatures.

Internally a block of labels is carried as float32 log-probabilities at the stored
temperature ``T``: ``log softmax(z / T)`` for logits ``z``, ``log softmax(log p / T)`` for
probabilities ``p``. Any temperature can be recovered from them (see :func:`retemper`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from slc.codecs.base import Codec, Kind, LogitRows
from slc.codecs.fitting import one_thread
from slc.errors import SlcInputError

PROB_FLOOR = 1e-30  # log of an exact zero probability
SUM_TOL = {np.dtype(np.float16): 2e-2, np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-6}


def check_block(block: np.ndarray, source: Kind, row0: int = 0, neg_inf: bool = False) -> None:
    """Raise ``SlcInputError`` on NaN/inf, negative or unnormalised probabilities.

    ``neg_inf``: logits may be ``-inf`` (an LM's suppressed words), as long as each row has a finite one.
    """
    if block.dtype.kind != "f":
        raise SlcInputError(f"expected floating-point labels, got dtype {block.dtype}")
    finite = np.isfinite(block)
    if not finite.all():
        bad = ~finite & ~np.isneginf(block) if neg_inf and source == "logits" else ~finite
        if bad.any():
            r = int(np.argwhere(bad)[0][0])
            what = "finite labels or -inf" if neg_inf else "finite labels"
            raise SlcInputError(f"expected {what}, got NaN or inf in row {row0 + r}")
        empty = ~finite.any(1)
        if empty.any():
            raise SlcInputError(f"expected at least one finite logit per label, got an all -inf row "
                                f"{row0 + int(np.argmax(empty))}")
    if source == "probs":
        if (block < 0).any():
            r = int(np.argwhere(block < 0)[0][0])
            raise SlcInputError(f"expected non-negative probabilities, got a negative value in row {row0 + r}")
        sums = block.sum(1, dtype=np.float64)
        tol = SUM_TOL.get(block.dtype, 1e-3) + 1e-6 * block.shape[1]
        bad = np.abs(sums - 1) > tol
        if bad.any():
            r = int(np.argmax(bad))
            raise SlcInputError(f"expected probabilities summing to 1, got {sums[r]:.4g} in row {row0 + r} "
                                "(pass `source='logits'` if these are logits)")


def detect_source(block: np.ndarray) -> Kind:
    """Probabilities if every row is non-negative and sums to 1, else logits."""
    if block.size and block.min() >= 0:
        sums = block.sum(1, dtype=np.float64)
        if np.all(np.abs(sums - 1) <= SUM_TOL.get(block.dtype, 1e-3) + 1e-6 * block.shape[1]):
            return "probs"
    return "logits"


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """float32 tensor view of ``a`` (a copy when ``a`` is read-only, e.g. memory-mapped)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def kl_to_decoded(ref_logp: np.ndarray, decoded_probs: np.ndarray) -> torch.Tensor:
    """Per-row ``KL(y || y~)`` of reference log-probabilities and decoded probabilities (clamped at 0)."""
    ref, dec = as_tensor(ref_logp), as_tensor(decoded_probs)
    return (ref.exp() * (ref - dec.clamp_min(1e-30).log())).sum(1).clamp_min(0)


def to_logp(block: np.ndarray, source: Kind, temperature: float) -> np.ndarray:
    """Raw labels ``(n, C)`` -> float32 log-probabilities at ``temperature``."""
    x = as_tensor(block)
    if source == "probs":
        x = x.clamp_min(PROB_FLOOR).log()
    return torch.log_softmax(x / temperature, dim=-1).numpy()


def retemper(labels: np.ndarray, kind: Kind, stored_t: float, out: Kind, t: float | None = None) -> np.ndarray:
    """Decoded labels at ``stored_t`` -> probabilities or logits at temperature ``t``.

    Logits are returned at temperature 1 scale (``softmax(logits / t)`` is the label at ``t``),
    so ``out="logits"`` gives ``stored_t * log y``, the teacher's logits up to a constant.
    """
    t = stored_t if t is None else t
    x = as_tensor(labels)
    if kind == "probs":
        if out == "probs" and t == stored_t:
            return labels
        x = x.clamp_min(PROB_FLOOR).log()
    if out == "logits":
        return (x * stored_t).numpy()
    scale = stored_t / t
    return torch.softmax(x * scale if scale != 1 else x, dim=-1).numpy()


@torch.no_grad()
def rank_fix(labels: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Permute each row's values so that classes ``top[:, 0], top[:, 1], ...`` hold its largest, in that order.

    ``labels``: (n, C) logits or log-probabilities; ``top``: (n, k) distinct class indices. Step i swaps the
    value of ``top[:, i]`` with the largest value among the classes not yet placed; the first is then nudged
    one float up, so the argmax is strict even where decoded values tie. A permutation keeps the label's
    shape (its sorted values); only which class holds which value changes.
    """
    v = as_tensor(labels).clone()
    rank_fix_(v, torch.as_tensor(top, dtype=torch.int64))
    return v.numpy()


@torch.no_grad()
def rank_fix_(v: torch.Tensor, idx: torch.Tensor) -> None:
    """:func:`rank_fix` in place on a float32 tensor ``v`` (n, C), ``idx`` (n, k) int64."""
    placed = torch.zeros(v.shape, dtype=torch.bool) if idx.shape[1] > 1 else None
    up = torch.full((v.shape[0], 1), float("inf"))
    for i in range(idx.shape[1]):
        s = idx[:, i:i + 1]
        w = v if i == 0 else v.masked_fill(placed, -float("inf"))  # nothing is placed before step 0
        c = torch.from_numpy(w.numpy().argmax(1)).unsqueeze(1)  # numpy's argmax is SIMD: 4-10x torch's here
        vs, vc = v.gather(1, s), v.gather(1, c)
        v.scatter_(1, c, vs)
        v.scatter_(1, s, torch.nextafter(vc, up) if i == 0 else vc)
        if placed is not None:
            placed.scatter_(1, s, True)


# Rows decoded and softmaxed at a time: a block's logits (4 KB a row at C=1000) stay in cache between the two.
SOFTMAX_ROWS = 1024
# decode threads by count, kept: new threads for every chunk cost ~0.5 ms (3-4% of a 4,096-label chunk on 2 cores)
_POOLS: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of its parent's threads


@torch.no_grad()
def softmax_rows(fill: LogitRows, n: int, classes: int, scale: float = 1.0, into: np.ndarray | None = None,
                 rows: int = SOFTMAX_ROWS, workers: int | None = None) -> np.ndarray:
    """``softmax(scale * logits)`` of ``n`` rows that ``fill(lo, hi, dst)`` writes block by block, as float32
    ``(n, C)``: into ``into`` if given, each output row written once, with no full-size temporaries.

    ``workers`` (default torch's thread count) threads take a contiguous run of blocks each, on one torch
    thread apiece: on busy cores torch's own threads wait on each other at every op (2-5x slower than one
    thread on 2 shared cores), where independent workers only share the time left. Blocks start at multiples
    of ``rows`` whatever the workers, so the bits do not depend on them (a matmul's may depend on its rows).
    """
    labels = np.empty((n, classes), np.float32) if into is None else into
    if labels.shape != (n, classes) or labels.dtype != np.float32 or not labels.flags.c_contiguous:
        raise ValueError(f"expected a C-contiguous float32 ({n}, {classes}) output, got {labels.dtype}{labels.shape}")
    out = torch.from_numpy(labels)

    @torch.no_grad()  # grad mode is per thread
    def span(lo: int, hi: int) -> None:
        scratch = torch.empty((min(rows, hi - lo), classes))
        for a in range(lo, hi, rows):
            b = min(hi, a + rows)
            x = scratch[:b - a]
            fill(a, b, x)
            if scale != 1:
                x.mul_(scale)
            torch.softmax(x, -1, out=out[a:b])

    blocks = -(-n // rows)
    workers = max(1, min(torch.get_num_threads() if workers is None else workers, blocks))
    cut = [min(n, rows * (blocks * i // workers)) for i in range(workers + 1)]  # whole blocks: the same bits
    with one_thread():
        if workers == 1:
            span(0, n)
            return labels
        pool = _POOLS.get(workers) or _POOLS.setdefault(workers, ThreadPoolExecutor(workers, "slc-decode"))
        for job in [pool.submit(span, a, b) for a, b in zip(cut, cut[1:])]:  # a new thread takes torch's threads
            job.result()  # as they are now: one
    return labels


def decode_probs(codec: Codec, payload: bytes | memoryview, n: int, stored_t: float, t: float | None = None,
                 into: np.ndarray | None = None) -> np.ndarray:
    """Decode ``n`` labels straight to float32 probabilities at ``t`` (default ``stored_t``), into ``into`` if
    given: fused block by block where the codec decodes logits by rows (:meth:`Codec.logit_rows`), else
    ``codec.decode`` then :func:`retemper`."""
    t = stored_t if t is None else t
    fill = codec.logit_rows(payload, n)
    if fill is not None:
        return softmax_rows(fill, n, codec.classes, stored_t / t, into)
    labels, kind = codec.decode(payload, n)
    return written(retemper(labels, kind, stored_t, "probs", t), into)


def written(labels: np.ndarray, into: np.ndarray | None) -> np.ndarray:
    """``labels``, or ``into`` with ``labels`` copied into it (for the functions that take an output array)."""
    if into is None:
        return labels
    into[...] = labels
    return into
