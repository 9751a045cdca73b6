"""Dense labels: probabilities at the stored temperature as fp16 or fp32 (eq. S11's baseline)."""
from __future__ import annotations

import numpy as np

from slc.errors import expect
from slc.codecs.base import Codec, param


class DenseCodec(Codec):
    name = "dense"

    def __init__(self, classes: int, dtype: str = "<f2"):
        super().__init__(classes)
        self.dtype = np.dtype(dtype)

    def params(self) -> dict:
        return {"dtype": self.dtype.str}

    def payload_size(self, n: int) -> int:
        return self.planned_payload(self.params(), self.classes, n)

    def encode(self, logp: np.ndarray) -> bytes:
        return np.exp(logp).astype(self.dtype).tobytes()

    def decode(self, payload, n):
        a = np.frombuffer(payload, dtype=self.dtype).reshape(n, self.classes).astype(np.float32)
        lo, hi = a.min(), a.max()  # NaN propagates and fails both comparisons
        expect(lo >= 0 and hi < np.inf, "finite, non-negative dense values", f"values in [{lo}, {hi}]")
        return a, "probs"

    @classmethod
    def from_file(cls, params, tensors, classes):
        return cls(classes, param(params, "dtype", str, choices=("<f2", "<f4")))

    @classmethod
    def ladder(cls, classes, options):
        return [{"dtype": options.get("dtype", "<f2")}]

    @classmethod
    def planned_payload(cls, params, classes, n):
        return n * classes * np.dtype(params["dtype"]).itemsize

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        return cls(classes, params["dtype"])
