"""The sections around the labels: what a caller adds (crop replay, token offsets), what recompressing
an ``.slc`` carries over, and what pruning keeps of them."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from slc.codecs.planner import Frame
from slc.errors import SlcInputError, expect
from slc.format.sections import BOX_DTYPE, BOXES, EPOCHS_MAP, TOKENS_IDS, TOKENS_SEQ, check_offsets, ids_bytes, \
    map_bytes, seq_bytes
from slc.sources import LabelSource, SlcSource


@dataclass
class Extras:
    """Optional sections a caller adds around the labels (``encode`` adds the replay sections, token files theirs)."""

    before: dict[str, bytes] = field(default_factory=dict)  # written before the chunks
    required: dict[str, bytes] = field(default_factory=dict)  # likewise, flagged REQUIRED (epochs.map)
    after: dict[str, tuple[int, Callable[[], Iterable[bytes]]]] = field(default_factory=dict)  # (size, parts)
    request: dict = field(default_factory=dict)  # what else identifies the run for --resume

    def frame(self, shape: tuple[int, int, int], chunk_size: int, temperature: float, user: dict | None,
              dense: int, epochs_per_chunk: int | None = None) -> Frame:
        """The file around the labels, as the planner counts it."""
        return Frame.of(shape, chunk_size, temperature=temperature, user=user, dense=dense,
                        epochs_per_chunk=epochs_per_chunk,
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




def with_map(extras: Extras, epoch_ids: np.ndarray) -> Extras:
    """A pruned file's (or a recompressed pruned file's) REQUIRED ``epochs.map``; none when epochs are 0..E-1."""
    if np.array_equal(epoch_ids, np.arange(len(epoch_ids))):
        return extras
    return Extras(dict(extras.before), {**extras.required, EPOCHS_MAP: map_bytes(epoch_ids)}, dict(extras.after),
                  dict(extras.request))


def with_tokens(extras: Extras, sequences: np.ndarray | None, token_ids: np.ndarray | None,
                shape: tuple[int, int, int]) -> Extras:
    """A token file's ``tokens.seq`` (sequence offsets, or lengths) and ``tokens.ids`` (the input tokens)."""
    if sequences is None and token_ids is None:
        return extras
    e, n, c = shape
    if e != 1:
        raise SlcInputError(f"expected token labels of shape (tokens, V) with sequences or token ids, got {e} epochs")
    before = dict(extras.before)
    if sequences is not None:
        before[TOKENS_SEQ] = seq_bytes(check_offsets(sequences, n))
    if token_ids is not None:
        before[TOKENS_IDS] = ids_bytes(token_ids, n, c)
    return Extras(before, dict(extras.required), dict(extras.after), dict(extras.request))
