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
from .labels import Source, check_block, detect_source, to_logp
from .sizing import Plan, dense_bytes, plan_dense, plan_topk, plan_vqae, target_bytes
from .sources import LabelSource, open_labels
from .vqae import FitConfig

PRESETS = ("vqae", "vqae-paper", "topk", "fp16", "fp32")
DEFAULT_FIT_LABELS = 65536


@dataclass
class CompressResult:
    path: str
    bytes: int
    dense_fp16: int
    plan: Plan
    source: str
    fit: dict

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


def plan_for(codec: str, shape: tuple[int, int, int], chunk_size: int, ratio: float | None = None,
             budget: int | None = None, k: int | None = None, dc: int | None = None, dh: int | None = None,
             tensor_dtype: str = "<f4") -> Plan:
    """Choose codec parameters for labels of ``shape = (E, N, C)``."""
    e, n, c = shape
    target = target_bytes(dense_bytes(e * n, c), ratio, budget)
    if codec in ("vqae", "vqae-paper"):
        return plan_vqae(c, e, n, chunk_size, target, k=k, dc=dc, dh=dh, itemsize=np.dtype(tensor_dtype).itemsize,
                         bias=codec == "vqae")
    if codec == "topk":
        return plan_topk(c, e, n, chunk_size, target, k)
    if codec in ("fp16", "fp32"):
        if target is not None:
            raise SlcInputError(f"expected no --ratio/--budget for the dense {codec} codec (its ratio is fixed)")
        return plan_dense(c, e, n, chunk_size, 2 if codec == "fp16" else 4)
    raise SlcInputError(f"expected a codec in {list(PRESETS)}, got {codec!r}")


def fit_sample(src: LabelSource, source: Source, temperature: float, labels: int, seed: int,
               first: list[tuple[int, int, np.ndarray]] | None = None) -> np.ndarray:
    """Log-probabilities of up to ``labels`` rows: spread over the file if it is seekable."""
    e_count, n, c = src.shape
    total = e_count * n
    if labels >= total or not src.seekable:
        rows, got = [], 0
        for _, _, block in first or []:
            rows.append(block[: labels - got])
            got += len(rows[-1])
        return to_logp(np.concatenate(rows), source, temperature)
    rng = np.random.default_rng(seed)
    # whole runs of 256 rows at random places: few seeks, still a spread-out sample
    run = min(256, n)
    runs = rng.choice(total // run, size=math.ceil(labels / run), replace=False)
    out = []
    for r in np.sort(runs):
        row = int(r) * run
        e, s = divmod(row, n)
        block = src.read(e, s, min(n, s + run))
        check_block(block, source, row)
        out.append(to_logp(block, source, temperature))
    return np.concatenate(out)[:labels]


def build_codec(plan: Plan, preset: str, logp: np.ndarray | None, classes: int, tensor_dtype: str,
                fit_config: FitConfig | None, progress: Callable | None) -> Codec:
    p = plan.params
    if preset in ("vqae", "vqae-paper"):
        cfg = fit_config or (FitConfig.paper() if preset == "vqae-paper" else FitConfig())
        return VQAECodec.fit(logp, p["k"], p["dc"], p["dh"], cfg, tensor_dtype, progress)
    if preset == "topk":
        return TopKCodec(classes, p["k"])
    return DenseCodec(classes, p["dtype"])


def compress(labels, out: str | os.PathLike, *, codec: str = "vqae", source: str = "auto", temperature: float = 1.0,
             ratio: float | None = None, budget: int | None = None, k: int | None = None, dc: int | None = None,
             dh: int | None = None, chunk_size: int = 4096, zstd: bool = False, tensor_dtype: str = "<f4",
             fit_labels: int = DEFAULT_FIT_LABELS, fit_config: FitConfig | None = None, seed: int = 0,
             force: bool = False, user: dict | None = None, on_plan: Callable | None = None,
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
    plan = plan_for(codec, src.shape, chunk_size, ratio, budget, k, dc, dh, tensor_dtype)
    if on_plan:
        on_plan(plan)

    # the first blocks decide the source kind and feed stream-only sources' fit sample
    blocks = src.blocks(chunk_size)
    first: list[tuple[int, int, np.ndarray]] = []
    needs_fit = codec in ("vqae", "vqae-paper")
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
    logp = fit_sample(src, kind, temperature, min(fit_labels, e_count * n), seed, first) if needs_fit else None
    enc = build_codec(plan, codec, logp, c, tensor_dtype, fit_config, fit_progress)
    del logp

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
        done = 0
        for e, s, block in rest():
            check_block(block, kind, e * n + s)
            raw = enc.encode(to_logp(block, kind, temperature))
            encoding, payload = ENCODING_RAW, raw
            if compressor is not None:
                z = compressor.compress(raw)
                if len(z) < len(raw):
                    encoding, payload = ENCODING_ZSTD, z
            w.add_chunk(e, s, len(block), payload, len(raw), encoding)
            done += len(block)
            if progress:
                progress(len(block), f.tell())
        w.end_chunks()
        size = w.finish()
    return CompressResult(out, size, dense_bytes(e_count * n, c), plan, kind,
                          getattr(enc, "fit_info", {}))
