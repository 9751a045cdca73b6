"""Every section name a ``.slc`` file can hold, the format minor version that introduced it, and the
bodies of the small ones that are not a codec's tensors (``epochs.map``, ``tokens.seq``, ``tokens.ids``).

Required sections: ``header`` (JSON), ``index`` (48 bytes per chunk), ``chunks``, and in a pruned
file ``epochs.map`` (u32 per stored epoch: the recipe epoch it was relabelled in, strictly
increasing). A codec's tensors are required sections named after the codec (``vqae.decoder``).
Optional: ``replay``, ``images.fp``, ``crops.boxes``, and for imported crops ``crops.order`` and
``crops.mix`` (crop replay, see :mod:`slc.vision.replay`),
and in a token file (one epoch whose samples are the tokens of all sequences, concatenated):

- ``tokens.seq``: ``S + 1`` little-endian u64 offsets, 0 first, strictly increasing, the token
  count last; sequence ``i`` holds tokens ``[offsets[i], offsets[i + 1])``;
- ``tokens.ids``: one little-endian u32 per token, the input token at that position (label ``t``
  is the teacher's distribution of the token after it), each ``< classes``.
"""
from __future__ import annotations

import numpy as np

from slc.errors import SlcFormatError, SlcInputError, expect

HEADER, INDEX, CHUNKS = "header", "index", "chunks"
EPOCHS_MAP = "epochs.map"
REPLAY, FINGERPRINTS, BOXES = "replay", "images.fp", "crops.boxes"
ORDER, MIX = "crops.order", "crops.mix"  # imported crops (1.7): the image and the mix of every label, as stored
TOKENS_SEQ, TOKENS_IDS = "tokens.seq", "tokens.ids"
# the minor version that introduced each section; a writer marks a file with the lowest that fits
SINCE_MINOR = {HEADER: 0, INDEX: 0, CHUNKS: 0, REPLAY: 1, FINGERPRINTS: 1, BOXES: 1, EPOCHS_MAP: 2,
               TOKENS_SEQ: 3, TOKENS_IDS: 3, "part": 6, ORDER: 7, MIX: 7}

BOX_DTYPE = np.dtype([("y", "<u2"), ("x", "<u2"), ("h", "<u2"), ("w", "<u2"), ("flip", "u1"), ("pad", "u1")])
assert BOX_DTYPE.itemsize == 10  # crops.boxes: one record per label, in label order
# crops.mix: one record per label, in label order: mixed with the crop at position `partner` of the same
# epoch, with weight `lam` (mixup) or the partner's pixels in rows [y0, y1) and columns [x0, x1) (cutmix)
MIX_DTYPE = np.dtype([("lam", "<f8"), ("partner", "<u4"), ("y0", "<u2"), ("x0", "<u2"), ("y1", "<u2"), ("x1", "<u2")])
assert MIX_DTYPE.itemsize == 20
ORDER_DTYPE = np.dtype("<u4")  # crops.order: the image index of every label, in label order
MAP_DTYPE = np.dtype("<u4")
SEQ_DTYPE = np.dtype("<u8")
IDS_DTYPE = np.dtype("<u4")


def minor_for(names) -> int:
    """The lowest minor version whose sections include all of ``names`` (unknown names: 0, they are a codec's)."""
    return max((SINCE_MINOR.get(n, 0) for n in names), default=0)


def map_bytes(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, MAP_DTYPE).tobytes()


def parse_map(data: bytes, epochs: int) -> np.ndarray:
    """Validate an ``epochs.map`` body: ``epochs`` strictly increasing u32 recipe epochs."""
    expect(len(data) == epochs * MAP_DTYPE.itemsize, f"{epochs * MAP_DTYPE.itemsize} bytes of epochs.map "
           f"({epochs} epochs)", len(data))
    ids = np.frombuffer(data, MAP_DTYPE).astype(np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise SlcFormatError("expected strictly increasing epochs in epochs.map, got a repeat or a step back")
    return ids


def check_offsets(seq: np.ndarray, tokens: int) -> np.ndarray:
    """User-given sequence boundaries, as offsets ``[0, ..., tokens]`` or as positive lengths summing to ``tokens``."""
    a = np.asarray(seq)
    if a.ndim != 1 or a.dtype.kind not in "iu" or a.size == 0:
        raise SlcInputError(f"expected a 1-D integer array of sequence offsets or lengths, got {a.dtype} {a.shape}")
    a = a.astype(np.int64)
    if a[0] != 0:  # lengths
        if (a <= 0).any() or a.sum() != tokens:
            raise SlcInputError(f"expected positive sequence lengths summing to {tokens} tokens, got a sum of "
                                f"{int(a.sum())}" + (" with a length <= 0" if (a <= 0).any() else ""))
        a = np.concatenate([[0], np.cumsum(a)])
    if a[-1] != tokens:
        raise SlcInputError(f"expected sequence offsets ending at the {tokens} tokens, got {int(a[-1])}")
    if len(a) < 2 or not (np.diff(a) > 0).all():
        raise SlcInputError("expected strictly increasing sequence offsets (no empty sequence), got a repeat or "
                            "a step back")
    return a


def seq_bytes(offsets: np.ndarray) -> bytes:
    return np.ascontiguousarray(offsets, SEQ_DTYPE).tobytes()


def parse_seq(data: bytes, tokens: int) -> np.ndarray:
    expect(len(data) % 8 == 0 and 16 <= len(data) <= 8 * (tokens + 1),
           f"2..{tokens + 1} u64 offsets in {TOKENS_SEQ}", f"{len(data)} bytes")
    a = np.frombuffer(data, SEQ_DTYPE)
    expect(a[0] == 0 and a[-1] == tokens, f"offsets from 0 to {tokens} in {TOKENS_SEQ}", f"{a[0]}..{a[-1]}")
    if not (np.diff(a.astype(np.int64)) > 0).all() or a.max() > tokens:
        raise SlcFormatError(f"expected strictly increasing offsets in {TOKENS_SEQ}, got a repeat or a step back")
    return a.astype(np.int64)


def ids_bytes(ids: np.ndarray, tokens: int, classes: int) -> bytes:
    a = np.asarray(ids)
    if a.shape != (tokens,) or a.dtype.kind not in "iu":
        raise SlcInputError(f"expected {tokens} integer token ids, got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= classes):
        raise SlcInputError(f"expected token ids in [0, {classes}), got {int(a.min())}..{int(a.max())}")
    return np.ascontiguousarray(a, IDS_DTYPE).tobytes()


def parse_ids(data: bytes, tokens: int, classes: int) -> np.ndarray:
    expect(len(data) == 4 * tokens, f"{4 * tokens} bytes of {TOKENS_IDS}", len(data))
    a = np.frombuffer(data, IDS_DTYPE)
    if a.size and int(a.max()) >= classes:
        raise SlcFormatError(f"expected token ids < {classes} in {TOKENS_IDS}, got {int(a.max())}")
    return a
