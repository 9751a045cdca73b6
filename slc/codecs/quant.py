"""Learned scalar quantisation baseline (eq. S17): a ``bits``-bit level index per class value, fp16 levels.

The ``2^bits`` levels are fitted by 1-D Lloyd-Max (k-means) over the sample's values in the chosen
domain: probabilities (the paper's) or floored log-probabilities.
"""
from __future__ import annotations

import numpy as np
import torch

from slc.format.bitpack import pack_bits, packed_size, unpack_bits
from slc.errors import expect
from slc.codecs.labels import as_tensor
from slc.codecs.fitting import encoder_input, renormalise
from slc.codecs.base import Codec, param
from slc.codecs.fitting import check_sample, check_tensors, domain_eps, plan_domain_eps, plan_option

MAX_BITS = 8
MAX_FIT_VALUES = 2_000_000  # values Lloyd's iterations run on (a seeded subsample beyond that)
LLOYD_ITERS = 30


def lloyd_max(values: np.ndarray, levels: int, iters: int = LLOYD_ITERS) -> np.ndarray:
    """``levels`` strictly increasing float64 reconstruction levels minimising squared error on ``values``.

    Initialised at the quantiles (duplicates, e.g. many values at a floor, are replaced by midpoints of
    the widest gaps); a level whose cell is empty stays put, which keeps the levels strictly ordered.
    """
    v = np.sort(np.asarray(values, np.float64).reshape(-1))
    pos = (np.arange(levels) + 0.5) / levels * (v.size - 1)  # quantiles of the sorted values, interpolated
    below = np.floor(pos).astype(np.int64)
    above = np.minimum(below + 1, v.size - 1)
    lv = np.unique(v[below] + (pos - below) * (v[above] - v[below]))
    step = max(abs(v[0]), abs(v[-1]), 1.0) * 1e-3
    while lv.size < levels:  # fewer distinct quantiles than levels (values at a floor): split the widest gaps
        size = lv.size
        if size > 1:
            gaps = np.diff(lv)
            g = np.argsort(-gaps, kind="stable")[:levels - size]
            lv = np.unique(np.concatenate([lv, 0.5 * (lv[g] + lv[g + 1])]))
        if lv.size == size:  # one value, or gaps too narrow to split: extend past the top
            lv = np.concatenate([lv, lv[-1] + step * np.arange(1, levels - size + 1)])
    csum = np.concatenate([[0.0], np.cumsum(v)])
    for _ in range(iters):
        edges = np.searchsorted(v, 0.5 * (lv[1:] + lv[:-1]), side="right")  # cell i: v[edges[i-1]:edges[i]]
        starts, stops = np.concatenate([[0], edges]), np.concatenate([edges, [v.size]])
        counts = stops - starts
        sums = csum[stops] - csum[starts]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), lv)
        if np.array_equal(new, lv):
            break
        lv = new
    return lv


def strictly_increasing_fp16(lv: np.ndarray) -> np.ndarray:
    """Round to fp16 and nudge levels that collide upwards to the next fp16 value."""
    out = np.asarray(lv, np.float64).astype("<f2")
    for i in range(1, out.size):
        if not out[i] > out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float16(np.inf))
    return out


class QuantCodec(Codec):
    name = "quant"
    since_minor = 2
    needs_fit = True

    def __init__(self, classes: int, levels: np.ndarray, domain: str = "prob", eps: float = 1e-8):
        super().__init__(classes)
        levels = np.asarray(levels).astype("<f2")
        bits = int(levels.size).bit_length() - 1
        if not (1 <= bits <= MAX_BITS and levels.size == 1 << bits):
            raise ValueError(f"expected 2^bits levels with 1 <= bits <= {MAX_BITS}, got {levels.size} levels")
        self.bits, self.domain, self.eps = bits, domain, eps
        self.levels = levels.astype(np.float32)  # decode arithmetic is fp32 on the stored fp16 levels
        # nearest level: the code is the number of midpoints strictly below the value
        self.mid = 0.5 * (self.levels[1:].astype(np.float64) + self.levels[:-1])

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        return {"bits": self.bits, "domain": self.domain, "eps": self.eps}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"quant.levels": self.levels.astype("<f2")}

    @classmethod
    def _checked(cls, params: dict, classes: int) -> tuple[int, str, float]:
        bits = param(params, "bits", int, 1, MAX_BITS)
        return (bits, *domain_eps(params))

    @classmethod
    def tensor_specs(cls, params, classes):
        bits, _, _ = cls._checked(params, classes)
        return {"quant.levels": ("<f2", (1 << bits,))}

    @classmethod
    def from_file(cls, params, tensors, classes):
        bits, domain, eps = cls._checked(params, classes)
        check_tensors(tensors, cls.tensor_specs(params, classes))
        lv = np.asarray(tensors["quant.levels"], np.float32)
        steps = np.diff(lv)
        expect((steps > 0).all(), "strictly increasing quant.levels", f"level {int(np.argmin(steps > 0)) + 1} "
               f"({lv[int(np.argmin(steps > 0)) + 1]}) not above the one before")
        return cls(classes, tensors["quant.levels"], domain, eps)

    # ---------------------------------------------------------------- planning and fitting
    @classmethod
    def ladder(cls, classes, options):
        domain, eps = plan_domain_eps(options, "prob")
        b = plan_option(options, "bits", None, int, lo=1, hi=MAX_BITS)
        return [{"bits": bits, "domain": domain, "eps": eps} for bits in ([b] if b is not None else
                                                                          range(1, MAX_BITS + 1))]

    @classmethod
    def planned_payload(cls, params, classes, n):
        return packed_size(n * classes, params["bits"])

    option_names = ("bits", "domain", "eps")

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        bits, domain, eps = cls._checked(params, classes)
        check_sample(logp, classes, "quant")
        flat = np.ascontiguousarray(logp, np.float32).reshape(-1)
        if flat.size > MAX_FIT_VALUES:
            # with replacement: no permutation of every value, and repeats do not bias Lloyd's means
            pick = np.sort(np.random.default_rng(seed).integers(0, flat.size, MAX_FIT_VALUES))
            flat = flat[pick]
        with torch.no_grad():  # elementwise only: thread count does not change the result
            values = encoder_input(as_tensor(flat), domain).numpy()
        return cls(classes, strictly_increasing_fp16(lloyd_max(values, 1 << bits)), domain, eps)

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return packed_size(n * self.classes, self.bits)

    def work_per_label(self) -> int:
        return 2 * self.classes  # the codes, then the values

    def encode(self, logp: np.ndarray) -> bytes:
        with torch.no_grad():
            x = encoder_input(as_tensor(logp), self.domain).numpy()
        return pack_bits(np.searchsorted(self.mid, x, side="left"), self.bits)

    def decode(self, payload, n):
        codes = unpack_bits(payload, n * self.classes, self.bits)  # < 2^bits: always a valid level
        out = torch.from_numpy(self.levels[codes].reshape(n, self.classes))
        if self.domain == "prob":
            return renormalise(out, self.eps).numpy(), "probs"
        return out.numpy(), "logits"
