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
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Iterator

import numpy as np

from slc import __version__, distributed
from slc.atomic import check_output, check_space
from slc.codecs import codec_class
from slc.codecs.base import Codec, Kind, TokenCodec
from slc.codecs.labels import check_block, detect_source, to_logp
from slc.codecs.planner import (FILL, Frame, Plan, Unreachable, check_options, default_chunk_size, dense_bytes,
                                plan_for, target_bytes)
from slc.codecs.presets import AUTO_MAX_CLASSES, MIN_AGREEMENT, Preset, choose, preset
from slc.codecs.sparse import SparseLabels
from slc.errors import SlcError, SlcInputError
from slc.extras import Extras, carried_extras, pruned_extras, tokens_digest, with_map, with_tokens
from slc.format.container import ENCODING_RAW, ENCODING_ZSTD, ContainerWriter, header_bytes
from slc.format.header import MAX_CHUNK_ELEMENTS, Header
from slc.format.parts import PART, PartInfo, PartSpec, adopt_codec, byte_slice, label_range, state_sections
from slc.format.sections import minor_for
from slc.format.tiling import SINCE_MINOR as TILING_MINOR, Tiling, most_epochs
from slc.format.tiling import allowed as tiling_allows
from slc.prune import PrunedSource, kept_epochs
from slc.merge_parts import OpenPart, merge, read_state, setup_bytes
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
    part: str = ""  # a part file: which ("chunks 0..9 of 30", "a codec file (no chunks)")

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
    part: PartSpec | None = None  # write only this part of the file (slc.format.parts)
    codec_from: str | None = None  # a part or codec file whose codec to use instead of fitting

    @property
    def chunk_range(self) -> tuple[int, int]:
        """The chunks this job writes: all of them, or its part's."""
        return (0, len(self.tiling)) if self.part is None else self.part.chunks(self.tiling)

    @property
    def labels(self) -> tuple[int, int]:
        """The labels (``epoch * samples + sample``) this job writes: all of them, or its part's."""
        return label_range(self.tiling, *self.chunk_range)

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
             fit_progress: Callable | None = None, progress: Callable | None = None, part: PartSpec | None = None,
             codec_from: str | os.PathLike | None = None, **given) -> CompressResult:
    """Compress ``labels`` into ``out``: ``opts`` (a :class:`CompressOptions`) and/or its fields as keywords
    (``slc.compress(logits, "labels.slc", temperature=4.0, ratio=40)``).

    ``labels``: an array ``(N, C)`` / ``(E, N, C)``, a path (``.npy``, ``FILE.h5:/dataset``, ``.slc``), or a
    :class:`~slc.sources.LabelSource`. ``resume``: continue an interrupted run of the same call from its
    last finished chunk (:mod:`slc.resume`); the result is byte-identical. ``extras``: sections to add
    around the labels (``encode`` adds crop replay). Token-level labels (one epoch of ``(tokens, V)``):
    ``sequences`` (offsets or lengths) are stored so sequence i can be read directly, ``token_ids`` the
    input token at each position. ``progress(count, written, dense)`` after every chunk, and once more
    with the whole file's size.

    Scale-out (:mod:`slc.format.parts`): ``part`` (a :class:`~slc.format.parts.PartSpec`) writes one part
    of the file for :func:`slc.merge`; ``codec_from`` takes the fitted codec from a part or codec file
    instead of fitting. Under ``torchrun`` every rank writes its share and ``out`` is joined at the end:
    the same bytes as one process.
    """
    job = open_job(labels, os.fspath(out), CompressOptions.of(opts, **given), extras, sequences, token_ids,
                   log or (lambda line: None), part, codec_from)
    group = distributed.group()
    if group is None:
        fitted = load_codec(job, job.codec_from) if job.codec_from else None
        return write(job, force=force, resume=resume, fitted=fitted, fit_progress=fit_progress, progress=progress)
    try:
        if part is not None or codec_from is not None:
            raise SlcInputError(f"expected `part` and `codec_from` only without torchrun (it splits the work itself), "
                                f"got WORLD_SIZE={group.world}")
        if not (job.src.seekable or job.extras.request):
            raise SlcInputError(f"expected a labels file under torchrun (every rank reads its own share), got a stream "
                                f"({job.src.name})")
        return compress_ranks(job, group, force=force, resume=resume, fit_progress=fit_progress, progress=progress)
    finally:
        group.close()


