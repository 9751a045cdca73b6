"""Storage arithmetic: the paper's formulas (eqs. S11-S17) and the planner behind ``--ratio``/``--budget``.

The paper's formulas count payload bytes only; :func:`container_bytes` counts what the
``.slc`` file really takes (preamble, header, index, alignment) so plans are honest.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .bitpack import bits_for as code_bits, packed_size
from .container import CHUNK, ENTRY, PREAMBLE, align
from .errors import SlcInputError

MB = 1024**2
GB = 1024**3
HEADER_ALLOWANCE = 4096  # JSON header incl. fit provenance; measured headers are ~1-2 KB


# ---------------------------------------------------------------- the paper's formulas (bytes)
def dense_bytes(labels: int, classes: int, itemsize: int = 2) -> int:
    """Eq. S11: every label dense, fp16 by default."""
    return labels * classes * itemsize


def paper_vq_bytes(labels: int, classes: int, k: int, dc: int, dh: int) -> float:
    """Eq. S12: codes at log2(k) bits + fp32 decoder + fp32 codebook."""
    return labels * (dh / dc) * math.log2(k) / 8 + classes * dh * 4 + k * dc * 4


def paper_topk_bytes(labels: int, classes: int, k: int) -> float:
    """Eq. S15: fp16 values + log2(C)-bit indices."""
    return labels * (2 * k + math.log2(classes) / 8 * k)


def paper_pca_bytes(labels: int, classes: int, k: int) -> float:
    """Eq. S16: fp16 projections + fp16 components."""
    return labels * 2 * k + k * classes * 2


def paper_quant_bytes(labels: int, classes: int, levels: int) -> float:
    """Eq. S17: log2(levels)-bit indices per class + fp16 levels."""
    return labels * classes * math.log2(levels) / 8 + 2 * levels


def parse_size(text: str) -> int:
    """'120MB', '1.5GiB', '5e6' -> bytes. MB/GB are 10**6/10**9, MiB/GiB are powers of two."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise SlcInputError(f"expected a size like 120MB or 1.5GiB, got {text!r}")
    value, unit = float(m.group(1)), (m.group(2) or "b").lower().rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(value * scale[unit])


