"""``compress``: labels in, one ``.slc`` out, in named stages.

1. **open** the input and what goes around the labels (:func:`open_job`): the temperature,
   pruning, the replay and token sections, and every check that can fail before any work;
2. **resume** an interrupted run or start one (:class:`~slc.resume.ResumableOutput`): a resumed
   run rebuilds its codec from the partial file (:func:`rebuild`) and goes straight to 6;
3. **sniff** the first blocks (:func:`sniff`): logits or probabilities, and a stream's fit sample;
4. **plan** the codec against the whole file's bytes (:func:`slc.codecs.planner.plan_for`);
5. **fit** it on a sample of labels (:func:`fit`; ``auto`` fits its candidates and keeps the best);
6. **write** the header, tensors and sections (:func:`begin`), every chunk (:func:`write_chunks`),
   then the index and the table, and rename into place.

Every option that changes the bytes is a field of :class:`CompressOptions`, and the ``--resume``
identity is built from all of them, so a new option cannot be left out of it.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np

from slc import __version__
from slc.atomic import check_space
from slc.codecs import codec_class
from slc.codecs.base import Codec, Kind, TokenCodec
from slc.codecs.labels import check_block, detect_source, to_logp
from slc.codecs.planner import (FILL, Frame, Plan, Unreachable, check_options, default_chunk_size, dense_bytes,
                                plan_for, target_bytes)
from slc.codecs.presets import AUTO_MAX_CLASSES, MIN_AGREEMENT, Preset, choose, preset
from slc.codecs.sparse import SparseLabels
from slc.errors import SlcInputError
from slc.extras import Extras, carried_extras, pruned_extras, tokens_digest, with_map, with_tokens
from slc.format.container import ENCODING_RAW, ENCODING_ZSTD, ContainerWriter, header_bytes
from slc.format.header import MAX_CHUNK_ELEMENTS, Header
from slc.format.tiling import SINCE_MINOR as TILING_MINOR, Tiling, most_epochs
from slc.format.tiling import allowed as tiling_allows
from slc.prune import PrunedSource, kept_epochs
from slc.resume import ResumableOutput
from slc.sample import HEAD_ELEMENTS, fit_sample, sample_blocks
from slc.sources import LabelSource, SlcSource, SparseSource, open_labels

DEFAULT_FIT_LABELS = 65536


@dataclass(frozen=True)
class CompressOptions:
    """What to write: every option of ``compress`` (and of ``encode``, ``encode_lm``, ``bench``) that changes
    the file's bytes. See ``slc compress --help``.

    ``temperature``: the one the student trains at; default the input ``.slc``'s own, else 1.
    ``options``: fixed parameters of the codec (``{"bits": 3}`` for ``quant``). ``fit_config``: a
    VQAE fit recipe (:class:`slc.codecs.vqae.FitConfig` as a dict; default the preset's).
    ``prune``: keep a random ``1/prune`` of the epochs (ratio and budget still count all of them).
    ``fit_samples``: fit only on positions below it in each epoch (``bench`` scores the rest).
    ``min_agreement``: ``auto`` keeps only codecs that keep the argmax of at least this share of held-out
    labels (0 lifts the constraint). ``user``: JSON kept in the header.
    """

    codec: str = "auto"
    source: str = "auto"
    temperature: float | None = None
    ratio: float | None = None
    budget: int | None = None
    k: int | None = None
    dc: int | None = None
    dh: int | None = None
    options: dict = field(default_factory=dict)
    chunk_size: int | None = None
    epochs_per_chunk: int | None = None  # None: as many whole epochs as a chunk holds (format 1.5)
    zstd: bool | None = None
    tensor_dtype: str | None = None
    fit_labels: int = DEFAULT_FIT_LABELS
    fit_config: dict | None = None
    seed: int = 0
    prune: float | None = None
    fit_samples: int | None = None
    min_agreement: float = MIN_AGREEMENT
    user: dict = field(default_factory=dict)

    @classmethod
    def of(cls, base: "CompressOptions | None" = None, **given) -> "CompressOptions":
        """``base`` with ``given`` fields replaced; a ``FitConfig`` object is kept as its dict."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - names)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown} (compress options: {', '.join(sorted(names))})")
        if given.get("fit_config") is not None and not isinstance(given["fit_config"], dict):
            given["fit_config"] = given["fit_config"].to_json()
        for key in ("options", "user"):
            if key in given and given[key] is None:
                given[key] = {}
        return replace(base or cls(), **given)


