"""The VQAE codec: the vector-quantized autoencoder of the paper (eqs. 2-9), its fitting loop, and its file form.

Linear encoder ``P`` (c x d_h), latent split into ``m = d_h / d_c`` segments, one shared
codebook of ``k`` codes, nearest-code assignment with a straight-through gradient, linear
decoder ``D`` (d_h x c). Only the codes, the codebook and the decoder are stored.

Beside the paper's recipe (``domain="prob"``: probabilities in, MSE, renormalised output)
there is a log-domain variant (``domain="logit"``): log-probabilities in, decoder output read
as logits, KL loss at the stored temperature, plus a decoder bias. Initialisation can use PCA
for the encoder/decoder and k-means for the codebook, with dead-code restarts.

In the file: bit-packed code indices per chunk; codebook, decoder (and bias) as tensor sections.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slc.format.bitpack import bits_for as code_bits, pack_bits, packed_size, unpack_bits
from slc.errors import SlcFormatError
from slc.codecs.fitting import Domain, encoder_input, kmeans, nearest, one_thread, principal_axes, renormalise
from slc.codecs.base import Codec, param

MAX_K = 1 << 16
MAX_DIM = 1 << 16


@dataclass
class FitConfig:
    """How to fit a VQAE. ``paper()`` gives the published recipe."""

    domain: Domain = "logit"
    bias: bool = True
    init: Literal["random", "pca"] = "pca"
    kmeans_init: bool = True
    dead_code_restart: bool = True
    alpha: float = 1.0  # weight of the VQ losses (eq. 7)
    beta: float = 0.25  # commitment weight (eq. 7)
    lr: float = 1e-3
    batch_size: int = 512
    steps: int = 500  # PCA + k-means init converge fast: 300, 600 and 1500 steps measured alike
    seed: int = 0
    eps: float = 1e-8  # renormalisation floor of eq. 9 (prob domain)

    @classmethod
    def paper(cls, **kw) -> "FitConfig":
        base = dict(domain="prob", bias=False, init="random", kmeans_init=False, dead_code_restart=False)
        return cls(**{**base, **kw})

    def to_json(self) -> dict:
        return asdict(self)


class VQAE(nn.Module):
    def __init__(self, classes: int, dh: int, dc: int, k: int, domain: Domain = "logit", bias: bool = True,
                 beta: float = 0.25):
        super().__init__()
        if k < 2:
            raise ValueError(f"expected k >= 2 codes, got {k}")
        if dc < 1 or dh < 1 or dh % dc:
            raise ValueError(f"expected d_c to divide d_h, got d_h={dh}, d_c={dc}")
        self.classes, self.dh, self.dc, self.k, self.m = classes, dh, dc, k, dh // dc
        self.domain, self.beta = domain, beta
        self.encoder = nn.Linear(classes, dh)
        self.codebook = nn.Parameter(torch.randn(k, dc) / math.sqrt(dc))
        self.decoder = nn.Linear(dh, classes, bias=bias)

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output as ``(n, m, d_c)``."""
        return self.encoder(x).view(-1, self.m, self.dc)

    def assign(self, h: torch.Tensor) -> torch.Tensor:
        """Nearest code per segment, ``(n, m, d_c) -> (n, m)`` (eq. 4)."""
        return nearest(h.reshape(-1, self.dc), self.codebook).view(h.shape[0], self.m)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(n, m)`` codes -> ``(n, c)`` decoder output (probabilities or logits)."""
        return self.decoder(self.codebook[codes].reshape(codes.shape[0], self.dh))

    def forward(self, x: torch.Tensor):
        """``x: (n, c)`` encoder input -> (decoder output ``(n, c)``, codes ``(n, m)``, VQ loss)."""
        h = self.segments(x)
        codes = self.assign(h.detach())
        q = self.codebook[codes]
        vq = F.mse_loss(q, h.detach(), reduction="sum") + self.beta * F.mse_loss(h, q.detach(), reduction="sum")
        h_st = h + (q - h).detach()  # straight-through gradient
        return self.decoder(h_st.reshape(-1, self.dh)), codes, vq / x.shape[0]


def recon_loss(out: torch.Tensor, logp: torch.Tensor, domain: Domain) -> torch.Tensor:
    """Eq. 7's squared error (prob domain) or KL(y || softmax(out)) (logit domain), per label."""
    if domain == "prob":
        return (out - logp.exp()).pow(2).sum(1).mean()
    return (logp.exp() * (logp - out.log_softmax(1))).sum(1).mean()


