"""Storage arithmetic: the paper's formulas (eqs. S11-S17) and the planner behind ``--ratio``/``--budget``.

The paper's formulas count payload bytes only; :func:`container_bytes` counts what the
``.slc`` file really takes (preamble, header, index, alignment) so plans are honest.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from slc.codecs.base import UNAVAILABLE
from slc.format.bitpack import bits_for as code_bits, packed_size
from slc.format.container import CHUNK, ENTRY, PREAMBLE, align, header_bytes
from slc.format.tiling import Tiling
from slc.errors import SlcInputError

MB = 1024**2
GB = 1024**3


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


def parse_size(text: str) -> int:
    """'120MB', '1.5GiB', '5e6' -> bytes. MB/GB are 10**6/10**9, MiB/GiB are powers of two."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise SlcInputError(f"expected a size like 120MB or 1.5GiB, got {text!r}")
    value, unit = float(m.group(1)), (m.group(2) or "b").lower().rstrip("b")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(value * scale[unit])


def default_chunk_size(classes: int, max_elements: int) -> int:
    """4096 labels, or the largest power of two whose decoded chunk stays well inside ``max_elements``."""
    size = 4096
    while size > 1 and 2 * size * classes > max_elements:
        size //= 2
    return size


# ---------------------------------------------------------------- real container sizes
def file_bytes(sections: Iterable[int]) -> int:
    """Exact length of a file whose section bodies have these sizes, in file order.

    The preamble, then each section on a 64-byte boundary, then the section table (one entry each).
    """
    size, count = PREAMBLE.size, 0
    for s in sections:
        size, count = align(size) + s, count + 1
    return align(size) + ENTRY.size * count


def json_bytes(obj) -> int:
    """Bytes of ``obj`` as the canonical JSON a header is written in."""
    return len(header_bytes(obj))


def container_bytes(epochs: int, samples: int, chunk_size: int, payload_of, tensor_bytes: list[int],
                    header_bytes: int, before: Sequence[int] = (), after: Sequence[int] = (),
                    epochs_per_chunk: int = 1) -> int:
    """Exact file size for raw chunks: header, tensors, the ``before`` sections, chunks, index, ``after``."""
    counts = Tiling(epochs, samples, chunk_size, epochs_per_chunk).counts()
    chunks = sum(payload_of(c) * times for c, times in counts.items())
    index = sum(counts.values()) * CHUNK.size
    return file_bytes([header_bytes, *tensor_bytes, *before, chunks, index, *after])


