"""``compress``: fit a codec on a sample of labels, then stream every label through it into a ``.slc``."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from slc import __version__
from slc.atomic import check_space
from slc.vision.augment import BOX_DTYPE
from slc.codecs import codec_class
from slc.codecs.base import Codec, Kind
from slc.codecs.vqae import VQAECodec
from slc.format.container import ENCODING_RAW, ENCODING_ZSTD, header_bytes
from slc.errors import SlcInputError, expect
from slc.format.header import MAX_CHUNK_ELEMENTS, Header
from slc.codecs.labels import check_block, detect_source, retemper, to_logp
from slc.fidelity import Fidelity
from slc.codecs.presets import LADDER_PRESETS, PRESETS
from slc.prune import PrunedSource, kept_epochs
from slc.resume import ResumableOutput
from slc.codecs.planner import Frame, Plan, Unreachable, default_chunk_size, dense_bytes, plan_ladder, plan_vqae, target_bytes
from slc.sources import LabelSource, SlcSource, SparseSource, open_labels
from slc.codecs.sparse import SparseLabels
from slc.format.sections import BOXES, EPOCHS_MAP, TOKENS_IDS, TOKENS_SEQ, check_offsets, ids_bytes, map_bytes, seq_bytes
from slc.codecs.vqae import FitConfig

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
    temperature: float = 1.0
    encode_seconds: float = 0.0  # in the codec's encode, over every label written (fit excluded)
    labels: int = 0

    @property
    def ratio(self) -> float:
        return self.dense_fp16 / self.bytes


def plan_for(codec: str, shape: tuple[int, int, int], chunk_size: int, ratio: float | None = None,
             budget: int | None = None, k: int | None = None, dc: int | None = None, dh: int | None = None,
             tensor_dtype: str | None = None, options: dict | None = None, frame: Frame | None = None) -> Plan:
    """Choose codec parameters for labels of ``shape = (E, N, C)``, counting the whole file's bytes.

    Lossy codecs default to ``DEFAULT_RATIO`` unless a budget or every size parameter is given.
    ``frame``: the rest of the file (header fields, replay and token sections, the fp16 bytes the
    ratio is against); by default labels alone.
    """
    frame = frame or Frame.of(shape, chunk_size)
    c = frame.classes
    options = dict(options or {})
    check_options(codec, options)
    if k is not None and codec in ("topk", "topk-mr", "topk-mrs", "vq-noae"):
        options["k"] = k
    if dc is not None and codec == "vq-noae":
        options["dc"] = dc
    fixed = codec in ("fp16", "fp32") or (codec in ("vqae", "vqae-paper", "auto") and None not in (k, dc, dh))
    if codec in LADDER_PRESETS and not fixed:  # options that pin every knob (--k 5, --param bits=2) need no target
        name, preset = LADDER_PRESETS[codec]
        try:
            fixed = len(codec_class(name).ladder(c, {**preset, **options})) == 1
        except ValueError:
            pass  # bad options: plan_ladder below says which
    if ratio is None and budget is None and not fixed:
        ratio = DEFAULT_RATIO
    target = target_bytes(frame.dense, ratio, budget)
    tensor_dtype = tensor_dtype or default_tensor_dtype(codec)
    if codec in ("vqae", "vqae-paper", "auto"):
        plan = plan_vqae(frame, target, k=k, dc=dc, dh=dh, dtype=tensor_dtype, bias=codec != "vqae-paper")
    elif codec in LADDER_PRESETS:
        name, preset = LADDER_PRESETS[codec]
        if codec in ("fp16", "fp32") and target is not None:
            raise SlcInputError(f"expected no --ratio/--budget for the dense {codec} codec (its ratio is fixed)")
        plan = plan_ladder(codec_class(name), codec, frame, target, {**preset, **options})
    else:
        raise SlcInputError(f"expected a codec in {list(PRESETS)}, got {codec!r}")
    if frame.others:
        plan.why.append(f"other sections (replay, tokens) {frame.others:,} bytes, counted in the file's "
                        f"{plan.bytes:,} bytes = {plan.ratio:.1f}x")
    return plan


def check_options(codec: str, options: dict) -> None:
    """Refuse a parameter the codec does not take, rather than ignore it."""
    if not options:
        return
    if codec not in LADDER_PRESETS:
        why = " (auto picks its codec: name one to fix its parameters)" if codec == "auto" else \
            " (its size parameters are k, dc and dh)"
        raise SlcInputError(f"expected no --param with --codec {codec}{why}, got {', '.join(sorted(options))}")
    allowed = codec_class(LADDER_PRESETS[codec][0]).option_names
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SlcInputError(f"expected --param keys that {codec} takes ({', '.join(allowed) or 'none'}), got "
                            f"{', '.join(unknown)}")


def default_tensor_dtype(codec: str) -> str:
    """fp16 codebook/decoder for our VQAE (no measurable KL cost, half the overhead); fp32 as published."""
    return "<f4" if codec == "vqae-paper" else "<f2"


SAMPLE_BLOCK_ELEMENTS = 1 << 26  # floats per block read for a fit sample (256 MB): large vocabularies read fewer rows
HEAD_ELEMENTS = 1 << 28  # floats of a stream's first rows kept as its fit sample


def sample_blocks(src: LabelSource, source: Source, temperature: float, labels: int, seed: int,
                  fit_samples: int | None = None, neg_inf: bool = False) -> Iterator[np.ndarray | SparseLabels]:
    """Blocks of up to ``labels`` rows spread over a seekable source, as log-probabilities.

    ``fit_samples`` limits the sample to positions below it in each epoch (the rest is held out).
    Sparse sources yield their rows as they are.
    """
    e_count, full_n, c = src.shape
    n = min(full_n, fit_samples or full_n)

    def read(e: int, s: int, stop: int):
        block = src.read(e, s, stop)
        if isinstance(block, SparseLabels):
            return block
        check_block(block, source, e * full_n + s, neg_inf)
        return to_logp(block, source, temperature)

    rows = max(1, min(4096, SAMPLE_BLOCK_ELEMENTS // c))
    if labels >= e_count * n:
        for e in range(e_count):
            for s in range(0, n, rows):
                yield read(e, s, min(n, s + rows))
        return
    rng = np.random.default_rng(seed)
    # whole runs of 256 rows at random places: few seeks, still a spread-out sample
    run = min(256, n)
    per_epoch = n // run  # runs never cross an epoch boundary
    count = min(e_count * per_epoch, math.ceil(labels / run))
    runs = np.sort(rng.choice(e_count * per_epoch, size=count, replace=False))
    left = labels
    for r in runs:
        e, s = divmod(int(r), per_epoch)
        s *= run
        yield read(e, s, s + min(run, left))
        left -= run


def fit_sample(src: LabelSource, source: Source, temperature: float, labels: int, seed: int,
               fit_samples: int | None = None) -> np.ndarray:
    """:func:`sample_blocks` as one ``(rows, C)`` array, filled in place (no list + concatenate copy)."""
    e_count, full_n, c = src.shape
    n = min(full_n, fit_samples or full_n)
    out = np.empty((min(labels, e_count * n), c), np.float32)
    at = 0
    for block in sample_blocks(src, source, temperature, labels, seed, fit_samples):
        out[at:at + len(block)] = block
        at += len(block)
    return out[:at]  # fewer than asked when the runs of 256 cannot cover it


def needs_fit(codec: str) -> bool:
    if codec in ("auto", "vqae", "vqae-paper"):
        return True
    return codec in LADDER_PRESETS and codec_class(LADDER_PRESETS[codec][0]).needs_fit


def build_codec(plan: Plan, preset: str, logp: np.ndarray | None, classes: int, tensor_dtype: str,
                fit_config: FitConfig | None, progress: Callable | None, seed: int = 0) -> Codec:
    p = plan.params
    if preset in ("vqae", "vqae-paper"):
        cfg = fit_config or (FitConfig.paper() if preset == "vqae-paper" else FitConfig())
        return VQAECodec.fit(logp, p["k"], p["dc"], p["dh"], cfg, tensor_dtype, progress)
    t0 = time.perf_counter()
    codec = codec_class(LADDER_PRESETS[preset][0]).fit(logp, classes, p, seed)
    codec.fit_seconds = time.perf_counter() - t0
    return codec


def sample_kl(codec: Codec, logp: np.ndarray) -> float:
    """Mean KL(y || decoded) of ``codec`` on log-probabilities ``logp``."""
    meter = Fidelity()
    for s in range(0, len(logp), 4096):
        block = logp[s:s + 4096]
        labels, kind = codec.decode(codec.encode(block), len(block))
        meter.update(block, retemper(labels, kind, 1.0, "probs"))
    return meter.result()["kl"]


def choose_auto(frame: Frame, ratio, budget, logp: np.ndarray, tensor_dtype: str | None,
                fit_config: FitConfig | None, progress, log) -> tuple[Codec, Plan]:
    """Fit the VQAE and size top-k to the same bytes; keep whichever has the lower held-out KL.

    The temperature decides: peaked labels (T near 1) favour top-k, soft ones the VQAE.
    """
    shape = (frame.epochs, frame.samples, frame.classes)
    plans, refused = {}, {}
    for name, kw in (("vqae", {"tensor_dtype": tensor_dtype}), ("topk", {})):
        try:
            plans[name] = plan_for(name, shape, frame.chunk_size, ratio, budget, frame=frame, **kw)
        except Unreachable as e:  # the target is out of this codec's reach: the other one may make it
            refused[name] = e
    if not plans:  # the nearest reachable ratio of the two
        raise min(refused.values(), key=lambda e: e.smallest)
    if refused:
        (ok, plan), (other, err) = next(iter(plans.items())), next(iter(refused.items()))
        log(f"auto: {other} cannot reach the target ({err}) -> {ok}")
        return build_codec(plan, ok, logp, frame.classes, tensor_dtype or "<f2", fit_config, progress), plan
    vq_plan, tk_plan = plans["vqae"], plans["topk"]
    hold = min(AUTO_HOLDOUT, len(logp) // 5)
    fit_part, held = (logp[:-hold], logp[-hold:]) if hold >= 64 else (logp, logp)
    vq = build_codec(vq_plan, "vqae", fit_part, frame.classes, tensor_dtype or "<f2", fit_config, progress)
    tk = build_codec(tk_plan, "topk", None, frame.classes, "<f2", None, None)
    kl_vq, kl_tk = sample_kl(vq, held), sample_kl(tk, held)
    pick = (vq, vq_plan) if kl_vq <= kl_tk else (tk, tk_plan)
    log(f"auto: KL on {len(held):,} held-out labels: vqae {kl_vq:.4g} ({vq_plan.ratio:.1f}x), "
        f"top-{tk.k} {kl_tk:.4g} ({tk_plan.ratio:.1f}x) -> {pick[0].name}")
    return pick


@dataclass
class Extras:
    """Optional sections a caller adds around the labels (``encode`` adds the replay sections, token files theirs)."""

    before: dict[str, bytes] = field(default_factory=dict)  # written before the chunks
    required: dict[str, bytes] = field(default_factory=dict)  # likewise, flagged REQUIRED (epochs.map)
    after: dict[str, tuple[int, Callable[[], Iterable[bytes]]]] = field(default_factory=dict)  # (size, parts)
    request: dict = field(default_factory=dict)  # what else identifies the run for --resume

    def frame(self, shape: tuple[int, int, int], chunk_size: int, temperature: float, user: dict | None,
              dense: int) -> Frame:
        """The file around the labels, as the planner counts it."""
        return Frame.of(shape, chunk_size, temperature=temperature, user=user, dense=dense,
                        before=[len(v) for v in (*self.required.values(), *self.before.values())],
                        after=[size for size, _ in self.after.values()])


def carried_extras(src: LabelSource) -> Extras:
    """Recompressing an ``.slc`` keeps its replay sections, so the result still replays crops."""
    if not isinstance(src, SlcSource):
        return Extras()
    before, after = src.carried()
    return Extras(before, {name: (size, lambda name=name: src.section_parts(name)) for name, size in after.items()})


def pruned_extras(extras: Extras, kept: np.ndarray, samples: int) -> Extras:
    """The carried sections of a pruned file: per-label crop boxes of the kept epochs only."""
    per = samples * BOX_DTYPE.itemsize
    before, after = dict(extras.before), {}
    if BOXES in before:
        data = before[BOXES]
        expect(len(data) % per == 0, f"whole epochs of {BOXES}", f"{len(data)} bytes")
        before[BOXES] = b"".join(data[int(e) * per:(int(e) + 1) * per] for e in kept)
    for name, (size, parts) in extras.after.items():
        if name != BOXES:
            raise SlcInputError(f"expected sections slc can prune, got {name!r} ({size:,} bytes)")
        expect(size % per == 0, f"whole epochs of {name}", f"{size} bytes")
        after[name] = (per * len(kept), lambda parts=parts: _epochs_of(parts(), per, kept))
    return Extras(before, dict(extras.required), after, extras.request)


def _epochs_of(parts: Iterable[bytes], per: int, kept: np.ndarray):
    """The records of the ``kept`` epochs from a stream of ``per``-byte epoch records."""
    want, buf, e = set(int(k) for k in kept), b"", 0
    for part in parts:
        buf += part
        while len(buf) >= per:
            if e in want:
                yield buf[:per]
            buf, e = buf[per:], e + 1


def tokens_digest(extras: Extras) -> str | None:
    """Identifies the sequence boundaries and token ids of a run, so ``--resume`` notices new ones."""
    parts = [extras.before.get(name) for name in (TOKENS_SEQ, TOKENS_IDS)]
    if parts == [None, None]:
        return None
    return hashlib.sha256(b"|".join(p or b"" for p in parts)).hexdigest()


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


def input_identity(src: LabelSource, resume: bool) -> dict:
    """Enough to notice a changed input file between a run and its ``--resume``.

    Recorded by every run, resumed or not: a run interrupted without ``--resume`` is resumable.
    """
    name = src.name.partition(":")[0]
    if not src.seekable:
        if resume:
            raise SlcInputError("expected a labels file to --resume, got a stream (stdin cannot be replayed)")
        return {"input": src.name}
    try:
        st = os.stat(name)
    except OSError:
        return {"input": src.name}
    return {"input": os.path.abspath(src.name), "input_bytes": st.st_size, "input_mtime_ns": st.st_mtime_ns}


def compress(labels, out: str | os.PathLike, *, codec: str = "auto", source: str = "auto",
             temperature: float | None = None,
             ratio: float | None = None, budget: int | None = None, k: int | None = None, dc: int | None = None,
             dh: int | None = None, chunk_size: int | None = None, zstd: bool | None = None, tensor_dtype: str | None = None,
             fit_labels: int = DEFAULT_FIT_LABELS, fit_config: FitConfig | None = None, seed: int = 0,
             force: bool = False, resume: bool = False, user: dict | None = None, extras: Extras | None = None,
             options: dict | None = None, prune: float | None = None, fit_samples: int | None = None,
             sequences: np.ndarray | None = None, token_ids: np.ndarray | None = None,
             log: Callable[[str], None] | None = None, fit_progress: Callable | None = None,
             progress: Callable | None = None) -> CompressResult:
    """Compress ``labels`` into ``out``; see ``slc compress --help`` for the options.

    ``labels``: an array ``(N, C)`` / ``(E, N, C)``, a path (``.npy``, ``FILE.h5:/dataset``), or a
    :class:`~slc.sources.LabelSource`. With ``resume``, an interrupted run of the same call is
    continued from its last finished chunk (``slc.resume``); the result is byte-identical.
    ``options``: fixed parameters of a baseline codec (``{"bits": 3}`` for ``quant``).
    ``prune``: keep a random ``1/prune`` of the epochs (``slc.prune``); ``ratio``/``budget`` still
    count against the unpruned labels. ``fit_samples``: fit only on positions ``< fit_samples``
    of each epoch (``slc bench`` scores the rest). ``chunk_size``: default 4096 labels, fewer for
    large vocabularies. ``zstd``: default on for codecs made for it (``topk-vq``).

    Token-level labels (one epoch of ``(tokens, V)``): ``sequences`` (offsets or lengths) are
    stored so sequence i can be read directly, ``token_ids`` the input token at each position.

    ``temperature``: the one the student trains at. Default: the input's own for an ``.slc`` (its
    labels are kept as they are), else 1. A different temperature re-tempers an ``.slc``'s labels
    and says so in the log.
    """
    src = open_labels(labels)
    out = os.fspath(out)
    log = log or (lambda line: None)
    temperature = resolve_temperature(src, temperature, log)
    extras = extras or carried_extras(src)
    dense_in = dense_bytes(src.shape[0] * src.shape[1], src.shape[2])
    epoch_ids = src.f.epoch_ids if isinstance(src, SlcSource) else np.arange(src.shape[0])
    if prune is not None:
        kept = kept_epochs(src.shape[0], prune, seed)
        src, epoch_ids, extras = PrunedSource(src, kept), epoch_ids[kept], pruned_extras(extras, kept, src.shape[1])
    if not np.array_equal(epoch_ids, np.arange(len(epoch_ids))):
        extras.required[EPOCHS_MAP] = map_bytes(epoch_ids)
    e_count, n, c = src.shape
    token_level = codec in LADDER_PRESETS and codec_class(LADDER_PRESETS[codec][0]).token_level
    chunk_size = chunk_size or default_chunk_size(c, MAX_CHUNK_ELEMENTS)
    if sequences is not None or token_ids is not None:
        if e_count != 1:
            raise SlcInputError(f"expected token labels of shape (tokens, V) with --seq/--token-ids, got {e_count} epochs")
        extras = Extras({**extras.before}, dict(extras.required), dict(extras.after), dict(extras.request))
        if sequences is not None:
            extras.before[TOKENS_SEQ] = seq_bytes(check_offsets(sequences, n))
        if token_ids is not None:
            extras.before[TOKENS_IDS] = ids_bytes(token_ids, n, c)
    if isinstance(src, SparseSource) and temperature != 1:
        raise SlcInputError(f"expected --temperature 1 for already-sparse input (the shape of its tail is unknown), "
                            f"got {temperature:g}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise SlcInputError(f"expected a temperature > 0, got {temperature}")
    if chunk_size < 1 or chunk_size * c > MAX_CHUNK_ELEMENTS:
        raise SlcInputError(f"expected 1 <= chunk size <= {MAX_CHUNK_ELEMENTS // c} for {c} classes, got {chunk_size}")
    if codec == "auto" and (k, dc, dh) != (None, None, None):
        raise SlcInputError("expected --codec vqae or topk with --k/--dc/--dh, got --codec auto")
    fit_steps = fit_config.steps if fit_config else None
    request = {"codec": codec, "source": source, "temperature": temperature, "ratio": ratio, "budget": budget,
               "k": k, "dc": dc, "dh": dh, "chunk_size": chunk_size, "zstd": zstd, "tensor_dtype": tensor_dtype,
               "fit_labels": fit_labels, "fit_steps": fit_steps, "seed": seed, "shape": list(src.shape),
               "options": options or {}, "prune": prune, "fit_samples": fit_samples,
               "user": user or {}, "tokens": tokens_digest(extras),
               **(extras.request or input_identity(src, resume))}
    target = ResumableOutput(out, request, force=force, resume=resume, log=log)
    per_epoch = -(-n // chunk_size)

    with target:
        if target.resumed:
            r = target.resumed
            header = Header.from_json(json.loads(r.data["header"]))
            tensors = {name: np.frombuffer(r.data[name], np.dtype(spec["dtype"])).reshape(spec["shape"])
                       for name, spec in header.tensors.items()}
            enc = codec_class(header.codec).from_file(header.codec_params, tensors, c)
            if r.state:
                enc.restore_encoder_state(r.state)
            kind: Kind = header.source  # type: ignore[assignment]
            zstd = header.entropy == "zstd"
            plan = Plan(enc.name, header.codec_params, 0, dense_in, ["resumed"])
            done = len(r.entries)
            blocks = src.blocks(chunk_size, done)
            first = []
            w = target.open()
            if progress and done:
                labels_done = sum(e.count for e in r.entries)
                progress(labels_done, w._pos, labels_done * c * 2)
        else:
            # the first blocks decide the source kind; a stream's are also its fit sample, kept once,
            # as the log-probabilities the write loop needs anyway (so memory is 1x the sample)
            blocks = src.blocks(chunk_size)
            fitting = needs_fit(codec)
            want = min(fit_labels, e_count * n, HEAD_ELEMENTS // c) if fitting and not src.seekable else 1
            head = np.empty((want + chunk_size, c), np.float32) if want > 1 else None
            first, got = [], 0
            sparse = isinstance(src, SparseSource)
            if sparse and not token_level:
                raise SlcInputError(f"expected --codec topk-vq for sparse (indices, values) input, got {codec!r}")
            for e, s, block in blocks:
                if not first:
                    kind = ("logits" if sparse else detect_source(block)  # type: ignore[assignment]
                            if source == "auto" else source)
                if not sparse:
                    check_block(block, kind, e * n + s, token_level)
                lp = None
                if head is not None:
                    lp = head[got:got + len(block)]
                    lp[:] = to_logp(block, kind, temperature)
                    if not token_level:  # token codecs select from the raw block (same bytes as a file input)
                        block = None  # type: ignore[assignment]
                first.append((e, s, block, lp))
                got += len(first[-1][3] if lp is not None else block)
                if got >= want:
                    break
            frame = extras.frame(src.shape, chunk_size, temperature, user, dense_in)
            plan = plan_for(codec, src.shape, chunk_size, ratio, budget, k, dc, dh, tensor_dtype, options, frame)
            for line in plan.why:
                log(f"plan: {line}")
            logp = None
            if fitting:
                cls = VQAECodec if codec in ("auto", "vqae", "vqae-paper") else codec_class(LADDER_PRESETS[codec][0])
                rows = min(fit_labels, e_count * n)
                blocks_of_sample = [head[:want]] if head is not None else sample_blocks(src, kind, temperature, rows,
                                                                                         seed, fit_samples, token_level)
                if cls.reduce_sample.__func__ is Codec.reduce_sample.__func__:  # type: ignore[attr-defined]
                    logp = head[:want] if head is not None else fit_sample(src, kind, temperature, rows, seed,
                                                                           fit_samples)
                else:
                    logp = cls.reduce_sample(blocks_of_sample, c, plan.params)
            if codec == "auto":
                enc, plan = choose_auto(frame, ratio, budget, logp, tensor_dtype, fit_config, fit_progress, log)
            else:
                enc = build_codec(plan, codec, logp, c, tensor_dtype or default_tensor_dtype(codec), fit_config,
                                  fit_progress, seed)
            del logp, head
            if chunk_size * enc.work_per_label() > MAX_CHUNK_ELEMENTS:
                raise SlcInputError(f"expected chunk size <= {MAX_CHUNK_ELEMENTS // enc.work_per_label()} for this "
                                    f"codec, got {chunk_size}")
            zstd = enc.default_zstd if zstd is None else zstd
            if not zstd:  # a week-long run should not find out at the end (zstd sizes are not known ahead)
                check_space(os.fspath(out), plan.bytes)
            tensors = enc.tensors()
            header = Header(c, e_count, n, float(temperature), kind, enc.name, enc.params(),
                            {name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in tensors.items()},
                            chunk_size, "zstd" if zstd else "none", f"slc {__version__}", user or {})
            w = target.open()
            w.add_section("header", header_bytes(header.to_json()))
            for name, a in tensors.items():
                w.add_section(name, np.ascontiguousarray(a).tobytes())
            for name, data in extras.required.items():
                w.add_section(name, data, required=True)
            for name, data in extras.before.items():
                w.add_section(name, data, required=False)
            w.begin_chunks()
            target.chunks_begun(enc.encoder_state())
            done = 0

        compressor = None
        if zstd:
            import zstandard

            compressor = zstandard.ZstdCompressor(level=enc.zstd_level)
        rest = ((e, s, block, None) for e, s, block in blocks)
        encode_seconds = 0.0
        w.min_minor = enc.since_minor
        for i, (e, s, block, lp) in enumerate(itertools.chain(first, rest), start=done):
            if (e, s) != (i // per_epoch, i % per_epoch * chunk_size):  # a source must tile in order
                raise SlcInputError(f"expected block {i} at epoch {i // per_epoch}, got epoch {e} sample {s}")
            if isinstance(block, SparseLabels):
                pass
            elif token_level:  # top k straight from the teacher's output: no dense log-softmax written
                if lp is None:
                    check_block(block, kind, e * n + s, token_level)
                block, lp = enc.select(block, kind, temperature), None  # type: ignore[attr-defined]
            elif lp is None:
                check_block(block, kind, e * n + s)
                lp = to_logp(block, kind, temperature)
            count = len(block if lp is None else lp)
            t_enc = time.perf_counter()
            raw = enc.encode(lp) if lp is not None else enc.encode_sparse(block)  # type: ignore[attr-defined]
            encode_seconds += time.perf_counter() - t_enc
            encoding, payload = ENCODING_RAW, raw
            if compressor is not None:
                z = compressor.compress(raw)
                if len(z) < len(raw):
                    encoding, payload = ENCODING_ZSTD, z
            target.chunk_done(w.add_chunk(e, s, count, payload, len(raw), encoding))
            if progress:
                progress(count, w._pos, (e * n + s + count) * c * 2)  # dense fp16 bytes so far
        w.end_chunks()
        for name, (size, parts) in extras.after.items():
            w.add_section_stream(name, parts(), required=False)
        size = w.finish()
        target.commit(force)
    if progress:  # the whole file now: the ratio the bar ends on is the one reported and inspected
        progress(0, size, dense_in)
    return CompressResult(out, size, dense_in, plan, kind,
                          {**getattr(enc, "fit_info", {}), "seconds": enc.fit_seconds}, enc.name, temperature,
                          encode_seconds, e_count * n)