@dataclass
class Fitted:
    """A codec fitted before the write: by this job, by rank 0, or read from a codec file (``setup``)."""

    codec: Codec
    kind: Kind
    plan: Plan
    first: list = field(default_factory=list)  # blocks the fit already read
    blocks: Iterator | None = None  # the block iterator after them (None: start at the job's first chunk)
    setup: list | None = None  # from a codec file: the sections before the chunks, with its codec's fields and tensors


def write(job: Job, *, force: bool, resume: bool, fitted: Fitted | None = None, fit_progress: Callable | None = None,
          progress: Callable | None = None) -> CompressResult:
    """Stages 2-6 for one process: ``job.out`` (the whole file, or the part ``job.part`` names).

    ``fitted``: a codec fitted elsewhere (a codec file, rank 0), with any blocks it already read.
    """
    first_chunk, stop_chunk = job.chunk_range
    if job.part is not None:
        job.src.work_on(job.labels[1] - job.labels[0])
    target = ResumableOutput(job.out, request(job, resume), force=force, resume=resume, log=job.log)
    with target:
        if target.resumed:
            enc, kind, plan, done = rebuild(job, target)
            first: list = []
            w = target.open()
            w.min_minor = file_minor(job, enc, [s.name for s in w.sections])
            if progress and done:
                labels_done = sum(e.count for e in target.resumed.entries)
                progress(labels_done, w.position, labels_done * job.src.shape[2] * 2)
            blocks = job.src.blocks(job.opts.chunk_size, job.tiling.source_block(first_chunk + done))
        else:
            if fitted is None:
                fitted = fit_here(job, fit_progress)
            enc, kind, plan, first, blocks = fitted.codec, fitted.kind, fitted.plan, fitted.first, fitted.blocks
            if first_chunk > 0 or blocks is None:  # a part fits on the whole file's sample, then reads its own chunks
                first, blocks = [], job.src.blocks(job.opts.chunk_size, job.tiling.source_block(first_chunk))
            w, done = begin(job, enc, kind, plan, target, fitted.setup), 0
        seconds = 0.0
        if first_chunk + done < stop_chunk:
            # a part reads no block past its last chunk: for a teacher, that block is a chunk of wasted work
            at = len(first) if first else job.tiling.source_block(first_chunk + done)
            blocks = itertools.islice(blocks, max(0, job.tiling.source_block(stop_chunk) - at))
            seconds = write_chunks(job, enc, kind, itertools.chain(first, ((e, s, b, None) for e, s, b in blocks)), w,
                                   target, first_chunk + done, progress)
        w.end_chunks()
        for name, (size, parts) in job.extras.after.items():
            w.add_section_stream(name, after_part(job, size, parts), required=False)
        size = w.finish()
        target.commit(force)
    if progress:  # the whole file now: the ratio the bar ends on is the one reported and inspected
        progress(0, size, job.dense)
    return result(job, size, Fitted(enc, kind, plan), seconds,
                  "" if job.part is None else PartInfo(first_chunk, stop_chunk, len(job.tiling), 0).describe())


def result(job: Job, size: int, fitted: Fitted, seconds: float, part: str = "") -> CompressResult:
    enc = fitted.codec
    e, n, _ = job.src.shape
    return CompressResult(job.out, size, job.dense, fitted.plan, fitted.kind,
                          {**getattr(enc, "fit_info", {}), "seconds": enc.fit_seconds}, enc.name,
                          job.opts.temperature, seconds, e * n, part)


def after_part(job: Job, size: int, parts: Callable):
    """A section after the chunks, or in a part the records of its labels (those sections hold one per label)."""
    if job.part is None:
        return parts()
    labels = job.src.shape[0] * job.src.shape[1]
    if size % labels:
        raise SlcInputError(f"expected sections after the chunks with one record per label in a part, got {size:,} "
                            f"bytes for {labels:,} labels")
    per = size // labels
    return byte_slice(parts(), job.labels[0] * per, job.labels[1] * per)


# ---------------------------------------------------------------- scale-out
def parts_folder(out: str) -> str:
    """Where a ``torchrun`` job keeps the fitted codec and each rank's part until they are joined."""
    return out + ".parts"


