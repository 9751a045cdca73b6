"""Top-k probabilities plus their indices (eq. S15), with the tail treatments of the baselines.

The payload is the same for all three; what the classes outside the top k get differs, and
so does the codec name (an older reader must refuse a tail it does not know, not guess):

- ``topk``: the mass the top k leave, spread uniformly (FKD's marginal smoothing);
- ``topk-mr``: nothing; the top k are renormalised (LPQLD's MR, a softmax over the top-k logits);
- ``topk-mrs``: each gets the smallest stored probability, then all renormalised (LPQLD's MRS,
  "fill with the minimum logit").
"""
from __future__ import annotations

import numpy as np

from slc.format.bitpack import bits_for as index_bits, pack_bits, packed_size, unpack_bits
from slc.errors import expect
from slc.codecs.base import Codec, param, split_payload

class TopKCodec(Codec):
    name = "topk"
    keeps_top1 = True
    tail = "uniform"

    def __init__(self, classes: int, k: int):
        super().__init__(classes)
        if not 1 <= k < classes:
            raise ValueError(f"expected 1 <= k < classes ({classes}), got k={k}")
        self.k = k
        self.bits = index_bits(classes)

    def params(self) -> dict:
        return {"k": self.k, "index_bits": self.bits}

    def describe(self) -> str:
        return f"top-{self.k}" if self.name == "topk" else f"{self.name} k={self.k}"

    def payload_size(self, n: int) -> int:
        return self.planned_payload({"k": self.k}, self.classes, n)

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
        if self.tail == "uniform":
            rest = np.clip(1.0 - vals.sum(1, keepdims=True), 0.0, None) / (self.classes - self.k)
        elif self.tail == "min":
            rest = vals.min(1, keepdims=True)
        else:
            rest = np.zeros((n, 1), np.float32)
        out = np.repeat(rest, self.classes, axis=1)
        np.put_along_axis(out, idx, vals, axis=1)
        total = out.sum(1, keepdims=True)
        out /= np.where(total > 0, total, 1.0)  # an all-zero fp16 row (k tiny, flat label) stays zero
        return out, "probs"

    @classmethod
    def from_file(cls, params, tensors, classes):
        k = param(params, "k", int, 1, classes - 1)
        param(params, "index_bits", int, choices=(index_bits(classes),))
        return cls(classes, k)

    # ---------------------------------------------------------------- planning
    @classmethod
    def ladder(cls, classes, options):
        return [{"k": k} for k in ([options["k"]] if "k" in options else range(1, classes))]

    @classmethod
    def planned_payload(cls, params, classes, n):
        return n * params["k"] * 2 + packed_size(n * params["k"], index_bits(classes))

    @classmethod
    def planned_params(cls, params, classes):
        return {"k": params["k"], "index_bits": index_bits(classes)}

    option_names = ("k",)

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        return cls(classes, params["k"])


class TopKMRCodec(TopKCodec):
    name = "topk-mr"
    tail = "renorm"
    since_minor = 2


class TopKMRSCodec(TopKCodec):
    name = "topk-mrs"
    tail = "min"
    since_minor = 2