@dataclass(frozen=True)
class Frame:
    """Everything in a file that the codec does not choose, so plans count the whole file exactly.

    ``header_base``: bytes of the JSON header with an empty codec name, params and tensors (a
    codec's share is added by :meth:`bytes`). ``before``/``after``: bodies of the other sections
    written before the chunks (replay, fingerprints, epochs map, token offsets) and after the index
    (stored crop boxes). ``dense``: the fp16 bytes ratios are quoted against (default: these labels').
    """

    epochs: int
    samples: int
    classes: int
    chunk_size: int
    header_base: int
    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    dense: int = 0
    epochs_per_chunk: int = 1

    @classmethod
    def of(cls, shape: tuple[int, int, int], chunk_size: int, *, temperature: float = 1.0, user: dict | None = None,
           before: Sequence[int] = (), after: Sequence[int] = (), dense: int | None = None,
           epochs_per_chunk: int | None = None) -> "Frame":
        """``epochs_per_chunk``: None is what a writer chooses (:meth:`Tiling.default`)."""
        from slc import __version__
        from slc.format.header import Header

        e, n, c = shape
        # "logits" is the longer source name: an upper bound for either
        g = Tiling.default(e, n, chunk_size).epochs_per_chunk if epochs_per_chunk is None else epochs_per_chunk
        base = Header(c, e, n, float(temperature), "logits", "", {}, {}, chunk_size, "none", f"slc {__version__}",
                      user or {}, g)
        return cls(e, n, c, chunk_size, json_bytes(base.to_json()), tuple(before), tuple(after),
                   dense if dense is not None else dense_bytes(e * n, c), g)

    @property
    def labels(self) -> int:
        return self.epochs * self.samples

    @property
    def others(self) -> int:
        """Bytes of the sections the codec does not choose (their bodies)."""
        return sum(self.before) + sum(self.after)

    def header(self, codec_name: str, stored: dict, specs: dict[str, tuple[str, tuple[int, ...]]]) -> int:
        tensors = {k: {"dtype": d, "shape": list(shape)} for k, (d, shape) in specs.items()}
        return self.header_base + len(codec_name) + json_bytes(stored) - 2 + json_bytes(tensors) - 2

    def bytes(self, codec, plan_params: dict, payload: Callable[[dict, int], int] | None = None) -> int:
        """The file ``codec`` (a class) writes for these plan parameters: raw chunks, or chunks of
        ``payload(plan_params, n)`` bytes (a measured zstd estimate)."""
        stored = codec.planned_params(plan_params, self.classes)
        specs = codec.tensor_specs(stored, self.classes)
        tensors = [math.prod(shape) * np.dtype(d).itemsize for d, shape in specs.values()]
        payload = payload or (lambda params, n: codec.planned_payload(params, self.classes, n))
        return container_bytes(self.epochs, self.samples, self.chunk_size, lambda n: payload(plan_params, n), tensors,
                               self.header(codec.name, stored, specs), self.before, self.after, self.epochs_per_chunk)


# ---------------------------------------------------------------- planning
@dataclass
class Plan:
    codec: str
    params: dict
    bytes: int  # predicted file size: exact for raw chunks (the header at its widest fit record)
    dense_fp16: int
    why: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


# A plan fills a target when the file uses at least this share of it: [R, 1.1 R] for a ratio R.
FILL = 1 / 1.1


def target_bytes(dense_fp16: int, ratio: float | None, budget: int | None) -> int | None:
    if ratio is not None and budget is not None:
        raise SlcInputError("expected one of `ratio` or `budget`, got both")
    if ratio is not None:
        if not ratio >= 1:
            raise SlcInputError(f"expected a ratio >= 1, got {ratio}")
        return int(dense_fp16 / ratio)
    return budget


