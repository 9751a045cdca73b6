"""The VQAE codec: bit-packed code indices per chunk, codebook and decoder as tensor sections."""
from __future__ import annotations

import numpy as np
import torch

from ..bitpack import bits_for as code_bits, pack_bits, packed_size, unpack_bits
from ..errors import SlcFormatError
from ..vqae import FitConfig, encoder_input, fit_vqae, nearest, renormalise
from .base import Codec, param

MAX_K = 1 << 16
MAX_DIM = 1 << 16


class VQAECodec(Codec):
    name = "vqae"

    def __init__(self, classes: int, k: int, dc: int, dh: int, domain: str, eps: float,
                 codebook: np.ndarray, decoder: np.ndarray, bias: np.ndarray | None,
                 dtype: str = "<f4", encoder: tuple[np.ndarray, np.ndarray] | None = None, fit: dict | None = None):
        super().__init__(classes)
        self.k, self.dc, self.dh, self.m = k, dc, dh, dh // dc
        self.bits = code_bits(k)
        self.domain, self.eps, self.dtype = domain, eps, np.dtype(dtype)
        # stored precision is what the decoder sees, so encode against the rounded codebook too
        self.codebook = torch.from_numpy(codebook.astype(self.dtype).astype(np.float32))
        self.decoder = torch.from_numpy(decoder.astype(self.dtype).astype(np.float32))
        self.bias = None if bias is None else torch.from_numpy(bias.astype(self.dtype).astype(np.float32))
        self.encoder = None if encoder is None else tuple(torch.from_numpy(np.asarray(a, np.float32)) for a in encoder)
        self.fit_info = fit or {}
        self.fit_seconds = 0.0

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, logp: np.ndarray, k: int, dc: int, dh: int, cfg: FitConfig, dtype: str = "<f4",
            progress=None) -> "VQAECodec":
        model, stats = fit_vqae(logp, dh, dc, k, cfg, progress)
        seconds = stats.pop("seconds")  # kept out of the header: same input, same bytes
        bias = None if model.decoder.bias is None else model.decoder.bias.detach().numpy()
        codec = cls(logp.shape[1], k, dc, dh, cfg.domain, cfg.eps,
                   model.codebook.detach().numpy(), model.decoder.weight.detach().t().contiguous().numpy(),
                   bias, dtype, (model.encoder.weight.detach().numpy(), model.encoder.bias.detach().numpy()),
                   {"config": cfg.to_json(), **stats})
        codec.fit_seconds = seconds
        return codec

    # ---------------------------------------------------------------- storage
    def params(self) -> dict:
        return {"k": self.k, "dc": self.dc, "dh": self.dh, "bits": self.bits, "domain": self.domain,
                "eps": self.eps, "bias": self.bias is not None, "dtype": self.dtype.str, "fit": self.fit_info}

    def tensors(self) -> dict[str, np.ndarray]:
        t = {"vqae.codebook": self.codebook.numpy().astype(self.dtype),
             "vqae.decoder": self.decoder.numpy().astype(self.dtype)}
        if self.bias is not None:
            t["vqae.bias"] = self.bias.numpy().astype(self.dtype)
        return t

    @classmethod
    def _checked(cls, params: dict, classes: int) -> dict:
        p = {"k": param(params, "k", int, 2, MAX_K), "dc": param(params, "dc", int, 1, MAX_DIM),
             "dh": param(params, "dh", int, 1, MAX_DIM), "domain": param(params, "domain", str, choices=("prob", "logit")),
             "eps": param(params, "eps", (int, float), 0.0, 1.0), "bias": param(params, "bias", bool),
             "dtype": param(params, "dtype", str, choices=("<f4", "<f2"))}
        if p["dh"] % p["dc"]:
            raise SlcFormatError(f"expected d_c to divide d_h, got d_h={p['dh']}, d_c={p['dc']}")
        param(params, "bits", int, choices=(code_bits(p["k"]),))
        if p["domain"] == "prob" and not p["eps"] > 0:
            raise SlcFormatError(f"expected eps > 0 for the prob domain, got {p['eps']}")
        return p

    @classmethod
    def tensor_specs(cls, params, classes):
        p = cls._checked(params, classes)
        specs = {"vqae.codebook": (p["dtype"], (p["k"], p["dc"])), "vqae.decoder": (p["dtype"], (p["dh"], classes))}
        if p["bias"]:
            specs["vqae.bias"] = (p["dtype"], (classes,))
        return specs

    @classmethod
    def planned_payload(cls, params, classes, n):
        return packed_size(n * (params["dh"] // params["dc"]), code_bits(params["k"]))

    @classmethod
    def planned_params(cls, params, classes):
        """``params``: k, dc, dh, and optionally dtype (fp16) and bias (on); the fit record at its widest."""
        widest = 1.2345678901234567e-300  # the longest float JSON writes
        config = {**FitConfig().to_json(), "init": "random", "kmeans_init": False, "dead_code_restart": False,
                  "bias": False, "domain": "logit", "steps": 10**9, "batch_size": 10**9, "seed": 2**63,
                  "lr": widest, "alpha": widest, "beta": widest, "eps": widest}
        return {"k": params["k"], "dc": params["dc"], "dh": params["dh"], "bits": code_bits(params["k"]),
                "domain": "logit", "eps": widest, "bias": params.get("bias", True), "dtype": params.get("dtype", "<f2"),
                "fit": {"codes_used": params["k"], "config": config, "final_loss": widest, "fit_labels": 10**15}}

    @classmethod
    def from_file(cls, params, tensors, classes):
        p = cls._checked(params, classes)
        for name, arr in tensors.items():
            if not np.isfinite(arr).all():
                raise SlcFormatError(f"expected finite values in {name}, got NaN or inf")
        return cls(classes, p["k"], p["dc"], p["dh"], p["domain"], float(p["eps"]), tensors["vqae.codebook"],
                   tensors["vqae.decoder"], tensors.get("vqae.bias"), p["dtype"])

    def encoder_state(self) -> dict[str, np.ndarray]:
        return {} if self.encoder is None else {"encoder.weight": self.encoder[0].numpy(),
                                                "encoder.bias": self.encoder[1].numpy()}

    def restore_encoder_state(self, state: dict[str, np.ndarray]) -> None:
        w, b = state["encoder.weight"], state["encoder.bias"]
        if w.shape != (self.dh, self.classes) or b.shape != (self.dh,):
            raise SlcFormatError(f"expected a ({self.dh}, {self.classes}) encoder, got {w.shape}")
        self.encoder = (torch.from_numpy(np.asarray(w, np.float32)), torch.from_numpy(np.asarray(b, np.float32)))

    # ---------------------------------------------------------------- coding
    def payload_size(self, n: int) -> int:
        return packed_size(n * self.m, self.bits)

    def work_per_label(self) -> int:
        return self.classes + self.dh + self.m

    @torch.no_grad()
    def codes(self, logp: np.ndarray) -> torch.Tensor:
        if self.encoder is None:
            raise ValueError("this VQAE was loaded from a file, which stores no encoder; it can only decode")
        w, b = self.encoder
        x = encoder_input(torch.from_numpy(np.ascontiguousarray(logp, np.float32)), self.domain)
        h = torch.addmm(b, x, w.t()).view(-1, self.dc)
        return nearest(h, self.codebook).view(-1, self.m)

    def encode(self, logp: np.ndarray) -> bytes:
        return pack_bits(self.codes(logp).numpy(), self.bits)

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor):
        h = self.codebook[codes].view(codes.shape[0], self.dh)
        out = h @ self.decoder if self.bias is None else torch.addmm(self.bias, h, self.decoder)
        if self.domain == "prob":
            return renormalise(out, self.eps).numpy(), "probs"
        return out.numpy(), "logits"

    def decode(self, payload, n):
        codes = unpack_bits(payload, n * self.m, self.bits)
        if codes.size and codes.max() >= self.k:
            raise SlcFormatError(f"expected code indices < k={self.k}, got {codes.max()}")
        return self.decode_codes(torch.from_numpy(codes).view(n, self.m))
