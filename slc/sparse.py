"""Sparse labels: the top-k entries of a large-vocabulary distribution plus the mass of the rest.

A token-level teacher label over V words is stored as ``k`` indices, their log-probabilities
(normalised over the whole vocabulary, largest first) and the log of the mass outside them (the
tail). ``collapse`` turns that into a (k+1)-class distribution, which is what a value codec
compresses: with exact indices and a fixed tail model, KL(teacher || decoded) over the whole
vocabulary equals the KL of the collapsed distributions plus a term the codec cannot change.
``expand`` spreads the tail back over the other words, uniformly or in proportion to a prior.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TAILS = ("uniform", "prior")


@dataclass
class SparseLabels:
    indices: np.ndarray  # (n, k) int64, most probable first
    logp: np.ndarray  # (n, k) float32 log-probabilities of those words
    tail: np.ndarray  # (n,) float32 log of the mass outside them (-inf: none)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def k(self) -> int:
        return self.indices.shape[1]


@torch.no_grad()
def select_topk(logp: np.ndarray | torch.Tensor, k: int) -> SparseLabels:
    """The k most probable words of each row of ``logp`` (log-probabilities, (n, V)) and the tail mass."""
    x = torch.as_tensor(logp, dtype=torch.float32)
    vals, idx = torch.topk(x, k, dim=1, largest=True, sorted=True)
    rest = x.scatter(1, idx, float("-inf")).logsumexp(1)  # exact, unlike log(1 - sum): no cancellation
    return SparseLabels(idx.numpy(), vals.numpy(), rest.numpy())


def collapse(s: SparseLabels) -> np.ndarray:
    """(n, k+1) log-probabilities: the k stored words, then the tail as one class."""
    return np.concatenate([s.logp, s.tail[:, None]], axis=1).astype(np.float32)


def uncollapse(indices: np.ndarray, collapsed_logp: np.ndarray) -> SparseLabels:
    """Inverse of :func:`collapse` for decoded values (renormalised: a codec's output need not sum to 1)."""
    lp = torch.log_softmax(torch.as_tensor(collapsed_logp, dtype=torch.float32), dim=1).numpy()
    return SparseLabels(indices, lp[:, :-1], lp[:, -1])


@torch.no_grad()
def expand(s: SparseLabels, vocab: int, tail: str = "uniform", prior_logp: np.ndarray | None = None) -> np.ndarray:
    """Dense (n, V) log-probabilities: the stored words, and the tail spread over the others.

    ``uniform`` gives every other word the same share; ``prior`` shares in proportion to
    ``prior_logp`` (a (V,) log-distribution, e.g. the teacher's mean), renormalised over the words
    each row does not store.
    """
    n, k = s.indices.shape
    idx = torch.as_tensor(s.indices, dtype=torch.int64)
    tail_lp = torch.as_tensor(s.tail, dtype=torch.float32)[:, None]
    if tail == "uniform":
        out = (tail_lp - np.log(vocab - k)).expand(n, vocab).clone()
    elif tail == "prior":
        prior = torch.as_tensor(prior_logp, dtype=torch.float32)
        prior = prior - prior.logsumexp(0)
        stored = prior[idx].logsumexp(1, keepdim=True)  # prior mass of the stored words, per row
        rest = torch.log1p(-stored.exp().clamp(max=1 - 1e-7))
        out = prior[None, :] + (tail_lp - rest)
    else:
        raise ValueError(f"expected a tail in {TAILS}, got {tail!r}")
    out.scatter_(1, idx, torch.as_tensor(s.logp, dtype=torch.float32))
    return out.numpy()


@torch.no_grad()
def kl_rows(p_logp: np.ndarray, q_logp: np.ndarray) -> np.ndarray:
    """KL(p || q) per row for dense log-probabilities (0 log 0 = 0)."""
    p = torch.as_tensor(p_logp, dtype=torch.float32)
    q = torch.as_tensor(q_logp, dtype=torch.float32)
    pe = p.exp()
    terms = torch.where(pe > 0, pe * (p - q), torch.zeros(()))
    return terms.sum(1).numpy()


__all__ = ["SparseLabels", "TAILS", "select_topk", "collapse", "uncollapse", "expand", "kl_rows"]