def vqae_bytes(classes, epochs, samples, chunk_size, k, dc, dh, itemsize=2, bias=True, header_bytes=0,
               before: Sequence[int] = (), after: Sequence[int] = (), epochs_per_chunk: int = 1) -> int:
    """A VQAE file's bytes by arithmetic alone (the planner's search; ``header_bytes`` as given)."""
    bits = code_bits(k)
    tensors = [k * dc * itemsize, dh * classes * itemsize] + ([classes * itemsize] if bias else [])
    return container_bytes(epochs, samples, chunk_size, lambda n: packed_size(n * (dh // dc), bits), tensors,
                           header_bytes, before, after, epochs_per_chunk)


# Measured on real 1000-class labels (benchmarks/fidelity.py, README): at equal bytes, about 4
# bits per latent dimension (k=256 codes of d_c=2) beat both 8 bits/dim (d_c=1) and 2 bits/dim
# (d_c=4), so the planner spends the budget on a wider latent at that rate. With few codes per
# label the latent must not shrink below ~min(C, 20) dimensions: on real 10-class labels at 8
# bits/label one code of d_c=10 has 9x less KL than one of d_c=2 (README, "Few classes"); on
# 1000-class labels at 100x-200x, d_c=5 or 10 lose to d_c=2 (the decoder grows with d_h).
PREFERRED_BITS, PREFERRED_DC, LATENT_FLOOR = 8, 2, 20
MAX_SEGMENTS = 4096
MAX_PLAN_DC = 64


def preferred_dc(classes: int, m: int) -> int:
    """The code dimension the planner prefers for ``m`` codes per label."""
    return max(PREFERRED_DC, -(-min(classes, LATENT_FLOOR) // m))


def ratio_down(ratio: float) -> str:
    """A ratio rounded down, so that asking for the number shown is reachable."""
    return f"{math.floor(ratio * 10) / 10:.1f}x"


class Unreachable(SlcInputError):
    """A target below the smallest file a codec can write; ``smallest`` is that file's size."""

    def __init__(self, message: str, smallest: int):
        super().__init__(message)
        self.smallest = smallest


def unreachable(what: str, frame: Frame, target: int, smallest: int) -> Unreachable:
    """The error for a target below ``what``'s smallest file, naming the nearest ratio that works."""
    others = f", of which {frame.others:,} are other sections (crop replay, fingerprints, tokens)" if frame.others \
        else ""
    nearest = frame.dense / smallest
    way_out = (f"the nearest reachable ratio is {ratio_down(nearest)}, or keep them dense with the fp16 codec"
               if nearest >= 1 else "no file of it is smaller than the dense labels: keep them dense with the fp16 "
               "codec")
    return Unreachable(f"expected a reachable target: {target:,} bytes ({frame.dense / max(target, 1):.1f}x) is "
                       f"below the smallest {what} file for these labels ({smallest:,} bytes{others}); {way_out}",
                       smallest)


def plan_vqae(frame: Frame, target: int | None, *, k: int | None = None, dc: int | None = None,
              dh: int | None = None, dtype: str = "<f2", bias: bool = True) -> Plan:
    """Pick ``(k, d_c, d_h)`` so the whole file fits ``target`` bytes and fills it; explicit values are kept.

    Among the shapes whose file lands in ``[FILL * target, target]`` the planner prefers ~8-bit codes
    and :func:`preferred_dc`; when none lands there, the largest file that fits.
    """
    from slc.codecs import VQAECodec
    from slc.codecs.vqae import MAX_DIM

    classes, dense = frame.classes, frame.dense
    for name, v in (("k", k), ("dc", dc), ("dh", dh)):
        if v is not None and v < (2 if name == "k" else 1):
            raise SlcInputError(f"expected {name} >= {2 if name == 'k' else 1}, got {v}")
    if dh is not None and dc is not None and dh % dc:
        raise SlcInputError(f"expected d_c to divide d_h, got d_h={dh}, d_c={dc}")

    def exact(k_, dc_, dh_):
        return frame.bytes(VQAECodec, {"k": k_, "dc": dc_, "dh": dh_, "dtype": dtype, "bias": bias})

    if target is None:
        if k is None or dc is None or dh is None:
            raise SlcInputError("expected `ratio`, `budget`, or all of `k`, `dc` and `dh`")
        return Plan("vqae", {"k": k, "dc": dc, "dh": dh}, exact(k, dc, dh), dense,
                    [f"k={k}, d_c={dc}, d_h={dh} as given: {dense / exact(k, dc, dh):.1f}x"])
    # the search sizes the header at its widest shape (an upper bound); the pick is sized exactly
    wide = {"k": 1 << 16, "dc": max(dc or 1, MAX_PLAN_DC), "dh": MAX_DIM, "dtype": dtype, "bias": bias}
    stored = VQAECodec.planned_params(wide, classes)
    header = frame.header(VQAECodec.name, stored, VQAECodec.tensor_specs(stored, classes))
    itemsize = np.dtype(dtype).itemsize

    def size(k_, dc_, dh_):
        return vqae_bytes(classes, frame.epochs, frame.samples, frame.chunk_size, k_, dc_, dh_, itemsize, bias,
                          header, frame.before, frame.after, frame.epochs_per_chunk)

    best = None
    for b in ([code_bits(k)] if k is not None else range(1, 17)):
        k_ = k if k is not None else 1 << b
        for dc_ in ([dc] if dc is not None else range(1, MAX_PLAN_DC + 1)):
            if dh is not None:
                if dh % dc_:
                    continue
                m = dh // dc_ if size(k_, dc_, dh) <= target else 0
            else:  # the largest m that fits: size grows with m
                lo, hi = 0, min(MAX_SEGMENTS, MAX_DIM // dc_)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if size(k_, dc_, mid * dc_) <= target else (lo, mid - 1)
                m = lo
            if m == 0:
                continue
            s = size(k_, dc_, m * dc_)
            score = (m * b if dh is not None else 0, s >= FILL * target,
                     -abs(b - PREFERRED_BITS) if k is None else 0,
                     -abs(dc_ - preferred_dc(classes, m)) if dc is None else 0, s)
            if best is None or score > best[0]:
                best = (score, k_, dc_, m * dc_)
    if best is None:
        raise unreachable("VQAE", frame, target, exact(k or 2, dc or 1, dh or (dc or 1)))
    _, k_, dc_, dh_ = best
    s = exact(k_, dc_, dh_)
    m, b = dh_ // dc_, code_bits(k_)
    codes = packed_size(m * frame.labels, b)
    why = [f"target {target:,} bytes = {dense / target:.1f}x of {dense:,} fp16 bytes",
           f"k={k_} ({b}-bit codes), d_c={dc_}, d_h={dh_}: m={m} codes = {m * b} bits per label",
           f"codes {codes:,} bytes; decoder, codebook, header and index {s - codes - frame.others:,} bytes"
           + (f"; other sections {frame.others:,} bytes" if frame.others else ""),
           f"predicted {s:,} bytes = {dense / s:.1f}x"]
    return Plan("vqae", {"k": k_, "dc": dc_, "dh": dh_}, s, dense, why)


def _near_target(rungs: list, size, target: int, window: int = 32) -> range:
    """The rungs worth sizing: all of a short ladder; of a long one (top-k's k up to C - 1, in order of
    size) the ones around where the sizes cross ``target``, found by bisection."""
    if len(rungs) <= 2 * window:
        return range(len(rungs))
    lo, hi = 0, len(rungs)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) <= target else (lo, mid)
    return range(max(0, lo - window), min(len(rungs), lo + window))


def describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def plan_ladder(codec, preset: str, frame: Frame, target: int | None, options: dict,
                payload: Callable[[dict, int], int] | None = None) -> Plan:
    """The largest rung of ``codec``'s ladder whose whole file fits ``target`` (the only rung if none is given).

    ``payload``: measured chunk bytes (after zstd) instead of the raw ones; each rung then costs a
    compression, so only a few around the crossing are sized.
    """
    try:
        rungs = codec.ladder(frame.classes, options)
    except ValueError as e:
        raise SlcInputError(f"expected parameters {preset} can use, got {e}") from None
    if not rungs:
        raise SlcInputError(f"expected parameters {preset} can use for {frame.classes} classes, got {options}")
    if target is None:
        if len(rungs) > 1:
            raise SlcInputError(f"expected `ratio` or `budget` to size {preset}, got neither")
        pick, s = 0, frame.bytes(codec, rungs[0], payload)
    else:
        def size(i):
            return frame.bytes(codec, rungs[i], payload)

        sizes = {i: size(i) for i in _near_target(rungs, size, target, 32 if payload is None else 2)}
        fits = [i for i, s in sizes.items() if s <= target]
        if not fits:
            raise unreachable(preset, frame, target, min(sizes.values()))
        pick = max(fits, key=lambda i: (sizes[i], -i))
        s = sizes[pick]
    why = [f"{preset} {describe(rungs[pick])}: {s:,} bytes = {frame.dense / s:.1f}x"
           + (" (chunks after zstd, as measured on the data)" if payload else "")]
    if target is not None and s < FILL * target:
        why.append(f"the largest {preset} step is smaller than the target: {frame.dense / target:.1f}x asked"
                   if pick == len(rungs) - 1 or sizes.get(pick + 1, 0) >= UNAVAILABLE else
                   f"the next {preset} step would pass the target: {frame.dense / target:.1f}x asked, "
                   f"{frame.dense / s:.1f}x is the nearest at or above it")
    return Plan(preset, rungs[pick], s, frame.dense, why)


# ---------------------------------------------------------------- planning a preset
DEFAULT_RATIO = 40.0


def plan_for(codec: str, shape: tuple[int, int, int], chunk_size: int, ratio: float | None = None,
             budget: int | None = None, k: int | None = None, dc: int | None = None, dh: int | None = None,
             tensor_dtype: str | None = None, options: dict | None = None, frame: Frame | None = None,
             payload: Callable[[dict, int], int] | None = None) -> Plan:
    """Choose the parameters of preset ``codec`` for labels of ``shape = (E, N, C)``, counting the whole file.

    Lossy codecs default to ``DEFAULT_RATIO`` unless a budget or every size parameter is given.
    ``frame``: the rest of the file (header fields, replay and token sections, the fp16 bytes the
    ratio is against); by default labels alone. ``payload``: measured chunk bytes for a ladder
    (:meth:`Codec.measured_payload`).
    """
    from slc.codecs.presets import preset as find

    p = find(codec)
    frame = frame or Frame.of(shape, chunk_size)
    sizes = {name: v for name, v in (("k", k), ("dc", dc), ("dh", dh)) if v is not None}
    options = dict(options or {})
    check_options(p, options, sizes)
    if p.planner == "ladder":
        options.update(sizes)  # top-k's k, vq-noae's k and dc
        if ratio is None and budget is None:  # a token codec's usual k, not a default ratio
            options = {**p.cls.untargeted, **options}
    rungs = None
    if p.planner == "ladder":
        try:
            rungs = len(p.cls.ladder(frame.classes, {**p.options, **options}))
        except ValueError:
            pass  # bad options: plan_ladder below says which
    fixed = p.planner == "fixed" or (p.planner == "vqae" and len(sizes) == 3) or rungs == 1
    if ratio is None and budget is None and not fixed:  # options that pin every knob need no target
        ratio = DEFAULT_RATIO
    target = target_bytes(frame.dense, ratio, budget)
    if p.planner == "vqae":
        plan = plan_vqae(frame, target, k=k, dc=dc, dh=dh, dtype=tensor_dtype or p.tensor_dtype, bias=p.fit == "kl")
    else:
        if not p.sized and target is not None:
            raise SlcInputError(f"expected no `ratio` or `budget` for the dense {codec} codec (its ratio is fixed)")
        plan = plan_ladder(p.cls, codec, frame, target, {**p.options, **options}, payload)
    if frame.others:
        plan.why.append(f"other sections (replay, tokens) {frame.others:,} bytes, counted in the file's "
                        f"{plan.bytes:,} bytes = {plan.ratio:.1f}x")
    return plan


def check_options(p, options: dict, sizes: dict | None = None) -> None:
    """Refuse a parameter or size the codec does not take, rather than ignore it."""
    sizes = sizes or {}
    if p.chooses and (options or sizes):
        raise SlcInputError(f"expected no `options`, `k`, `dc` or `dh` with `codec='{p.name}'` (it picks its codec: "
                            f"name one to fix its parameters), got {', '.join(sorted({*options, *sizes}))}")
    unknown = sorted(set(sizes) - set(p.sizes))
    if unknown:
        takes = ", ".join(f"`{s}`" for s in p.sizes) or "none"
        raise SlcInputError(f"expected sizes that `codec='{p.name}'` takes ({takes}), got "
                            f"{', '.join(f'`{u}`' for u in unknown)}")
    unknown = sorted(set(options) - set(p.option_names))
    if unknown:
        what = "none: its sizes are `k`, `dc` and `dh`" if p.planner == "vqae" else ", ".join(p.option_names) or "none"
        raise SlcInputError(f"expected `options` keys that `codec='{p.name}'` takes ({what}), got {', '.join(unknown)}")
