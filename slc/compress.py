"""``compress``: fit a codec on a sample of labels, then stream every label through it into a ``.slc``."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import __version__
from .atomic import atomic_output, check_output
from .codecs import Codec, DenseCodec, TopKCodec, VQAECodec
from .container import ENCODING_RAW, ENCODING_ZSTD, ContainerWriter, header_bytes
from .errors import SlcInputError
from .header import MAX_CHUNK_ELEMENTS, Header
from .labels import Source, check_block, detect_source, retemper, to_logp
from .metrics import Fidelity
from .sizing import Plan, dense_bytes, plan_dense, plan_topk, plan_vqae, target_bytes
from .sources import LabelSource, open_labels
from .vqae import FitConfig

PRESETS = ("auto", "vqae", "vqae-paper", "topk", "fp16", "fp32")
DEFAULT_RATIO = 40.0
AUTO_HOLDOUT = 4096  # labels of the fit sample kept out of fitting to choose between codecs
DEFAULT_FIT_LABELS = 65536


@dataclass
class CompressResult:
    path: str
    bytes: int
    dense_fp16: int
    plan: Plan
    source: str
    fit: dict
    codec: str = ""

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


def plan_for(codec: str, shape: tuple[int, int, int], chunk_size: int, ratio: float | None = None,
             budget: int | None = None, k: int | None = None, dc: int | None = None, dh: int | None = None,
             tensor_dtype: str | None = None) -> Plan:
    """Choose codec parameters for labels of ``shape = (E, N, C)``.

    Lossy codecs default to ``DEFAULT_RATIO`` unless a budget or every VQAE size is given.
    """
    e, n, c = shape
    if ratio is None and budget is None and codec not in ("fp16", "fp32") and not (
            codec == "topk" and k is not None) and None in (k, dc, dh):
        ratio = DEFAULT_RATIO
    target = target_bytes(dense_bytes(e * n, c), ratio, budget)
    tensor_dtype = tensor_dtype or default_tensor_dtype(codec)
    if codec in ("vqae", "vqae-paper"):
        return plan_vqae(c, e, n, chunk_size, target, k=k, dc=dc, dh=dh, itemsize=np.dtype(tensor_dtype).itemsize,
                         bias=codec == "vqae")
    if codec == "auto":
        return plan_for("vqae", shape, chunk_size, ratio, budget, k, dc, dh, tensor_dtype)
    if codec == "topk":
        return plan_topk(c, e, n, chunk_size, target, k)
    if codec in ("fp16", "fp32"):
        if target is not None:
            raise SlcInputError(f"expected no --ratio/--budget for the dense {codec} codec (its ratio is fixed)")
        return plan_dense(c, e, n, chunk_size, 2 if codec == "fp16" else 4)
    raise SlcInputError(f"expected a codec in {list(PRESETS)}, got {codec!r}")


def default_tensor_dtype(codec: str) -> str:
    """fp16 codebook/decoder for our VQAE (no measurable KL cost, half the overhead); fp32 as published."""
    return "<f4" if codec == "vqae-paper" else "<f2"


def fit_sample(src: LabelSource, source: Source, temperature: float, labels: int, seed: int,
               first: list[tuple[int, int, np.ndarray]] | None = None) -> np.ndarray:
    """Log-probabilities of up to ``labels`` rows: spread over the file if it is seekable."""
    e_count, n, c = src.shape
    total = e_count * n
    if not src.seekable:
        rows, got = [], 0
        for _, _, block in first or []:
            rows.append(block[: labels - got])
            got += len(rows[-1])
        return to_logp(np.concatenate(rows), source, temperature)
    if labels >= total:
        out = []
        for e, s, block in src.blocks(4096):
            check_block(block, source, e * n + s)
            out.append(to_logp(block, source, temperature))
        return np.concatenate(out)
    rng = np.random.default_rng(seed)
    # whole runs of 256 rows at random places: few seeks, still a spread-out sample
    run = min(256, n)
    per_epoch = n // run  # runs never cross an epoch boundary
    count = min(e_count * per_epoch, math.ceil(labels / run))
    runs = np.sort(rng.choice(e_count * per_epoch, size=count, replace=False))
    out = np.empty((count * run, c), np.float32)  # filled in place: no list + concatenate copy
    for i, r in enumerate(runs):
        e, s = divmod(int(r), per_epoch)
        s *= run
        block = src.read(e, s, s + run)
        check_block(block, source, e * n + s)
        out[i * run:(i + 1) * run] = to_logp(block, source, temperature)
    return out[:labels]


def build_codec(plan: Plan, preset: str, logp: np.ndarray | None, classes: int, tensor_dtype: str,
                fit_config: FitConfig | None, progress: Callable | None) -> Codec:
    p = plan.params
    if preset in ("vqae", "vqae-paper"):
        cfg = fit_config or (FitConfig.paper() if preset == "vqae-paper" else FitConfig())
        return VQAECodec.fit(logp, p["k"], p["dc"], p["dh"], cfg, tensor_dtype, progress)
    if preset == "topk":
        return TopKCodec(classes, p["k"])
    return DenseCodec(classes, p["dtype"])


def sample_kl(codec: Codec, logp: np.ndarray) -> float:
    """Mean KL(y || decoded) of ``codec`` on log-probabilities ``logp``."""
    meter = Fidelity()
    for s in range(0, len(logp), 4096):
        block = logp[s:s + 4096]
        labels, kind = codec.decode(codec.encode(block), len(block))
        meter.update(block, retemper(labels, kind, 1.0, "probs"))
    return meter.result()["kl"]


def choose_auto(shape, chunk_size: int, ratio, budget, logp: np.ndarray, tensor_dtype: str | None,
                fit_config: FitConfig | None, progress, log) -> tuple[Codec, Plan]:
    """Fit the VQAE and size top-k to the same bytes; keep whichever has the lower held-out KL.

    The temperature decides: peaked labels (T near 1) favour top-k, soft ones the VQAE.
    """
    vq_plan = plan_for("vqae", shape, chunk_size, ratio, budget, tensor_dtype=tensor_dtype)
    tk_plan = plan_for("topk", shape, chunk_size, ratio, budget)
    hold = min(AUTO_HOLDOUT, len(logp) // 5)
    fit_part, held = (logp[:-hold], logp[-hold:]) if hold >= 64 else (logp, logp)
    vq = build_codec(vq_plan, "vqae", fit_part, shape[2], tensor_dtype or "<f2", fit_config, progress)
    tk = build_codec(tk_plan, "topk", None, shape[2], "<f2", None, None)
    kl_vq, kl_tk = sample_kl(vq, held), sample_kl(tk, held)
    pick = (vq, vq_plan) if kl_vq <= kl_tk else (tk, tk_plan)
    log(f"auto: KL on {len(held):,} held-out labels: vqae {kl_vq:.4g} ({vq_plan.ratio:.1f}x), "
        f"top-{tk.k} {kl_tk:.4g} ({tk_plan.ratio:.1f}x) -> {pick[0].name}")
    return pick


def compress(labels, out: str | os.PathLike, *, codec: str = "auto", source: str = "auto", temperature: float = 1.0,
             ratio: float | None = None, budget: int | None = None, k: int | None = None, dc: int | None = None,
             dh: int | None = None, chunk_size: int = 4096, zstd: bool = False, tensor_dtype: str | None = None,
             fit_labels: int = DEFAULT_FIT_LABELS, fit_config: FitConfig | None = None, seed: int = 0,
             force: bool = False, user: dict | None = None, log: Callable[[str], None] | None = None,
             fit_progress: Callable | None = None, progress: Callable | None = None) -> CompressResult:
    """Compress ``labels`` into ``out``; see ``slc compress --help`` for the options.

    ``labels``: an array ``(N, C)`` / ``(E, N, C)``, a path (``.npy``, ``FILE.h5:/dataset``), or a
    :class:`~slc.sources.LabelSource`.
    """
    src = open_labels(labels)
    out = os.fspath(out)
    e_count, n, c = src.shape
    if not (math.isfinite(temperature) and temperature > 0):
        raise SlcInputError(f"expected a temperature > 0, got {temperature}")
    if chunk_size < 1 or chunk_size * c > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected 1 <= chunk size <= {MAX_CHUNK_ELEMENTS // c} for {c} classes, got {chunk_size}")
    check_output(out, force)
    log = log or (lambda line: None)
    if codec == "auto" and (k, dc, dh) != (None, None, None):
        raise SlcInputError("expected --codec vqae or topk with --k/--dc/--dh, got --codec auto")

    # the first blocks decide the source kind and feed stream-only sources' fit sample
    blocks = src.blocks(chunk_size)
    first: list[tuple[int, int, np.ndarray]] = []
    needs_fit = codec in ("auto", "vqae", "vqae-paper")
    want = min(fit_labels, e_count * n) if needs_fit and not src.seekable else 1
    got = 0
    for item in blocks:
        first.append(item)
        got += len(item[2])
        if got >= want:
            break
    kind: Source = detect_source(first[0][2]) if source == "auto" else source  # type: ignore[assignment]
    for e, s, block in first:
        check_block(block, kind, e * n + s)
    plan = plan_for(codec, src.shape, chunk_size, ratio, budget, k, dc, dh, tensor_dtype)
    for line in plan.why:
        log(f"plan: {line}")
    logp = fit_sample(src, kind, temperature, min(fit_labels, e_count * n), seed, first) if needs_fit else None
    if codec == "auto":
        enc, plan = choose_auto(src.shape, chunk_size, ratio, budget, logp, tensor_dtype, fit_config, fit_progress,
                                log)
    else:
        enc = build_codec(plan, codec, logp, c, tensor_dtype or default_tensor_dtype(codec), fit_config,
                          fit_progress)
    del logp
    if chunk_size * enc.work_per_label() > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected chunk size <= {MAX_CHUNK_ELEMENTS // enc.work_per_label()} for this codec, "
                            f"got {chunk_size}")

    tensors = enc.tensors()
    header = Header(c, e_count, n, float(temperature), kind, enc.name, enc.params(),
                    {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in tensors.items()},
                    chunk_size, "zstd" if zstd else "none", f"slc {__version__}", user or {})
    compressor = None
    if zstd:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=19)

    def rest():
        yield from first
        yield from blocks

    with atomic_output(out, force) as f:
        w = ContainerWriter(f)
        w.add_section("header", header_bytes(header.to_json()))
        for name, a in tensors.items():
            w.add_section(name, np.ascontiguousarray(a).tobytes())
        w.begin_chunks()
        for e, s, block in rest():
            check_block(block, kind, e * n + s)
            raw = enc.encode(to_logp(block, kind, temperature))
            encoding, payload = ENCODING_RAW, raw
            if compressor is not None:
                z = compressor.compress(raw)
                if len(z) < len(raw):
                    encoding, payload = ENCODING_ZSTD, z
            w.add_chunk(e, s, len(block), payload, len(raw), encoding)
            if progress:
                progress(len(block), f.tell())
        w.end_chunks()
        size = w.finish()
    return CompressResult(out, size, dense_bytes(e_count * n, c), plan, kind, {**getattr(enc, "fit_info", {}), "seconds": getattr(enc, "fit_seconds", 0.0)}, enc.name)