def _pca_init(model: VQAE, x: torch.Tensor) -> None:
    mean, basis = principal_axes(x, model.dh)
    with torch.no_grad():
        model.encoder.weight.copy_(basis.t())
        model.encoder.bias.copy_(-(mean @ basis))
        model.decoder.weight.copy_(basis)
        if model.decoder.bias is not None:
            model.decoder.bias.copy_(mean)


def fit_vqae(logp: np.ndarray, dh: int, dc: int, k: int, cfg: FitConfig, progress=None) -> tuple[VQAE, dict]:
    """Fit on ``logp`` (n, c) log-probabilities at the target temperature.

    ``progress`` is an optional callable ``(step, total, loss)``. Returns the model and a
    dict of fitting statistics (time, final loss, codebook usage). Runs on one thread:
    multi-threaded CPU reductions (``index_add_``, backward of the code gather) sum in a
    varying order, which made two fits of the same labels differ in their last bits.
    """
    with one_thread():
        return _fit_vqae(logp, dh, dc, k, cfg, progress)


def _fit_vqae(logp: np.ndarray, dh: int, dc: int, k: int, cfg: FitConfig, progress=None) -> tuple[VQAE, dict]:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    n, c = logp.shape
    data = torch.from_numpy(np.ascontiguousarray(logp, dtype=np.float32))
    model = VQAE(c, dh, dc, k, cfg.domain, cfg.bias, cfg.beta)

    def x_of(rows: torch.Tensor) -> torch.Tensor:  # encoder input for some rows: no full-size copy
        return encoder_input(data[rows], cfg.domain)

    if cfg.init == "pca":
        _pca_init(model, x_of(torch.randperm(n, generator=gen)[:20_000]))
    if cfg.kmeans_init:
        with torch.no_grad():
            # ~64 points per code is plenty for Lloyd's iterations
            points = min(n * model.m, max(64 * k, 16384))
            seg = model.segments(x_of(torch.randperm(n, generator=gen)[: max(1, points // model.m)]))
            model.codebook.copy_(kmeans(seg.reshape(-1, dc), k, gen=gen))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # short warm-up, then cosine decay
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / max(cfg.steps, 1))))
    usage = torch.zeros(k)
    perm = torch.randperm(n, generator=gen)
    pos, loss_v = 0, float("nan")
    for step in range(cfg.steps):
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        lp = data[idx]
        out, codes, vq = model(x_of(idx))
        loss = recon_loss(out, lp, cfg.domain) + cfg.alpha * vq
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        usage += torch.bincount(codes.reshape(-1), minlength=k)
        if cfg.dead_code_restart and (step + 1) % 100 == 0 and step + 1 < cfg.steps * 0.9:
            dead = usage == 0
            if dead.any():
                with torch.no_grad():
                    seg = model.segments(x_of(idx)).reshape(-1, dc)
                    pick = torch.randint(0, seg.shape[0], (int(dead.sum()),), generator=gen)
                    model.codebook[dead] = seg[pick]
            usage.zero_()
        loss_v = float(loss.detach())
        if progress is not None:
            progress(step + 1, cfg.steps, loss_v)
    model.eval()
    with torch.no_grad():
        sample = x_of(torch.arange(min(n, 20000)))
        used = torch.unique(model.assign(model.segments(sample))).numel()
    stats = {"seconds": time.perf_counter() - t0, "final_loss": loss_v, "codes_used": int(used),
             "fit_labels": int(n)}
    return model, stats


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

    def unpacked(self, payload, n: int) -> torch.Tensor:
        """The payload's code indices, checked, as ``(n, m)`` int64."""
        codes = unpack_bits(payload, n * self.m, self.bits)
        if codes.size and codes.max() >= self.k:
            raise SlcFormatError(f"expected code indices < k={self.k}, got {codes.max()}")
        return torch.from_numpy(codes).view(n, self.m)

    def decode(self, payload, n):
        return self.decode_codes(self.unpacked(payload, n))

    def logit_rows(self, payload, n):
        if self.domain == "prob":  # renormalised probabilities, not logits
            return None
        codes = self.unpacked(payload, n).reshape(-1)
        m, dh, w, b = self.m, self.dh, self.decoder, self.bias

        @torch.no_grad()
        def fill(lo: int, hi: int, dst: torch.Tensor) -> None:
            h = self.codebook.index_select(0, codes[lo * m:hi * m]).view(hi - lo, dh)
            if b is None:
                torch.mm(h, w, out=dst)
            else:
                torch.addmm(b, h, w, out=dst)
        return fill
