"""Bit-packing of unsigned integer codes, LSB-first.

Code ``i`` of width ``b`` occupies stream bits ``[i*b, (i+1)*b)``; stream bit ``j`` is
bit ``j % 8`` (0 = least significant) of byte ``j // 8``; within a code the least
significant bit comes first. Padding bits of the last byte are zero. This is the
bit order fixed by ``formats/slc-v1.md``.
"""
from __future__ import annotations

import numpy as np

from slc.errors import SlcFormatError

MAX_BITS = 32


def bits_for(n: int) -> int:
    """Bits of an index into ``n`` values: ``ceil(log2 n)``, at least 1 (exact for large ``n``)."""
    return max(1, (n - 1).bit_length())


def packed_size(n: int, bits: int) -> int:
    """Bytes taken by ``n`` codes of ``bits`` bits."""
    return (n * bits + 7) // 8


def _lane(bits: int) -> type[np.unsignedinteger]:
    return np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` into an LSB-first bit stream."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"expected 1 <= bits <= {MAX_BITS}, got {bits}")
    flat = np.ascontiguousarray(codes, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"expected codes in [0, {1 << bits}), got range [{flat.min()}, {flat.max()}]")
    if flat.size == 0:
        return b""
    lane = _lane(bits)
    # little-endian lanes, one bit per column, keep the low `bits` columns
    as_bytes = flat.astype(np.dtype(lane).newbyteorder("<")).view(np.uint8).reshape(flat.size, -1)
    columns = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return np.packbits(columns.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes | memoryview | np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``n`` codes as ``int64``. Validates length and padding."""
    if not 1 <= bits <= MAX_BITS:
        raise SlcFormatError(f"expected 1 <= bits <= {MAX_BITS}, got {bits}")
    buf = np.frombuffer(data, dtype=np.uint8)
    need = packed_size(n, bits)
    if buf.size != need:
        raise SlcFormatError(f"expected {need} bytes of packed {bits}-bit codes, got {buf.size}")
    total = n * bits
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if total % 8 and buf[-1] >> (total % 8):
        raise SlcFormatError("expected zero padding bits after the last code, got non-zero bits")
    if bits in (8, 16):  # byte-aligned: each code is its own (little-endian) bytes
        return buf.view("<u2" if bits == 16 else np.uint8).astype(np.int64)
    if bits <= 25:  # every code lies within one 4-byte window starting at its first byte
        padded = np.zeros(need + 4, dtype=np.uint32)
        padded[:need] = buf
        pos = np.arange(n, dtype=np.int64) * bits
        first = pos >> 3
        window = padded[first] | (padded[first + 1] << 8) | (padded[first + 2] << 16) | (padded[first + 3] << 24)
        return ((window >> (pos & 7).astype(np.uint32)) & np.uint32((1 << bits) - 1)).astype(np.int64)
    stream = np.unpackbits(buf, bitorder="little")
    lane = _lane(bits)
    width = np.dtype(lane).itemsize * 8
    columns = np.zeros((n, width), dtype=np.uint8)
    columns[:, :bits] = stream[:total].reshape(n, bits)
    packed = np.packbits(columns, axis=1, bitorder="little")
    return packed.view(np.dtype(lane).newbyteorder("<")).reshape(n).astype(np.int64)
