"""Knowledge-distillation loss on sparse token labels, for your own training loop.

A stored label is the teacher's top-k words (``indices``), their log-probabilities over the whole
vocabulary (``logp``) and the log of the mass outside them (``tail``), as ``slc.sparse.SparseLabels``
or ``SlcFile.sparse`` give them. :func:`kd_loss` is the forward KL(teacher || student):

- ``mode="collapsed"``: the KL of the (k+1)-class distributions (the k words, then everything else
  as one class); the student's tail is its mass outside the stored words.
- ``mode="dense"``: the teacher's tail spread over the other words as ``slc.sparse.expand`` does
  (``tail``: uniformly, in proportion to ``prior_logp``, or ``capped``), and the KL over the whole
  vocabulary. ``uniform`` and ``prior`` are computed in closed form, without building the (n, V)
  teacher; ``capped`` builds it (float64, a few rows at a time).

The teacher is used as stored (at the file's temperature); ``temperature`` only softens the student.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from slc.codecs.sparse import TAILS, capped_tail

MODES = ("collapsed", "dense")
REDUCTIONS = ("mean", "sum", "none")


def _check(logits: Tensor, indices: Tensor, logp: Tensor, tail: Tensor, prior_logp: Tensor | None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"expected student logits of shape (n, V), got {tuple(logits.shape)}")
    n, V = logits.shape
    if indices.dim() != 2 or indices.shape[0] != n:
        raise ValueError(f"expected indices of shape ({n}, k), got {tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"expected integer indices, got {indices.dtype}")
    if tuple(logp.shape) != tuple(indices.shape):
        raise ValueError(f"expected logp of shape {tuple(indices.shape)} like the indices, got {tuple(logp.shape)}")
    if tuple(tail.shape) != (n,):
        raise ValueError(f"expected tail of shape ({n},), got {tuple(tail.shape)}")
    if indices.shape[1] > V:
        raise ValueError(f"expected k <= V = {V} stored words per token, got k = {indices.shape[1]}")
    if indices.numel():
        hi, lo = int(indices.max()), int(indices.min())
        if hi >= V:
            raise ValueError(f"vocabulary mismatch: labels index word {hi} but the student has {V} words")
        if lo < 0:
            raise ValueError(f"expected word indices >= 0, got {lo}")
    if prior_logp is not None and tuple(prior_logp.shape) != (V,):
        raise ValueError(f"expected prior_logp of shape ({V},), got {tuple(prior_logp.shape)}")


def _tail_dense(q: Tensor, idx: Tensor, q_s: Tensor, tail: Tensor, prior_logp: Tensor | None) -> Tensor:
    """sum over unstored words j of t_j (log t_j - q_j), where log t_j = a_j + c (a_j: prior, c: per row)."""
    V, k = q.shape[1], idx.shape[1]
    if k == V:
        return torch.zeros_like(tail)
    if bool(torch.isneginf(q_s).any()):  # sums over all words minus the stored ones would be -inf - -inf
        q, q_s = q.scatter(1, idx, 0.0), torch.zeros_like(q_s)
    if prior_logp is None:  # a_j = 0: every unstored word gets tail / (V - k)
        c = tail - math.log(V - k)
        mass, ent, qsum = torch.full_like(tail, V - k), torch.zeros_like(tail), q.sum(1) - q_s.sum(1)
    else:
        a = prior_logp.to(q) - prior_logp.to(q).logsumexp(0)
        pi = a.exp()
        stored = a[idx].logsumexp(1)
        rest = torch.log1p(-stored.exp().clamp(max=1 - 1e-7))  # as slc.sparse.expand
        c, mass = tail - rest, (-torch.expm1(stored)).clamp_min(0)  # unstored prior mass
        ent = torch.where(pi > 0, pi * a, 0).sum() - torch.where(pi[idx] > 0, pi[idx] * a[idx], 0).sum(1)
        pos = pi > 0
        qpi = q @ pi if bool(pos.all()) else q[:, pos] @ pi[pos]  # 0 * -inf = 0 for words the prior rules out
        qsum = qpi - (pi[idx] * q_s).sum(1)
    out = c.exp() * (ent + c * mass - qsum)
    return torch.where(tail > -math.inf, out, 0)


def _tail_capped(q: Tensor, idx: Tensor, lp: Tensor, tail: Tensor, prior_logp: Tensor) -> Tensor:
    """sum over unstored words j of t_j (log t_j - q_j) for the ``capped`` tail (t built explicitly)."""
    with torch.no_grad():
        t = capped_tail(idx, lp, tail, prior_logp)
        t_log = torch.where(t > 0, t.log(), 0.0)
    return (t * t_log).sum(1).to(q) - (t.to(q) * torch.where(t > 0, q, 0)).sum(1)


def kd_loss(student_logits: Tensor, indices: Tensor, logp: Tensor, tail: Tensor, *, temperature: float = 1.0,
            mode: str = "collapsed", prior_logp: Tensor | None = None, tail_mode: str | None = None,
            reduction: str = "mean", scale_t2: bool = False) -> Tensor:
    """KL(teacher || student) per token from sparse labels; ``reduction`` "mean" (over tokens), "sum" or "none".

    ``student_logits`` (n, V); ``indices`` (n, k) word ids; ``logp`` (n, k) their log-probabilities;
    ``tail`` (n,) log of the remaining mass (-inf: none). The student is ``log_softmax(logits / T)``;
    ``scale_t2`` multiplies by T^2 (Hinton et al.). A student with -inf where the teacher has mass
    gets an infinite loss; -inf elsewhere is fine. ``tail_mode`` (dense mode): ``"uniform"``, ``"prior"`` or
    ``"capped"`` (both need ``prior_logp``; a file's ``codec.tail`` and ``codec.prior_logp``); by default
    ``"prior"`` when ``prior_logp`` is given, else ``"uniform"``.
    """
    if mode not in MODES:
        raise ValueError(f"expected mode in {MODES}, got {mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"expected reduction in {REDUCTIONS}, got {reduction!r}")
    if not temperature > 0:
        raise ValueError(f"expected temperature > 0, got {temperature}")
    prior_logp = None if prior_logp is None else torch.as_tensor(prior_logp)
    tail_mode = tail_mode or ("uniform" if prior_logp is None else "prior")
    if tail_mode not in TAILS:
        raise ValueError(f"expected tail_mode in {TAILS}, got {tail_mode!r}")
    if tail_mode != "uniform" and prior_logp is None:
        raise ValueError(f"expected prior_logp with tail_mode={tail_mode!r}, got none")
    _check(student_logits, indices, logp, tail, prior_logp)
    q = F.log_softmax(student_logits.float() / temperature, dim=1)
    idx = indices.long().to(q.device)
    lp, tl = logp.to(q), tail.to(q)
    q_s = q.gather(1, idx)
    p = lp.exp()
    loss = torch.where(p > 0, p * lp, 0).sum(1) - torch.where(p > 0, p * q_s, 0).sum(1)
    if mode == "dense" and tail_mode == "capped":
        loss = loss + _tail_capped(q, idx, lp, tl, prior_logp.to(q))
    elif mode == "dense":
        loss = loss + _tail_dense(q, idx, q_s, tl, None if tail_mode == "uniform" else prior_logp.to(q))
    else:
        # the student's tail: log(1 - its stored mass) where that mass is <= 1/2 (no cancellation), else the
        # log-sum-exp of its other words (rows without a teacher tail skipped: all -inf has NaN gradients)
        s = q_s.exp().sum(1)
        easy = s <= 0.5
        q_tail = torch.log1p(-torch.where(easy, s, 0))
        rows = torch.nonzero(~easy & (tl > -math.inf)).reshape(-1)
        if len(rows):
            q_tail = q_tail.index_put((rows,), q[rows].scatter(1, idx[rows], -math.inf).logsumexp(1))
        loss = loss + torch.where(tl > -math.inf, tl.exp() * (tl - q_tail), 0)
    if scale_t2:
        loss = loss * temperature ** 2
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


__all__ = ["kd_loss", "MODES"]