def part_path(folder: str, rank: int, world: int) -> str:
    return os.path.join(folder, f"part-{rank:05d}-of-{world:05d}.slc")


def compress_ranks(job: Job, group: distributed.Group, *, force: bool, resume: bool, fit_progress: Callable | None,
                   progress: Callable | None) -> CompressResult:
    """Every rank writes its share of the chunks as a part; rank 0 fits the codec first and joins the parts last.

    The codec travels as a codec file in ``OUT.parts/`` (a shared folder, as ``OUT`` itself must be), so a
    resumed run reuses it rather than fitting again, and every rank encodes with the same arrays.
    """
    folder = parts_folder(job.out)
    codec_path = os.path.join(folder, "codec.slc")
    if not group.main:
        job.log = lambda line: None
        fit_progress = progress = None
    fitted, err = None, None
    if group.main:
        try:
            fitted = fit_shared(job, folder, codec_path, force=force, resume=resume, fit_progress=fit_progress)
        except Exception as e:
            err = distributed.message(e)
            raise
        finally:
            group.broadcast(err)
    elif (err := group.broadcast()) is not None:
        raise SlcError(f"rank 0 failed to fit the codec: {err}")
    part_job = replace(job, out=part_path(folder, group.rank, group.world),
                       part=PartSpec(share=(group.rank, group.world)))
    first, stop = part_job.chunk_range
    if fitted is None:
        fitted = load_codec(part_job, codec_path)
    # A rank that fails here exits at once with its error: torchrun then stops the others (SIGTERM), which
    # keep their finished chunks, and `--resume` goes on from every rank's last one.
    if first < stop and not (resume and os.path.exists(part_job.out)):  # a finished part is checked at the merge
        write(part_job, force=True, resume=resume, fitted=fitted, progress=progress)
    job.log(f"rank 0: chunks {first}..{stop - 1} of {len(job.tiling)} written; waiting for the other "
            f"{group.world - 1} rank(s)")
    group.barrier()
    size, err = 0, None
    if group.main:
        try:
            shares = [PartSpec(share=(r, group.world)).chunks(job.tiling) for r in range(group.world)]
            paths = [part_path(folder, r, group.world) for r, (a, b) in enumerate(shares) if a < b]
            t0 = time.perf_counter()
            size = merge(paths, job.out, force=force)
            job.log(f"merge: {len(paths)} parts joined into {job.out} in {time.perf_counter() - t0:.1f} s")
            shutil.rmtree(folder, ignore_errors=True)
        except Exception as e:  # the others wait for word of the merge: tell them, then fail here too
            err = distributed.message(e)
    size, err = group.broadcast((size, err))
    if err is not None:
        raise SlcError(f"rank 0 failed to join the parts: {err}")
    if progress:
        progress(0, size, job.dense)
    return result(job, size, fitted, 0.0)


def fit_shared(job: Job, folder: str, codec_path: str, *, force: bool, resume: bool,
               fit_progress: Callable | None) -> Fitted:
    """Rank 0: check the output, then fit the codec (or reuse a resumed run's) and write it as a codec file."""
    check_output(job.out, force)
    if os.path.exists(folder) and not resume:
        if not force:
            raise SlcInputError(f"expected no interrupted run at {job.out}, got {folder}; pass `resume=True` to "
                                "continue it or `force=True` to start over")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(codec_path):  # resumed: the codec every part was written with
        job.log(f"resume: the codec of the interrupted run, from {codec_path}")
        return load_codec(job, codec_path)
    fitted = fit_here(job, fit_progress)
    write(replace(job, out=codec_path, part=PartSpec(codec_only=True)), force=True, resume=False,
          fitted=replace(fitted, first=[], blocks=None))
    return fitted


def fit_here(job: Job, fit_progress: Callable | None) -> Fitted:
    """Stages 3-5: sniff, plan and fit, keeping the blocks read on the way for the write."""
    if job.chunk_range[0] > 0 and job.opts.source != "auto" and not (job.preset.needs_fit or job.token_level):
        enc, plan = plan_and_fit(job, job.opts.source, None, fit_progress)  # a later part reads nothing to plan
        return Fitted(enc, job.opts.source, plan)
    kind, first, blocks, head = sniff(job)
    enc, plan = plan_and_fit(job, kind, head, fit_progress)
    return Fitted(enc, kind, plan, first, blocks)


