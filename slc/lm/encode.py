"""``encode-lm``: run a causal LM teacher-forced over text and stream its next-token labels into a ``.slc``.

The teacher's log-probabilities come chunk by chunk (:func:`slc.lm_teacher.iter_logp`), go through
the ``topk-vq`` codec and are written at once: memory holds one chunk of ``V`` floats per token,
whatever the text's length. The file records where each sequence starts and the input tokens, so
a student can read sequence ``i`` with its targets without the teacher or the tokenizer.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator

import numpy as np

from slc.compression import CompressOptions, CompressResult, compress
from slc.extras import Extras
from slc.format.parts import PartSpec
from slc.errors import SlcInputError
from slc.format.header import MAX_CHUNK_ELEMENTS
from slc.lm.teacher import LMTeacher, iter_logp, load_lm_teacher, offsets_of
from slc.resume import preflight
from slc.sources import LabelSource
from slc.codecs.planner import default_chunk_size

LM_FIT_LABELS = 16384  # tokens of the text's start the codec is fitted on (held in memory: tokens x V floats)


class LMSource(LabelSource):
    """The teacher's log-probabilities at every token of ``sequences``, in order (a stream: one pass).

    Blocks stay on the teacher's device (``on_device``), where ``topk-vq`` selects its words: the host gets
    the top k, their values and the tails, plus the dense rows of the fit sample once. They are checked
    as they are made (no NaN, a finite entry per row), so the writer does not check them again.
    """

    seekable = False
    checked = True

    def __init__(self, teacher: LMTeacher, sequences: list[np.ndarray],
                 on_tokens: Callable[[int, int], None] | None = None, on_device: bool = True):
        self.teacher, self.sequences, self.on_device = teacher, sequences, on_device
        self.name, self.dtype = "teacher", np.dtype(np.float32)
        self.shape = (1, int(sum(len(s) for s in sequences)), teacher.vocab)
        self.on_tokens = (lambda n: on_tokens(n, self.progress_total or self.shape[1])) if on_tokens else None

    def blocks(self, rows: int, first: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        # temperature 1 here: compress applies the file's temperature (log_softmax(logp / T) = log_softmax(z / T));
        # a resume after the last chunk was journaled asks for first * rows >= the token count: nothing is left
        for start, block in iter_logp(self.teacher, self.sequences, batch_tokens=rows,
                                      start_token=min(first * rows, self.shape[1]), on_device=self.on_device,
                                      progress=self.on_tokens):
            yield 0, start, block

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        raise SlcInputError("expected to read the teacher in order, got a random read")


def text_digest(sequences: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for s in sequences:
        h.update(np.asarray(s, "<i8").tobytes())
        h.update(b"|")
    return h.hexdigest()


def encode_lm(teacher: str | LMTeacher, text: str | os.PathLike, out: str | os.PathLike,
              opts: CompressOptions | None = None, *, vocab_file: str | None = None, seq_len: int | None = None,
              device: str = "cpu", allow_pickle: bool = False, force: bool = False, resume: bool = False,
              log: Callable[[str], None] | None = None, progress: Callable | None = None,
              on_tokens: Callable[[int, int], None] | None = None, part: PartSpec | None = None,
              codec_from: str | os.PathLike | None = None, device_select: bool = True, **given) -> CompressResult:
    """Label every token of ``text`` (plain text, one sequence per line, or JSONL) with ``teacher``.

    ``teacher``: a TorchScript file or a local ``transformers`` model directory (see
    :func:`slc.lm.teacher.load_lm_teacher`), or a loaded :class:`LMTeacher`. ``opts`` and/or its fields
    as keywords (:class:`~slc.compression.CompressOptions`: ``temperature``, ``options`` for the
    ``topk-vq`` parameters ``k``, ``m``, ``codes``, ``values``, ``tail``, ``prior_weight``, ``fit_labels``
    (16,384 tokens by default), ...). ``on_tokens(n, total)``: the teacher labelled ``n`` more of ``total``
    tokens. ``device_select=False`` copies the dense log-probabilities to the host and selects there (the
    bytes are the same on a CPU teacher; on an accelerator only float rounding and exact ties differ).
    """
    opts = CompressOptions.of(opts or CompressOptions(codec="topk-vq", fit_labels=LM_FIT_LABELS), **given,
                              source="logits")
    log = log or (lambda line: None)
    out = os.fspath(out)
    preflight(out, force, resume)  # before the teacher loads and the text is tokenized
    if not isinstance(teacher, LMTeacher):
        teacher = load_lm_teacher(os.fspath(teacher), allow_pickle=allow_pickle, device=device, log=log)
    sequences = teacher.read(os.fspath(text), vocab_file=vocab_file, seq_len=seq_len)
    offsets = offsets_of(sequences)
    ids = np.concatenate(sequences)
    # the selection's normaliser and tails are float64, which Apple's MPS lacks: there it runs on the host
    src = LMSource(teacher, sequences, on_tokens, on_device=device_select and teacher.device.type != "mps")
    n, vocab = src.shape[1], src.shape[2]
    log(f"teacher: {vocab:,} words on {teacher.device} ({teacher.kind}); text: {len(sequences):,} sequences, "
        f"{n:,} tokens from {os.fspath(text)}")
    opts = CompressOptions.of(opts, chunk_size=opts.chunk_size or default_chunk_size(vocab, MAX_CHUNK_ELEMENTS))
    extras = Extras()
    extras.request = {"teacher": teacher.fingerprint(), "text": text_digest(sequences), "device": teacher.device.type,
                      "seq_len": seq_len}
    return compress(src, out, opts, force=force, resume=resume, extras=extras, sequences=offsets, token_ids=ids,
                    log=log, progress=progress, part=part, codec_from=codec_from)
