"""The vector-quantized autoencoder of the paper (eqs. 2-9) and its fitting loop.

Linear encoder ``P`` (c x d_h), latent split into ``m = d_h / d_c`` segments, one shared
codebook of ``k`` codes, nearest-code assignment with a straight-through gradient, linear
decoder ``D`` (d_h x c). Only the codes, the codebook and the decoder are stored.

Beside the paper's recipe (``domain="prob"``: probabilities in, MSE, renormalised output)
there is a log-domain variant (``domain="logit"``): log-probabilities in, decoder output read
as logits, KL loss at the stored temperature, plus a decoder bias. Initialisation can use PCA
for the encoder/decoder and k-means for the codebook, with dead-code restarts.
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

Domain = Literal["prob", "logit"]
LOG_FLOOR = -30.0  # encoder input floor for log-probabilities; mass below e^-30 is irrelevant


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


def encoder_input(logp: torch.Tensor, domain: Domain) -> torch.Tensor:
    """What the encoder sees: probabilities (paper) or floored log-probabilities."""
    return logp.exp() if domain == "prob" else logp.clamp_min(LOG_FLOOR)


def renormalise(y: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 9: clamp at ``eps`` and renormalise so the output is on the simplex."""
    y = y.clamp_min(eps)
    return y / y.sum(-1, keepdim=True)


def nearest(x: torch.Tensor, codebook: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """Index of the nearest code for each row of ``x`` (``||x||^2`` is constant per row, so skipped).

    Works ``rows`` at a time so the distance matrix stays in cache instead of streaming
    hundreds of MB through memory for small ``d_c``.
    """
    sq = codebook.pow(2).sum(1)
    if x.shape[0] <= rows:
        return torch.addmm(sq, x, codebook.t(), alpha=-2).argmin(1)
    return torch.cat([torch.addmm(sq, b, codebook.t(), alpha=-2).argmin(1) for b in x.split(rows)])


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


def kmeans(x: torch.Tensor, k: int, iters: int = 12, gen: torch.Generator | None = None) -> torch.Tensor:
    """Plain Lloyd's k-means seeded on random distinct points."""
    n = x.shape[0]
    centers = x[torch.randperm(n, generator=gen)[:k]].clone()
    if centers.shape[0] < k:  # fewer points than codes: pad with jittered copies
        extra = centers[torch.randint(0, centers.shape[0], (k - centers.shape[0],), generator=gen)]
        centers = torch.cat([centers, extra + 1e-3 * torch.randn(extra.shape, generator=gen)])
    for _ in range(iters):
        a = nearest(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, a, x)
        counts = torch.bincount(a, minlength=k).to(x.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp_min(1)[:, None])
        if empty.any():  # re-seed empty clusters on random points
            centers[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=gen)]
    return centers


def principal_axes(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(c,)`` and top-``d`` principal directions ``(c, d)`` of the rows of ``x``, largest first.

    Directions beyond ``c`` are zero columns. Shared by the VQAE's PCA initialisation and the
    ``pca`` baseline codec, so both see the same axes for the same rows.
    """
    mean = x.mean(0)
    xc = x - mean
    # top-d principal directions from the c x c covariance (c is at most a few thousand)
    cov = xc.t() @ xc / x.shape[0]
    evals, evecs = torch.linalg.eigh(cov.double())
    basis = evecs[:, -d:].flip(1).float()  # (c, d)
    if basis.shape[1] < d:
        basis = torch.cat([basis, torch.zeros(x.shape[1], d - basis.shape[1])], 1)
    return mean, basis


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
    from .codecs.fitting import one_thread

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
