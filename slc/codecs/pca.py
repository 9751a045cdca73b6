"""PCA baseline (eq. S16): per label, ``k`` fp16 projections on fp16 principal components."""
from __future__ import annotations

import numpy as np
import torch

from slc.errors import SlcFormatError, expect
from slc.codecs.labels import as_tensor
from slc.codecs.fitting import encoder_input, principal_axes, renormalise
from slc.codecs.base import Codec, param
from slc.codecs.fitting import (FP16_MAX, check_sample, check_tensors, domain_eps, fp16_round, one_thread, plan_domain_eps,
                      plan_option)

MAX_FIT_ROWS = 50_000  # rows the covariance is estimated on: plenty for C up to a few thousand


# ---------------------------------------------------------------- the codec
class PCACodec(Codec):
    name = "pca"
    since_minor = 2
    needs_fit = True

    def __init__(self, classes: int, mean: np.ndarray, basis: np.ndarray, domain: str = "logit", eps: float = 1e-8):
        super().__init__(classes)
        k = basis.shape[0]
        if not 1 <= k < classes or basis.shape != (k, classes) or mean.shape != (classes,):
            raise ValueError(f"expected a (k, {classes}) basis with 1 <= k < {classes} and a ({classes},) mean, "
                             f"got {basis.shape} and {mean.shape}")
        self.k, self.domain, self.eps = k, domain, eps
        # stored precision is what the decoder sees, so encode against the rounded tensors too
        self.mean = torch.from_numpy(fp16_round(mean))
        self.basis = torch.from_numpy(fp16_round(basis))

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        return {"components": self.k, "domain": self.domain, "eps": self.eps}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"pca.mean": self.mean.numpy().astype("<f2"), "pca.basis": self.basis.numpy().astype("<f2")}

    @classmethod
    def _checked(cls, params: dict, classes: int) -> tuple[int, str, float]:
        k = param(params, "components", int, 1, classes - 1)
        return (k, *domain_eps(params))

    @classmethod
    def tensor_specs(cls, params, classes):
        k, _, _ = cls._checked(params, classes)
        return {"pca.mean": ("<f2", (classes,)), "pca.basis": ("<f2", (k, classes))}

    @classmethod
    def from_file(cls, params, tensors, classes):
        k, domain, eps = cls._checked(params, classes)
        check_tensors(tensors, cls.tensor_specs(params, classes))
        return cls(classes, tensors["pca.mean"], tensors["pca.basis"], domain, eps)

    # ---------------------------------------------------------------- planning and fitting
    @classmethod
    def ladder(cls, classes, options):
        domain, eps = plan_domain_eps(options, "logit")
        k = plan_option(options, "components", None, int, lo=1, hi=classes - 1)
        ks = [k] if k is not None else range(1, classes)
        return [{"components": c, "domain": domain, "eps": eps} for c in ks]

    @classmethod
    def planned_payload(cls, params, classes, n):
        return 2 * n * params["components"]

    option_names = ("components", "domain", "eps")

    @classmethod
    def fit(cls, logp, classes, params, seed=0):
        k, domain, eps = cls._checked(params, classes)
        check_sample(logp, classes, "pca")
        with one_thread(), torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            n = logp.shape[0]
            rows = torch.randperm(n, generator=gen)[:MAX_FIT_ROWS].sort().values if n > MAX_FIT_ROWS else slice(None)
            x = encoder_input(as_tensor(logp)[rows], domain)
            mean, basis = principal_axes(x, k)
            basis = basis.t().contiguous()  # (k, C)
            # eigenvectors have no sign: fix it (largest |entry| positive) so the bytes do not hinge on LAPACK
            pivot = basis.gather(1, basis.abs().argmax(1, keepdim=True))
            basis *= torch.where(pivot < 0, -1.0, 1.0)
        return cls(classes, mean.numpy(), basis.numpy(), domain, eps)

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return 2 * n * self.k

    def work_per_label(self) -> int:
        return self.classes + self.k

    @torch.no_grad()
    def encode(self, logp: np.ndarray) -> bytes:
        x = encoder_input(as_tensor(logp), self.domain)
        coeff = (x - self.mean) @ self.basis.t()
        return coeff.clamp(-FP16_MAX, FP16_MAX).numpy().astype("<f2").tobytes()

    @torch.no_grad()
    def decode(self, payload, n):
        expect(len(payload) == self.payload_size(n), f"a payload of {self.payload_size(n)} bytes", len(payload))
        coeff = np.frombuffer(payload, dtype="<f2").reshape(n, self.k).astype(np.float32)
        if not np.isfinite(coeff).all():
            raise SlcFormatError("expected finite pca coefficients, got NaN or inf")
        out = torch.addmm(self.mean, torch.from_numpy(coeff), self.basis)
        if self.domain == "prob":
            return renormalise(out, self.eps).numpy(), "probs"
        return out.numpy(), "logits"