def load_codec(job: Job, path: str) -> Fitted:
    """The codec of a part or codec file, checked to belong to ``job`` (same header, sections, recipe)."""
    from slc.reader import SlcFile

    with SlcFile(path, part=True) as f:
        if f.part is None:
            raise SlcInputError(f"expected a part or codec file to take the codec from, got a whole .slc: {path} "
                                "(any part of the run, or one written with `part=PartSpec(codec_only=True)`)")
        setup = setup_bytes(OpenPart(path, f, f.part))
        enc = codec_from_sections(f.header, setup, read_state(f, f.part), job.src.shape[2])
        kind = f.header.source
    adopted = adopt_codec(setup_sections(job, enc, kind), setup, path)  # a codec of another run fails now
    return Fitted(enc, kind, Plan(enc.name, enc.params(), 0, job.dense, [f"the codec of {path}"]), setup=adopted)


# ---------------------------------------------------------------- 1. open
def open_job(labels, out: str, opts: CompressOptions, extras: Extras | None, sequences, token_ids,
             log: Callable[[str], None], part: PartSpec | None = None, codec_from=None) -> Job:
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
    job = Job(src, out, opts, p, extras, dense, log, part, None if codec_from is None else os.fspath(codec_from))
    if part is not None:
        if not (src.seekable or extras.request):
            raise SlcInputError(f"expected a labels file to write a part of, got a stream ({src.name} cannot be "
                                "skipped to a part's first chunk)")
        first, stop = part.chunks(job.tiling)  # an epoch range off the chunk grid fails here, before any work
        if first == stop and not part.codec_only:
            raise SlcInputError(f"expected a part with at least one chunk, got part {part.share[0]}/{part.share[1]} "
                                f"of a file of {len(job.tiling)} chunks (split it into at most {len(job.tiling)})")
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
    parts = {"part": job.part.to_json(), "codec_from": job.codec_from} if job.part or job.codec_from else {}
    return {**asdict(job.opts), "shape": list(job.src.shape), "tokens": tokens_digest(job.extras), **parts,
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
    enc = codec_from_sections(header, r.data, r.state, job.src.shape[2])
    job.opts = replace(job.opts, zstd=header.entropy == "zstd")
    return enc, header.source, Plan(enc.name, header.codec_params, 0, job.dense, ["resumed"]), len(r.entries)


def codec_from_sections(header: Header, data: dict[str, bytes], state: dict, classes: int) -> Codec:
    """A codec rebuilt from its header and tensor sections, with the encoder arrays the file does not store."""
    tensors = {name: np.frombuffer(data[name], np.dtype(spec["dtype"])).reshape(spec["shape"])
               for name, spec in header.tensors.items()}
    enc = codec_class(header.codec).from_file(header.codec_params, tensors, classes)
    if state:
        enc.restore_encoder_state(state)
    return enc


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
            kind = detect_source(host(block)) if opts.source == "auto" else opts.source
        if not sparse and not src.checked:
            check_block(block, kind, e * n + s, job.token_level)
        lp = None
        if head is not None:  # the fit sample crosses to the host once, dense; a token codec's blocks stay put
            lp = head[got:got + len(block)]
            lp[:] = to_logp(host(block), kind, opts.temperature)
            if not job.token_level:  # token codecs select from the raw block (same bytes as a file input)
                block = None
        first.append((e, s, block, lp))
        got += len(lp if lp is not None else block)
        if got >= want:
            break
    return kind, first, blocks, None if head is None else head[:want]


def check_selected(s: SparseLabels, raw, row0: int) -> None:
    """:func:`check_block` for logits, from their top k: a row with a NaN, a +inf or no finite logit has a NaN
    normaliser, so its largest value is NaN; only such a row is checked again (one pass less over the block)."""
    bad = np.isnan(s.logp[:, 0])
    if bad.any():
        r = int(np.argmax(bad))
        check_block(host(raw[r:r + 1]), "logits", row0 + r, neg_inf=True)
        raise SlcInputError(f"expected finite labels or -inf, got a row whose normaliser is NaN: row {row0 + r}")


def host(block) -> np.ndarray:
    """A block as a host array (a source may leave its blocks as tensors on the teacher's device)."""
    return block if isinstance(block, np.ndarray) else block.cpu().numpy()


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
def setup_sections(job: Job, enc: Codec, kind: Kind) -> list[tuple[str, bytes, bool]]:
    """``(name, body, required)`` of every section before the chunks, in file order (the header first)."""
    opts = job.opts
    e, n, c = job.src.shape
    tensors = enc.tensors()
    zstd = enc.default_zstd if opts.zstd is None else opts.zstd
    header = Header(c, e, n, float(opts.temperature), kind, enc.name, enc.params(),
                    {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in tensors.items()},
                    opts.chunk_size, "zstd" if zstd else "none", f"slc {__version__}", opts.user,
                    opts.epochs_per_chunk)
    return [("header", header_bytes(header.to_json()), True),
            *((name, np.ascontiguousarray(a).tobytes(), True) for name, a in tensors.items()),
            *((name, data, True) for name, data in job.extras.required.items()),
            *((name, data, False) for name, data in job.extras.before.items())]


def file_minor(job: Job, enc: Codec, names) -> int:
    """The minor version of the whole file: the lowest whose codecs, tiling and sections it uses."""
    return max(enc.since_minor, TILING_MINOR if job.tiling.spans_epochs else 0,
               minor_for([*names, *job.extras.after]))


def begin(job: Job, enc: Codec, kind: Kind, plan: Plan, target: ResumableOutput,
          setup: list | None = None) -> ContainerWriter:
    """Header, tensors and the sections before the chunks; durable before the first chunk.

    A part adds its ``part`` section and the codec's encoder arrays (``state.<name>``) last, so that
    leaving them out gives the whole file's sections in the whole file's order. ``setup``: those sections
    as :func:`load_codec` adopted them from a codec file (its codec's header fields and tensors, as they are).
    """
    opts = job.opts
    if opts.chunk_size * enc.work_per_label() > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected chunk size <= {MAX_CHUNK_ELEMENTS // enc.work_per_label()} for this codec, "
                            f"got {opts.chunk_size}")
    job.opts = replace(opts, zstd=enc.default_zstd if opts.zstd is None else opts.zstd)
    if not job.opts.zstd:  # a week-long run should not find out at the end (zstd sizes are not known ahead)
        a, b = job.labels
        check_space(job.out, -(-plan.bytes * (b - a) // (job.src.shape[0] * job.src.shape[1])))  # a part: its share
    setup = setup or setup_sections(job, enc, kind)
    w = target.open()
    for name, data, required in setup:
        w.add_section(name, data, required=required)
    w.min_minor = file_minor(job, enc, [name for name, _, _ in setup])
    if job.part is not None:
        first, stop = job.chunk_range
        specs, bodies = state_sections(enc.encoder_state())
        w.add_section(PART, PartInfo(first, stop, len(job.tiling), w.min_minor, specs).to_bytes(), required=True)
        for name, data in bodies.items():
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
    first_label, stop = job.labels[0], job.chunk_range[1]
    parts, rows, i = [], 0, done  # the blocks of chunk i so far (chunks that span epochs take several)
    for e, s, block, lp in blocks:
        if i >= stop:
            if stop < len(tiling):  # a part: the rest is another part's
                break
            raise SlcInputError(f"expected {len(tiling)} chunks of labels, got a source with more")
        ce, cs, count = tiling.chunk(i)
        want = (ce + rows // n, 0) if tiling.spans_epochs else (ce, cs)
        if (e, s) != want:  # a source must tile in order
            raise SlcInputError(f"expected a block at epoch {want[0]} sample {want[1]}, got epoch {e} sample {s}")
        if not isinstance(block, SparseLabels):
            selected = job.token_level and kind == "logits"  # checked from what the selection gives
            if lp is None and not job.src.checked and not selected:
                check_block(block, kind, e * n + s, job.token_level)
            if job.token_level:  # top k straight from the teacher's output (on its device): no dense log-softmax
                raw, block, lp = block, enc.select(block, kind, temperature), None
                if selected and not job.src.checked:
                    check_selected(block, raw, e * n + s)
            elif lp is None:
                lp = to_logp(host(block), kind, temperature)
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
            progress(count, w.position, (ce * n + cs + count - first_label) * c * 2)  # dense fp16 bytes so far
        parts, rows, i = [], 0, i + 1
    if parts or i < stop:
        raise SlcInputError(f"expected {tiling.chunk(i)[2]} labels in chunk {i}, got a source that ends after {rows}")
    return seconds
