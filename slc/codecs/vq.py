"""Vector quantisation of the label itself (the paper's ablation "Ours w/o AE").

No encoder or decoder: a label (floored log-probabilities, or probabilities) is padded to
``m * dc`` values, cut into ``m = ceil(C / dc)`` segments, and each segment is replaced by the
index of its nearest code in one shared fp16 codebook of ``k`` codes fitted by k-means.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from slc.format.bitpack import bits_for as code_bits, pack_bits, packed_size, unpack_bits
from slc.errors import SlcFormatError, SlcInputError
from slc.codecs.labels import as_tensor
from slc.codecs.fitting import LOG_FLOOR, encoder_input, kmeans, nearest, renormalise
from slc.codecs.base import Codec, param
from slc.codecs.fitting import (check_sample, check_tensors, domain_eps, fp16_round, one_thread, plan_domain_eps,
                      plan_option)
from slc.codecs.quant import lloyd_max

MAX_K = 1 << 16
MAX_FIT_SEGMENTS = 200_000  # k-means points (a seeded subsample of the sample's segments beyond that)
KMEANS_ITERS = 25
PLAN_MAX_BITS = 10
LADDER_DC = (1, 2, 4, 8, 16, 32, 64)  # plus the divisors of C up to 64
LADDER_REF_LABELS = 1 << 20  # labels the ladder orders candidate files by
DIST_ELEMENTS = 1 << 24  # distance-matrix entries one encode step holds (64 MB of fp32)


def pad_value(domain: str) -> float:
    return LOG_FLOOR if domain == "logit" else 0.0


class VQCodec(Codec):
    name = "vq"
    since_minor = 2
    needs_fit = True

    def __init__(self, classes: int, codebook: np.ndarray, domain: str = "logit", eps: float = 1e-8):
        super().__init__(classes)
        k, dc = codebook.shape
        if not (2 <= k <= MAX_K and 1 <= dc <= classes):
            raise ValueError(f"expected a (k, dc) codebook with 2 <= k <= {MAX_K}, 1 <= dc <= {classes}, "
                             f"got {codebook.shape}")
        self.k, self.dc, self.m, self.bits = k, dc, math.ceil(classes / dc), code_bits(k)
        self.domain, self.eps = domain, eps
        self.codebook = torch.from_numpy(fp16_round(codebook))  # encode against what the reader sees
        if dc == 1:  # scalar codes: nearest by binary search on midpoints, not a (values x k) distance matrix
            cb = self.codebook.numpy()[:, 0]
            self.order = np.argsort(cb, kind="stable")
            s = cb[self.order].astype(np.float64)
            self.mid = 0.5 * (s[1:] + s[:-1])

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        return {"k": self.k, "dc": self.dc, "bits": self.bits, "domain": self.domain, "eps": self.eps}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"vq.codebook": self.codebook.numpy().astype("<f2")}

    @classmethod
    def _checked(cls, params: dict, classes: int) -> tuple[int, int, str, float]:
        k = param(params, "k", int, 2, MAX_K)
        dc = param(params, "dc", int, 1, classes)
        param(params, "bits", int, choices=(code_bits(k),))
        return (k, dc, *domain_eps(params))

    @classmethod
    def tensor_specs(cls, params, classes):
        k, dc, _, _ = cls._checked(params, classes)
        return {"vq.codebook": ("<f2", (k, dc))}

    @classmethod
    def from_file(cls, params, tensors, classes):
        k, dc, domain, eps = cls._checked(params, classes)
        check_tensors(tensors, cls.tensor_specs(params, classes))
        return cls(classes, tensors["vq.codebook"], domain, eps)

    # ---------------------------------------------------------------- planning and fitting
    @classmethod
    def ladder(cls, classes, options):
        """``k = 2^bits`` for bits 1..16 times ``dc`` in 1, 2, 4, ..., 64 and the divisors of C up to 64.

        Candidates with the same bits per label (``m * bits``) keep the one whose bits are closest to 8.
        """
        domain, eps = plan_domain_eps(options, "prob")  # the paper's; measured far lower KL than logit
        k = plan_option(options, "k", None, int, lo=2, hi=MAX_K)
        bits = plan_option(options, "bits", None, int, lo=1, hi=16)
        if k is not None and bits is not None and bits != code_bits(k):
            raise SlcInputError(f"expected bits = ceil(log2 k) = {code_bits(k)} for k={k}, got bits={bits}")
        if k is not None:
            ks = [k]
        else:
            # the planner stops at 1024 codes: k-means over more costs minutes and measured no better per byte
            ks = [1 << bits] if bits is not None else [1 << b for b in range(1, PLAN_MAX_BITS + 1)]
        dc = plan_option(options, "dc", None, int, lo=1, hi=classes)
        dcs = [dc] if dc is not None else sorted(
            {d for d in LADDER_DC if d <= classes} | {d for d in range(1, min(64, classes) + 1) if classes % d == 0})
        best: dict[int, dict] = {}
        for k_ in ks:
            for d in dcs:
                b, m = code_bits(k_), math.ceil(classes / d)
                p = {"k": k_, "dc": d, "bits": b, "domain": domain, "eps": eps}
                rate = m * b
                old = best.get(rate)
                if old is None or (abs(b - 8), b, d) < (abs(old["bits"] - 8), old["bits"], old["dc"]):
                    best[rate] = p

        def size(p):
            return cls.planned_payload(p, classes, LADDER_REF_LABELS) + sum(cls.planned_tensors(p, classes))

        return sorted(best.values(), key=lambda p: (size(p), p["bits"], p["dc"]))

    @classmethod
    def planned_payload(cls, params, classes, n):
        return packed_size(n * math.ceil(classes / params["dc"]), code_bits(params["k"]))

    option_names = ("k", "bits", "dc", "domain", "eps")

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        k, dc, domain, eps = cls._checked(params, classes)
        check_sample(logp, classes, "vq")
        n, m = logp.shape[0], math.ceil(classes / dc)
        with one_thread(), torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            rows = min(n, max(1, MAX_FIT_SEGMENTS // m))
            pick = torch.randperm(n, generator=gen)[:rows].sort().values
            seg = cls._segments(as_tensor(logp)[pick], domain, dc, m)
            if dc == 1:  # 1-D k-means: Lloyd-Max on sorted values, exact and fast for any k
                codebook = lloyd_max(seg.numpy(), k)[:, None]
            else:
                codebook = kmeans(seg, k, iters=KMEANS_ITERS, gen=gen).numpy()
        return cls(classes, codebook, domain, eps)

    @staticmethod
    def _segments(logp: torch.Tensor, domain: str, dc: int, m: int) -> torch.Tensor:
        """``(n, C)`` log-probabilities -> ``(n * m, dc)`` padded segments in the domain."""
        x = encoder_input(logp, domain)
        pad = m * dc - x.shape[1]
        if pad:
            x = torch.nn.functional.pad(x, (0, pad), value=pad_value(domain))
        return x.reshape(-1, dc)

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return packed_size(n * self.m, self.bits)

    def work_per_label(self) -> int:
        return self.classes + self.m * self.dc + self.m

    @torch.no_grad()
    def encode(self, logp: np.ndarray) -> bytes:
        seg = self._segments(as_tensor(logp), self.domain, self.dc, self.m)
        if self.dc == 1:
            codes = self.order[np.searchsorted(self.mid, seg.numpy()[:, 0], side="left")]
        else:
            codes = nearest(seg, self.codebook, rows=max(1, DIST_ELEMENTS // self.k)).numpy()
        return pack_bits(codes, self.bits)

    @torch.no_grad()
    def decode(self, payload, n):
        codes = unpack_bits(payload, n * self.m, self.bits)
        if codes.size and codes.max() >= self.k:
            raise SlcFormatError(f"expected code indices < k={self.k}, got {codes.max()}")
        out = self.codebook[torch.from_numpy(codes)].reshape(n, self.m * self.dc)[:, :self.classes].contiguous()
        if self.domain == "prob":
            return renormalise(out, self.eps).numpy(), "probs"
        return out.numpy(), "logits"
