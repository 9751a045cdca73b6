"""Knowledge-distillation loss on sparse token labels, for your own training loop.

A stored label is the teacher's top-k words (``indices``), their log-probabilities over the whole
vocabulary (``logp``) and the log of the mass outside them (``tail``), as ``slc.sparse.SparseLabels``
or ``SlcFile.sparse`` give them. :func:`kd_loss` is the forward KL(teacher || student):

- ``mode="collapsed"``: the KL of the (k+1)-class distributions (the k words, then everything else
  as one class); the student's tail is its mass outside the stored words.
- ``mode="dense"``: the teacher's tail spread over the other words as ``slc.sparse.expand`` does
  (``tail``: uniformly, in proportion to ``prior_logp``, or ``capped``), and the KL over the whole
  vocabulary, in closed form, without building the (n, V) teacher. For ``capped`` the water level
  of each row is found by bisection over the words in prior order; the words capped in some row are
  gathered, the others enter through one product with the prior, as for ``prior``.

The teacher is used as stored (at the file's temperature); ``temperature`` only softens the student.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from slc.codecs.sparse import TAILS

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


_PRIOR_CACHE: list[tuple[Tensor, dict]] = []  # the last prior and its sorted form (a stable sort: ~20 ms at V = 72k)


def _prior_order(prior_logp: Tensor) -> dict:
    """The normalised prior (float64) sorted descending as ``capped_tail`` sorts it, each word's position in
    that order, and the suffix sums of the sorted prior and of prior * log prior (length V + 1)."""
    for key, val in _PRIOR_CACHE:
        if key.device == prior_logp.device and key.dtype == prior_logp.dtype and torch.equal(key, prior_logp):
            return val
    lpr = prior_logp.double()
    prior = (lpr - lpr.logsumexp(0)).exp()
    order = torch.argsort(prior, descending=True, stable=True)  # ties as capped_tail breaks them
    ps, rank = prior[order], torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)
    zero = ps.new_zeros(1)
    val = {"prior": prior, "order": order, "ps": ps, "rank": rank, "plogp": torch.xlogy(ps, ps),
           "suffix": torch.cat([ps.flip(0).cumsum(0).flip(0), zero])}
    val["ent_suffix"] = torch.cat([val["plogp"].flip(0).cumsum(0).flip(0), zero])
    _PRIOR_CACHE[:] = [(prior_logp.detach().clone(), val)]
    return val


def _bisect_level(pr: dict, stored_suffix: Tensor, gaps: Tensor, c: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """m and x of :func:`_water_level` by bisection over r, the number of capped words (O(log V) steps)."""
    ps, suffix, (n, k) = pr["ps"], pr["suffix"], gaps.shape
    V = ps.shape[0]

    def fits(r: Tensor) -> tuple[Tensor, Tensor]:  # the r-th unstored word's position; whether it fits
        before = torch.searchsorted(gaps, r[:, None], right=True)
        x = r + before[:, 0]
        after = suffix[x] - stored_suffix.gather(1, before)[:, 0]
        return x, ps[x.clamp(max=V - 1)] * (t - c * r) <= c * after

    lo, hi = torch.zeros(n, dtype=torch.long, device=gaps.device), torch.full((n,), V - k, device=gaps.device)
    for _ in range((V - k).bit_length()):
        mid = (lo + hi) // 2
        ok = fits(mid.clamp(max=V - k - 1))[1] & (lo < hi)
        hi, lo = torch.where(ok, mid, hi), torch.where(ok | (lo == hi), lo, mid + 1)
    return lo, fits(lo)[0]


def _water_level(pr: dict, pos: Tensor, c: Tensor, t: Tensor, window: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """The capped tail's water level per row: m (unstored words at the cap), x (the position in prior order of
    the first unstored word below it; V if none) and the prior mass of the unstored words from x on.

    ``pr`` from :func:`_prior_order`; ``pos`` (n, k) the stored words' positions in prior order, ascending;
    ``c``, ``t`` (n,) the cap and the tail mass. Capping the r-th unstored word fits when lam * ps <= c with
    lam = (t - c r) / (their mass from it on); once one fits, all later ones do (lam then only shrinks, the
    prior too), so the first that fits is the level, as ``capped_tail`` finds it. The first k + ``window``
    positions are scanned at once; rows whose level lies further are bisected.
    """
    (n, k), ps, suffix = pos.shape, pr["ps"], pr["suffix"]
    V, dev = ps.shape[0], pos.device
    stored_suffix = torch.cat([ps[pos].flip(1).cumsum(1).flip(1), ps.new_zeros(n, 1)], 1)  # over the stored words
    L = min(V, k + window)
    free = torch.ones(n, L + 1, dtype=torch.bool, device=dev).scatter_(1, pos.clamp(max=L), False)[:, :L]
    before = free.cumsum(1) - free.long()  # unstored words before each position
    after = suffix[:L] - stored_suffix.gather(1, torch.arange(L, device=dev) - before)
    fits = free & (ps[:L] * (t[:, None] - c[:, None] * before) <= c[:, None] * after)
    x = torch.where(fits.any(1), fits.long().argmax(1), V)
    m = torch.where(x < V, before.gather(1, x.clamp(max=L - 1)[:, None])[:, 0], V - k)
    far = torch.nonzero((x == V) & (t < c * (V - k))).reshape(-1)  # not uniform, but the level is further on
    if len(far):
        gaps = (pos[far] - torch.arange(k, device=dev)).contiguous()  # unstored words before each stored one
        m_far, x_far = _bisect_level(pr, stored_suffix[far], gaps, c[far], t[far])
        m, x = m.index_put((far,), m_far), x.index_put((far,), x_far)
    stored_after = stored_suffix.gather(1, (x - m)[:, None])[:, 0]  # x - m: stored words before x
    return m, x, suffix[x] - stored_after


def _capped_coefficients(idx: Tensor, lp: Tensor, tail: Tensor, prior_logp: Tensor) -> dict:
    """Per-row constants of the ``capped`` tail (float64, no (n, V) arrays): sum t log t (``const``), the
    share ``lam`` of the prior, the uniform share ``u`` of rows spread uniformly, and the weights ``w`` of
    the first R words in prior order (the ones capped in some row)."""
    (n, k), V, dev = idx.shape, prior_logp.shape[0], idx.device
    pr = _prior_order(prior_logp)
    ps, rank = pr["ps"], pr["rank"]
    pos = rank[idx].sort(1).values
    c = lp.double().amin(1).exp() if k else torch.zeros(n, dtype=torch.float64, device=dev)
    t = tail.double().exp()
    m, x, after = _water_level(pr, pos, c, t)
    ps_x = ps[x.clamp(max=V - 1)]
    ok = (m < V - k) & (ps_x > 0) & (t < c * (V - k))  # else spread uniformly, as capped_tail
    after = after.maximum(ps_x)  # >= its first word's mass, whatever the rounding
    lam = torch.where(ok, (t - c * m) / after, 0)
    u = torch.where(ok, 0, t / (V - k))
    ent = pr["ent_suffix"][x] - (pr["plogp"][pos] * (pos >= x[:, None])).sum(1)  # sum of ps log ps from x on
    const = torch.where(ok, m * torch.xlogy(c, c) + torch.xlogy(lam, lam) * after + lam * ent, torch.xlogy(t, u))
    R = int(x[ok].max()) if bool(ok.any()) else 0  # every row's capped words lie before it
    free = torch.ones(n, R + 1, dtype=torch.bool, device=dev).scatter_(1, pos.clamp(max=R), False)[:, :R]
    w = torch.where(torch.arange(R, device=dev) < x[:, None], c[:, None], lam[:, None] * ps[:R])
    # the words past the first R: lam times the prior, through one product with the prior less those R words
    cols = pr["order"][:R]
    return {"const": const, "lam": lam, "u": u, "ok": ok, "w": w * (free & ok[:, None]), "cols": cols,
            "prior": pr["prior"], "prior_rest": pr["prior"].index_fill(0, cols, 0),
            "stored_rest": pr["prior"][idx] * (rank[idx] >= R)}


def _capped_dot(q: Tensor, idx: Tensor, co: dict) -> Tensor:
    """sum over unstored words j of t_j q_j for the ``capped`` tail, from :func:`_capped_coefficients`."""
    q_s = q.gather(1, idx)
    out = co["lam"].to(q) * (q @ co["prior_rest"].to(q) - (co["stored_rest"].to(q) * q_s).sum(1))
    if co["w"].shape[1]:
        out = out + (q[:, co["cols"]] * co["w"].to(q)).sum(1)
    rows = torch.nonzero(co["u"] > 0).reshape(-1)
    if len(rows):
        out = out.index_add(0, rows, co["u"][rows].to(q) * (q[rows].sum(1) - q_s[rows].sum(1)))
    return out


class _CappedDot(torch.autograd.Function):
    """:func:`_capped_dot` with a backward that writes the (n, V) gradient g t once: through autograd, the
    product, the gather and the stored words would each add another (n, V) gradient."""

    @staticmethod
    def forward(ctx, q: Tensor, idx: Tensor, co: dict) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.co, ctx.dtype = co, q.dtype
        return _capped_dot(q, idx, co)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        (idx,), co = ctx.saved_tensors, ctx.co
        g = g.double()
        gl, gu = g * co["lam"], g * co["u"]
        t = torch.outer(gl.to(ctx.dtype), co["prior_rest"].to(ctx.dtype))
        if co["w"].shape[1]:
            t.index_add_(1, co["cols"], (g[:, None] * co["w"]).to(ctx.dtype))
        rows = torch.nonzero(gu != 0).reshape(-1)
        if len(rows):
            t.index_add_(0, rows, gu[rows, None].to(ctx.dtype).expand(len(rows), t.shape[1]))
        t.scatter_add_(1, idx, (-gl[:, None] * co["stored_rest"] - gu[:, None]).to(ctx.dtype))
        return t, None, None


def _tail_capped(q: Tensor, idx: Tensor, lp: Tensor, tail: Tensor, prior_logp: Tensor) -> Tensor:
    """sum over unstored words j of t_j (log t_j - q_j) for the ``capped`` tail, in closed form: the words
    in prior order up to the last one capped in some row gathered, the rest through one product with the prior."""
    V, k = q.shape[1], idx.shape[1]
    if k == V:
        return torch.zeros_like(tail)
    with torch.no_grad():
        co = _capped_coefficients(idx, lp, tail, prior_logp)
    dot = _CappedDot.apply(q, idx, co)
    if not bool(torch.isfinite(dot).all()):  # -inf student words: 0 * -inf in the products; +inf where t_j > 0
        neg = torch.isneginf(q)
        dot = _CappedDot.apply(q.masked_fill(neg, 0.0), idx, co)
        has_t = ((co["prior"] > 0) & co["ok"][:, None]) | (co["u"] > 0)[:, None]
        dot = torch.where((neg & has_t).scatter(1, idx, False).any(1), -math.inf, dot)
    out = co["const"].to(q) - dot
    return torch.where(tail > -math.inf, out, 0)


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