# ---------------------------------------------------------------- real container sizes
def chunk_counts(epochs: int, samples: int, chunk_size: int) -> list[int]:
    """Label counts of the chunks of one epoch (every epoch is chunked the same way)."""
    full, rest = divmod(samples, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def container_bytes(epochs: int, samples: int, chunk_size: int, payload_of, tensor_bytes: list[int],
                    header_bytes: int = HEADER_ALLOWANCE) -> int:
    """Exact file size for raw chunks, given the header's size (upper bound by default)."""
    counts = chunk_counts(epochs, samples, chunk_size)
    chunks = epochs * sum(payload_of(c) for c in counts)
    index = epochs * len(counts) * CHUNK.size
    sections = [header_bytes, *tensor_bytes, chunks, index]
    size = PREAMBLE.size
    for s in sections:
        size = align(size) + s
    return align(size) + ENTRY.size * len(sections)


# ---------------------------------------------------------------- planning
@dataclass
class Plan:
    codec: str
    params: dict
    bytes: int  # predicted file size (header allowance included)
    dense_fp16: int
    why: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


def target_bytes(dense_fp16: int, ratio: float | None, budget: int | None) -> int | None:
    if ratio is not None and budget is not None:
        raise SlcInputError("expected one of --ratio or --budget, got both")
    if ratio is not None:
        if not ratio >= 1:
            raise SlcInputError(f"expected a ratio >= 1, got {ratio}")
        return int(dense_fp16 / ratio)
    return budget


def vqae_bytes(classes, epochs, samples, chunk_size, k, dc, dh, itemsize=2, bias=True) -> int:
    bits = code_bits(k)
    tensors = [k * dc * itemsize, dh * classes * itemsize] + ([classes * itemsize] if bias else [])
    return container_bytes(epochs, samples, chunk_size, lambda n: packed_size(n * (dh // dc), bits), tensors)


# Measured on real 1000-class labels (benchmarks/fidelity.py, README): at equal bytes, about 4
# bits per latent dimension (k=256 codes of d_c=2) beat both 8 bits/dim (d_c=1) and 2 bits/dim
# (d_c=4), so the planner spends the budget on a wider latent at that rate. With few codes per
# label the latent must not shrink below ~min(C, 20) dimensions: on real 10-class labels at 8
# bits/label one code of d_c=10 has 9x less KL than one of d_c=2 (README, "Few classes"); on
# 1000-class labels at 100x-200x, d_c=5 or 10 lose to d_c=2 (the decoder grows with d_h).
PREFERRED_BITS, PREFERRED_DC, LATENT_FLOOR = 8, 2, 20
MAX_SEGMENTS = 4096


def preferred_dc(classes: int, m: int) -> int:
    """The code dimension the planner prefers for ``m`` codes per label."""
    return max(PREFERRED_DC, -(-min(classes, LATENT_FLOOR) // m))


def plan_vqae(classes: int, epochs: int, samples: int, chunk_size: int, target: int | None, *,
              k: int | None = None, dc: int | None = None, dh: int | None = None, itemsize: int = 2,
              bias: bool = True, dense: int | None = None, extra: int = 0) -> Plan:
    """Pick ``(k, d_c, d_h)`` so the file fits ``target`` bytes; explicit values are kept.

    ``dense`` and ``extra`` (bytes of other sections, already taken off ``target``) only shape messages.
    """
    dense = dense or dense_bytes(epochs * samples, classes)
    for name, v in (("k", k), ("dc", dc), ("dh", dh)):
        if v is not None and v < (2 if name == "k" else 1):
            raise SlcInputError(f"expected {name} >= {2 if name == 'k' else 1}, got {v}")
    if dh is not None and dc is not None and dh % dc:
        raise SlcInputError(f"expected d_c to divide d_h, got d_h={dh}, d_c={dc}")

    def size(k_, dc_, dh_):
        return vqae_bytes(classes, epochs, samples, chunk_size, k_, dc_, dh_, itemsize, bias)

    if target is None:
        if k is None or dc is None or dh is None:
            raise SlcInputError("expected --ratio, --budget, or all of --k, --dc and --dh")
        return Plan("vqae", {"k": k, "dc": dc, "dh": dh}, size(k, dc, dh), dense,
                    [f"k={k}, d_c={dc}, d_h={dh} as given: {dense / size(k, dc, dh):.1f}x"])

    best = None
    for b in ([code_bits(k)] if k is not None else range(1, 17)):
        k_ = k if k is not None else 1 << b
        for dc_ in ([dc] if dc is not None else range(1, 65)):
            if dh is not None:
                if dh % dc_:
                    continue
                m = dh // dc_ if size(k_, dc_, dh) <= target else 0
            else:  # the largest m that fits: size grows with m
                lo, hi = 0, MAX_SEGMENTS
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if size(k_, dc_, mid * dc_) <= target else (lo, mid - 1)
                m = lo
            if m == 0:
                continue
            score = (m * b if dh is not None else 0, -abs(b - PREFERRED_BITS) if k is None else 0,
                     -abs(dc_ - preferred_dc(classes, m)) if dc is None else 0, m * b)
            if best is None or score > best[0]:
                best = (score, k_, dc_, m * dc_)
    if best is None:
        k_, dc_, dh_ = k or 2, dc or 1, dh or (dc or 1)
        smallest = size(k_, dc_, dh_) + extra
        raise SlcInputError(f"expected a reachable target: {target + extra:,} bytes is below the smallest VQAE file "
                            f"for these labels ({smallest:,} bytes, {dense / smallest:.1f}x); the nearest "
                            f"reachable ratio is {dense / smallest:.1f}x")
    _, k_, dc_, dh_ = best
    s = size(k_, dc_, dh_)
    m, b = dh_ // dc_, code_bits(k_)
    codes = packed_size(m * epochs * samples, b)
    why = [f"target {target:,} bytes = {dense / target:.1f}x of {dense:,} fp16 bytes",
           f"k={k_} ({b}-bit codes), d_c={dc_}, d_h={dh_}: m={m} codes = {m * b} bits per label",
           f"codes {codes:,} bytes; decoder, codebook, header and index {s - codes:,} bytes",
           f"predicted {s:,} bytes = {dense / s:.1f}x"]
    return Plan("vqae", {"k": k_, "dc": dc_, "dh": dh_}, s, dense, why)


def ladder_bytes(codec, params: dict, classes: int, epochs: int, samples: int, chunk_size: int) -> int:
    """File size of a codec sized by the generic planner (see ``Codec.ladder``)."""
    return container_bytes(epochs, samples, chunk_size, lambda n: codec.planned_payload(params, classes, n),
                           codec.planned_tensors(params, classes))


def describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def plan_ladder(codec, preset: str, classes: int, epochs: int, samples: int, chunk_size: int,
                target: int | None, options: dict, dense: int | None = None, extra: int = 0) -> Plan:
    """The largest rung of ``codec``'s ladder whose file fits ``target`` (the only rung if none is given).

    ``dense``: the fp16 bytes ratios are quoted against (default: these labels').
    """
    dense = dense or dense_bytes(epochs * samples, classes)
    try:
        rungs = codec.ladder(classes, options)
    except ValueError as e:
        raise SlcInputError(f"expected parameters {preset} can use, got {e}") from None
    if not rungs:
        raise SlcInputError(f"expected parameters {preset} can use for {classes} classes, got {options}")
    sizes = [ladder_bytes(codec, p, classes, epochs, samples, chunk_size) for p in rungs]
    if target is None:
        if len(rungs) > 1:
            raise SlcInputError(f"expected --ratio or --budget to size {preset}, got neither")
        pick = 0
    else:
        fits = [i for i, s in enumerate(sizes) if s <= target]
        if not fits:
            small, target = min(sizes) + extra, target + extra
            raise SlcInputError(f"expected a reachable target: {target:,} bytes ({dense / target:.1f}x) is below the "
                                f"smallest {preset} file ({small:,} bytes); the nearest reachable ratio is "
                                f"{dense / small:.1f}x")
        pick = max(fits, key=lambda i: (sizes[i], -i))
    s = sizes[pick]
    return Plan(preset, rungs[pick], s, dense, [f"{preset} {describe(rungs[pick])}: {s:,} bytes = {dense / s:.1f}x"])
