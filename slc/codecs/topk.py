"""Top-k probabilities plus their indices, the rest spread uniformly (FKD's marginal smoothing, eq. S15)."""
from __future__ import annotations

import numpy as np

from ..bitpack import bits_for as index_bits, pack_bits, packed_size, unpack_bits
from ..errors import expect
from .base import Codec, param, split_payload


class TopKCodec(Codec):
    name = "topk"

    def __init__(self, classes: int, k: int):
        super().__init__(classes)
        if not 1 <= k < classes:
            raise ValueError(f"expected 1 <= k < classes ({classes}), got k={k}")
        self.k = k
        self.bits = index_bits(classes)

    def params(self) -> dict:
        return {"k": self.k, "index_bits": self.bits}

    def payload_size(self, n: int) -> int:
        return n * self.k * 2 + packed_size(n * self.k, self.bits)

    def encode(self, logp: np.ndarray) -> bytes:
        idx = np.argpartition(-logp, self.k - 1, axis=1)[:, : self.k]
        vals = np.exp(np.take_along_axis(logp, idx, axis=1))
        order = np.argsort(-vals, axis=1, kind="stable")  # largest first: deterministic layout
        idx, vals = np.take_along_axis(idx, order, 1), np.take_along_axis(vals, order, 1)
        return vals.astype("<f2").tobytes() + pack_bits(idx, self.bits)

    def decode(self, payload, n):
        raw_vals, raw_idx = split_payload(payload, n * self.k * 2, packed_size(n * self.k, self.bits))
        vals = np.frombuffer(raw_vals, dtype="<f2").reshape(n, self.k).astype(np.float32)
        idx = unpack_bits(raw_idx, n * self.k, self.bits).reshape(n, self.k)
        lo, hi = vals.min(), vals.max()  # NaN propagates and fails both comparisons
        expect(lo >= 0 and hi <= 1, "top-k values in [0, 1]", f"values in [{lo}, {hi}]")
        expect(idx.max() < self.classes, f"top-k indices < {self.classes}", idx.max())
        s = np.sort(idx, axis=1)
        expect(not (s[:, 1:] == s[:, :-1]).any(), "distinct top-k indices in each label", "a repeated index")
        rest = np.clip(1.0 - vals.sum(1, keepdims=True), 0.0, None) / (self.classes - self.k)
        out = np.repeat(rest, self.classes, axis=1)
        np.put_along_axis(out, idx, vals, axis=1)
        out /= out.sum(1, keepdims=True)
        return out, "probs"

    @classmethod
    def from_file(cls, params, tensors, classes):
        k = param(params, "k", int, 1, classes - 1)
        param(params, "index_bits", int, choices=(index_bits(classes),))
        return cls(classes, k)