@dataclass
class CompressResult:
    path: str
    bytes: int
    dense_fp16: int
    plan: Plan
    source: str
    fit: dict
    codec: str = ""
    temperature: float = 1.0
    encode_seconds: float = 0.0  # in the codec's encode, over every label written (fit excluded)
    labels: int = 0

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


@dataclass
class Job:
    """One compress run, as :func:`open_job` resolved it."""

    src: LabelSource
    out: str
    opts: CompressOptions  # temperature and chunk size resolved
    preset: Preset
    extras: Extras
    dense: int  # fp16 bytes of the unpruned labels: what ratios are against
    log: Callable[[str], None]

    @property
    def zstd(self) -> bool:
        """Whether chunks are zstd-coded: as asked, else the codec's default."""
        return self.preset.cls.default_zstd if self.opts.zstd is None else self.opts.zstd

    @property
    def token_level(self) -> bool:
        return issubclass(self.preset.cls, TokenCodec)

    def frame(self) -> Frame:
        return self.extras.frame(self.src.shape, self.opts.chunk_size, self.opts.temperature, self.opts.user,
                                 self.dense, self.opts.epochs_per_chunk)

    @property
    def tiling(self) -> Tiling:
        e, n, _ = self.src.shape
        return Tiling(e, n, self.opts.chunk_size, self.opts.epochs_per_chunk)


def compress(labels, out: str | os.PathLike, opts: CompressOptions | None = None, *, force: bool = False,
             resume: bool = False, extras: Extras | None = None, sequences: np.ndarray | None = None,
             token_ids: np.ndarray | None = None, log: Callable[[str], None] | None = None,
             fit_progress: Callable | None = None, progress: Callable | None = None, **given) -> CompressResult:
    """Compress ``labels`` into ``out``: ``opts`` (a :class:`CompressOptions`) and/or its fields as keywords
    (``slc.compress(logits, "labels.slc", temperature=4.0, ratio=40)``).

    ``labels``: an array ``(N, C)`` / ``(E, N, C)``, a path (``.npy``, ``FILE.h5:/dataset``, ``.slc``), or a
    :class:`~slc.sources.LabelSource`. ``resume``: continue an interrupted run of the same call from its
    last finished chunk (:mod:`slc.resume`); the result is byte-identical. ``extras``: sections to add
    around the labels (``encode`` adds crop replay). Token-level labels (one epoch of ``(tokens, V)``):
    ``sequences`` (offsets or lengths) are stored so sequence i can be read directly, ``token_ids`` the
    input token at each position. ``progress(count, written, dense)`` after every chunk, and once more
    with the whole file's size.
    """
    job = open_job(labels, os.fspath(out), CompressOptions.of(opts, **given), extras, sequences, token_ids,
                   log or (lambda line: None))
    target = ResumableOutput(job.out, request(job, resume), force=force, resume=resume, log=job.log)
    with target:
        if target.resumed:
            enc, kind, plan, done = rebuild(job, target)
            first: list = []
            w = target.open()
            if progress and done:
                labels_done = sum(e.count for e in target.resumed.entries)
                progress(labels_done, w.position, labels_done * job.src.shape[2] * 2)
            blocks = job.src.blocks(job.opts.chunk_size, job.tiling.source_block(done))
        else:
            kind, first, blocks, head = sniff(job)
            enc, plan = plan_and_fit(job, kind, head, fit_progress)
            del head
            w, done = begin(job, enc, kind, plan, target), 0
        seconds = write_chunks(job, enc, kind, itertools.chain(first, ((e, s, b, None) for e, s, b in blocks)), w,
                               target, done, progress)
        w.end_chunks()
        for name, (_, parts) in job.extras.after.items():
            w.add_section_stream(name, parts(), required=False)
        size = w.finish()
        target.commit(force)
    if progress:  # the whole file now: the ratio the bar ends on is the one reported and inspected
        progress(0, size, job.dense)
    e, n, _ = job.src.shape
    return CompressResult(job.out, size, job.dense, plan, kind,
                          {**getattr(enc, "fit_info", {}), "seconds": enc.fit_seconds}, enc.name,
                          job.opts.temperature, seconds, e * n)


# ---------------------------------------------------------------- 1. open
def open_job(labels, out: str, opts: CompressOptions, extras: Extras | None, sequences, token_ids,
             log: Callable[[str], None]) -> Job:
    """The input, what goes around it, and every check that can fail before any work."""
    p = preset(opts.codec)
    src = open_labels(labels)
    temperature = resolve_temperature(src, opts.temperature, log)
    extras = extras or carried_extras(src)
    e, n, c = src.shape
    dense = dense_bytes(e * n, c)
    epoch_ids = src.f.epoch_ids if isinstance(src, SlcSource) else np.arange(e)
    if opts.prune is not None:
        kept = kept_epochs(e, opts.prune, opts.seed)
        src, epoch_ids, extras = PrunedSource(src, kept), epoch_ids[kept], pruned_extras(extras, kept, n)
    extras = with_map(extras, epoch_ids)
    extras = with_tokens(extras, sequences, token_ids, src.shape)
    chunk_size = opts.chunk_size or default_chunk_size(c, MAX_CHUNK_ELEMENTS)
    if isinstance(src, SparseSource) and temperature != 1:
        raise SlcInputError(f"expected `temperature=1` for already-sparse input (the shape of its tail is unknown), "
                            f"got {temperature:g}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise SlcInputError(f"expected a temperature > 0, got {temperature}")
    if chunk_size < 1 or chunk_size * c > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected 1 <= chunk size <= {MAX_CHUNK_ELEMENTS // c} for {c} classes, got {chunk_size}")
    if not 0 <= opts.min_agreement <= 1:
        raise SlcInputError(f"expected 0 <= `min_agreement` <= 1, got {opts.min_agreement}")
    if opts.min_agreement != MIN_AGREEMENT and not p.chooses:
        raise SlcInputError(f"expected `min_agreement` only with a codec that chooses (auto), got `codec='{p.name}'`")
    check_options(p, opts.options, {n: v for n, v in (("k", opts.k), ("dc", opts.dc), ("dh", opts.dh)) if v is not None})
    opts = replace(opts, temperature=temperature, chunk_size=chunk_size,
                   epochs_per_chunk=epochs_per_chunk(src.shape, chunk_size, opts.epochs_per_chunk))
    job = Job(src, out, opts, p, extras, dense, log)
    if isinstance(src, SparseSource) and not job.token_level:
        raise SlcInputError(f"expected `codec='topk-vq'` for sparse (indices, values) input, got {p.name!r}")
    return job


def epochs_per_chunk(shape: tuple[int, int, int], chunk_size: int, given: int | None) -> int:
    """Whole epochs a chunk holds: as many as fit unless given (1: chunks never span epochs)."""
    e, n, _ = shape
    if given is None:
        return Tiling.default(e, n, chunk_size).epochs_per_chunk
    if not tiling_allows(e, n, chunk_size, given):
        raise SlcInputError(f"expected epochs per chunk 1, or 2..{most_epochs(e, n, chunk_size)} for {e} epochs "
                            f"of {n} labels and chunks of {chunk_size}, got {given}")
    return given


def resolve_temperature(src: LabelSource, temperature: float | None, log: Callable[[str], None]) -> float:
    """The temperature to store: the input ``.slc``'s own unless one is given; a change is logged."""
    if not isinstance(src, SlcSource):
        return 1.0 if temperature is None else temperature
    stored = src.f.temperature
    if temperature is None:
        return stored
    if temperature != stored:
        log(f"temperature: re-tempering {src.name} from its stored T={stored:g} to T={temperature:g}: the labels "
            f"(and what a student learns from them) change")
    return temperature


# ---------------------------------------------------------------- 2. resume
def request(job: Job, resume: bool) -> dict:
    """What identifies the run for ``resume``: every option, the input, and the sections around the labels."""
    return {**asdict(job.opts), "shape": list(job.src.shape), "tokens": tokens_digest(job.extras),
            **(job.extras.request or input_identity(job.src, resume))}


def input_identity(src: LabelSource, resume: bool) -> dict:
    """Enough to notice a changed input file between a run and its ``--resume``.

    Recorded by every run, resumed or not: a run interrupted without ``--resume`` is resumable.
    """
    name = src.name.partition(":")[0]
    if not src.seekable:
        if resume:
            raise SlcInputError("expected a labels file to resume (`resume=True`), got a stream (stdin cannot be "
                                "replayed)")
        return {"input": src.name}
    try:
        st = os.stat(name)
    except OSError:
        return {"input": src.name}
    return {"input": os.path.abspath(src.name), "input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}


def rebuild(job: Job, target: ResumableOutput) -> tuple[Codec, Kind, Plan, int]:
    """The codec, source kind and chunk count of an interrupted run, read back from its partial file."""
    r = target.resumed
    header = Header.from_json(json.loads(r.data["header"]))
    tensors = {name: np.frombuffer(r.data[name], np.dtype(spec["dtype"])).reshape(spec["shape"])
               for name, spec in header.tensors.items()}
    enc = codec_class(header.codec).from_file(header.codec_params, tensors, job.src.shape[2])
    if r.state:
        enc.restore_encoder_state(r.state)
    job.opts = replace(job.opts, zstd=header.entropy == "zstd")
    return enc, header.source, Plan(enc.name, header.codec_params, 0, job.dense, ["resumed"]), len(r.entries)


# ---------------------------------------------------------------- 3. sniff
Block = tuple  # (epoch, first sample, raw block or None, log-probabilities or None)


def sniff(job: Job) -> tuple[Kind, list[Block], Iterator, np.ndarray | None]:
    """Read the first blocks: they decide logits or probabilities, and a stream's are also its fit sample,
    kept once as the log-probabilities the write loop needs anyway (memory 1x the sample)."""
    src, opts = job.src, job.opts
    e_count, n, c = src.shape
    blocks = src.blocks(opts.chunk_size)
    sparse = isinstance(src, SparseSource)
    want = min(opts.fit_labels, e_count * n, HEAD_ELEMENTS // c) if job.preset.needs_fit and not src.seekable else 1
    head = np.empty((want + opts.chunk_size, c), np.float32) if want > 1 else None
    first: list[Block] = []
    got, kind = 0, "logits"
    for e, s, block in blocks:
        if not first and not sparse:
            kind = detect_source(block) if opts.source == "auto" else opts.source
        if not sparse:
            check_block(block, kind, e * n + s, job.token_level)
        lp = None
        if head is not None:
            lp = head[got:got + len(block)]
            lp[:] = to_logp(block, kind, opts.temperature)
            if not job.token_level:  # token codecs select from the raw block (same bytes as a file input)
                block = None
        first.append((e, s, block, lp))
        got += len(lp if lp is not None else block)
        if got >= want:
            break
    return kind, first, blocks, None if head is None else head[:want]


# ---------------------------------------------------------------- 5. fit
def fit(job: Job, kind: Kind, head: np.ndarray | None, plan: Plan | None, progress: Callable | None) -> tuple[Codec, Plan]:
    """The codec for ``plan``, fitted on a sample (``head``: a stream's first rows); ``auto`` chooses."""
    opts, p = job.opts, job.preset
    sample = fit_input(job, kind, head, plan) if p.needs_fit else None
    fit_config = p.fit_config(config=_fit_config(opts)) if p.fits_vqae else None
    c = job.src.shape[2]
    if p.chooses:
        plans, refused = {}, {}
        for name in sorted(set(p.chooses) - set(p.candidates(c))):
            job.log(f"auto: {name} is left out above {AUTO_MAX_CLASSES[name]:,} classes (slower, and worse there)")
        for name in p.candidates(c):
            try:
                plans[name] = plan_for(name, job.src.shape, opts.chunk_size, opts.ratio, opts.budget,
                                       tensor_dtype=opts.tensor_dtype, frame=job.frame())
            except Unreachable as e:  # out of this codec's reach: another one may make it
                refused[name] = e
        enc, plan = choose(p, plans, refused, sample, c, tensor_dtype=opts.tensor_dtype, fit_config=fit_config,
                           progress=progress, log=job.log, min_agreement=opts.min_agreement)
        for line in plan.why:
            job.log(f"plan: {line}")
        return enc, plan
    enc = p.build(plan.params, sample, c, tensor_dtype=opts.tensor_dtype, fit_config=fit_config, progress=progress,
                  seed=opts.seed)
    return enc, plan


def fit_input(job: Job, kind: Kind, head: np.ndarray | None, plan: Plan):
    """What the codec is fitted on: the fit sample's log-probabilities, or what a token codec keeps of them."""
    opts, src = job.opts, job.src
    if job.token_level:
        return job.preset.cls.reduce_sample(fit_blocks(job, kind, head), src.shape[2],
                                            {**job.preset.options, **plan.params})
    rows = min(opts.fit_labels, src.shape[0] * src.shape[1])
    return head if head is not None else fit_sample(src, kind, opts.temperature, rows, opts.seed, opts.fit_samples)


def fit_blocks(job: Job, kind: Kind, head: np.ndarray | None):
    """A token codec's fit sample, block by block (a vocabulary's worth of rows is read a few at a time)."""
    opts, (e_count, n, _) = job.opts, job.src.shape
    if head is not None:
        return [head]
    return sample_blocks(job.src, kind, opts.temperature, min(opts.fit_labels, e_count * n), opts.seed,
                         opts.fit_samples, neg_inf=True)


def probes(job: Job, kind: Kind, head: np.ndarray | None) -> tuple[list, Kind, float]:
    """Up to two runs of one chunk of consecutive rows, as the writer codes them: the first and one from the
    middle (a stream: the first two of its head, log-probabilities already), with their kind and temperature."""
    cs, n = job.opts.chunk_size, job.src.shape[1]
    if head is not None:
        return [head[s:s + cs] for s in range(0, min(len(head), 2 * cs), cs)], "logits", 1.0
    middle = n // 2 - n // 2 % cs
    return [job.src.read(0, s, min(n, s + cs)) for s in sorted({0, middle})], kind, job.opts.temperature


def plan_and_fit(job: Job, kind: Kind, head: np.ndarray | None, progress: Callable | None) -> tuple[Codec, Plan]:
    """Plan against the whole file's bytes, then fit (``auto``: fit each and choose).

    A token codec sized to a target after zstd is planned on measured chunk bytes; once fitted its value
    codes are measured too, and a file that would then miss ``[R, 1.1 R]`` is re-planned and refitted once.
    """
    opts = job.opts
    payload, runs = None, None
    if job.token_level and job.zstd and (opts.ratio is not None or opts.budget is not None):
        runs = probes(job, kind, head)
        payload = job.preset.cls.measured_payload(fit_blocks(job, kind, head), runs[0], job.src.shape[2],
                                                  {**job.preset.options, **opts.options})

    def planned() -> Plan | None:
        if job.preset.chooses:
            return None
        return plan_for(opts.codec, job.src.shape, opts.chunk_size, opts.ratio, opts.budget, opts.k, opts.dc,
                        opts.dh, opts.tensor_dtype, opts.options, job.frame(), payload)

    plan = planned()
    for line in plan.why if plan else ():
        job.log(f"plan: {line}")
    enc, plan = fit(job, kind, head, plan, progress)
    if payload is None:
        return enc, plan
    share = payload.calibrate(enc, *runs)
    plan.bytes = job.frame().bytes(job.preset.cls, plan.params, payload)
    job.log(f"plan: fitted, its value codes keep {100 * share:.0f}% of their bytes after zstd: {plan.bytes:,} "
            f"bytes = {plan.ratio:.1f}x")
    target = target_bytes(job.dense, opts.ratio, opts.budget)
    if FILL * target <= plan.bytes <= target:
        return enc, plan
    again = planned()
    if again.params == plan.params:
        return enc, plan
    for line in again.why:
        job.log(f"plan: refitting at {line}")
    return fit(job, kind, head, again, progress)


def _fit_config(opts: CompressOptions):
    if opts.fit_config is None:
        return None
    from slc.codecs.vqae import FitConfig

    return FitConfig(**opts.fit_config)


# ---------------------------------------------------------------- 6. write
def begin(job: Job, enc: Codec, kind: Kind, plan: Plan, target: ResumableOutput) -> ContainerWriter:
    """Header, tensors and the sections before the chunks; durable before the first chunk."""
    opts = job.opts
    e, n, c = job.src.shape
    if opts.chunk_size * enc.work_per_label() > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected chunk size <= {MAX_CHUNK_ELEMENTS // enc.work_per_label()} for this codec, "
                            f"got {opts.chunk_size}")
    zstd = enc.default_zstd if opts.zstd is None else opts.zstd
    job.opts = replace(opts, zstd=zstd)
    if not zstd:  # a week-long run should not find out at the end (zstd sizes are not known ahead)
        check_space(job.out, plan.bytes)
    tensors = enc.tensors()
    header = Header(c, e, n, float(opts.temperature), kind, enc.name, enc.params(),
                    {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in tensors.items()},
                    opts.chunk_size, "zstd" if zstd else "none", f"slc {__version__}", opts.user, opts.epochs_per_chunk)
    w = target.open()
    w.add_section("header", header_bytes(header.to_json()))
    for name, a in tensors.items():
        w.add_section(name, np.ascontiguousarray(a).tobytes())
    for name, data in job.extras.required.items():
        w.add_section(name, data, required=True)
    for name, data in job.extras.before.items():
        w.add_section(name, data, required=False)
    w.begin_chunks()
    target.chunks_begun(enc.encoder_state())
    return w


def write_chunks(job: Job, enc: Codec, kind: Kind, blocks, w: ContainerWriter, target: ResumableOutput, done: int,
                 progress: Callable | None) -> float:
    """Every block through the codec into its chunk, in order; returns the seconds spent encoding."""
    _, n, c = job.src.shape
    tiling, temperature = job.tiling, job.opts.temperature
    compressor = None
    if job.opts.zstd:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=enc.zstd_level)
    seconds = 0.0
    w.min_minor = max(enc.since_minor, TILING_MINOR if tiling.spans_epochs else 0)
    parts, rows, i = [], 0, done  # the blocks of chunk i so far (chunks that span epochs take several)
    for e, s, block, lp in blocks:
        if i >= len(tiling):
            raise SlcInputError(f"expected {len(tiling)} chunks of labels, got a source with more")
        ce, cs, count = tiling.chunk(i)
        want = (ce + rows // n, 0) if tiling.spans_epochs else (ce, cs)
        if (e, s) != want:  # a source must tile in order
            raise SlcInputError(f"expected a block at epoch {want[0]} sample {want[1]}, got epoch {e} sample {s}")
        if not isinstance(block, SparseLabels):
            if lp is None:
                check_block(block, kind, e * n + s, job.token_level)
            if job.token_level:  # top k straight from the teacher's output: no dense log-softmax written
                block, lp = enc.select(block, kind, temperature), None
            elif lp is None:
                lp = to_logp(block, kind, temperature)
        parts.append(block if lp is None else lp)
        rows += len(parts[-1])
        if rows < count:
            continue
        if rows > count:
            raise SlcInputError(f"expected {count} labels in chunk {i}, got a block that ends at {rows}")
        t0 = time.perf_counter()
        raw = enc.encode_sparse(parts[0]) if lp is None else enc.encode(parts[0] if len(parts) == 1 else
                                                                          np.concatenate(parts))
        seconds += time.perf_counter() - t0
        encoding, payload = ENCODING_RAW, raw
        if compressor is not None:
            z = compressor.compress(raw)
            if len(z) < len(raw):
                encoding, payload = ENCODING_ZSTD, z
        target.chunk_done(w.add_chunk(ce, cs, count, payload, len(raw), encoding))
        if progress:
            progress(count, w.position, (ce * n + cs + count) * c * 2)  # dense fp16 bytes so far
        parts, rows, i = [], 0, i + 1
    if parts:
        raise SlcInputError(f"expected {tiling.chunk(i)[2]} labels in chunk {i}, got a source that ends after {rows}")
    return seconds
