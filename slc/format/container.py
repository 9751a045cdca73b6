"""The ``.slc`` container: byte layout, checksums, and the one exact-read helper.

This module knows sections and chunks, not codecs. ``formats/slc-v1.md`` is the
normative spec; in short (all integers little-endian)::

    offset 0     preamble, 64 bytes (magic, version, table location, file length, CRCs)
    offset 64    sections, each starting at a multiple of 64, zero padding between
    table_offset section table, section_count entries of 64 bytes, ends the file

A section is a named byte range with a CRC-32 (zlib's polynomial). Three are required:
``header`` (UTF-8 JSON), ``index`` (one 48-byte entry per chunk) and ``chunks`` (the
concatenated chunk payloads). Codecs add tensor sections named ``<codec>.<name>``.
Chunk offsets are relative to the start of ``chunks`` and chunks tile it with no gaps,
so parts written by several ranks concatenate by rebasing offsets.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Iterable

from slc.errors import SlcFormatError, expect
from slc.format.sections import minor_for

MAGIC = b"\x89SLC\r\n\x1a\n"  # PNG-style: catches 7-bit and newline-mangling transfers
FORMAT_MAJOR = 1
ALIGN = 64  # sections start on 64-byte boundaries so they can be memory-mapped

PREAMBLE = struct.Struct("<8sHHIQQI24sI")  # 64 bytes
ENTRY = struct.Struct("<24sQQII16s")  # 64 bytes
CHUNK = struct.Struct("<IIQQQQIHH")  # 48 bytes
assert PREAMBLE.size == 64 and ENTRY.size == 64 and CHUNK.size == 48

FLAG_REQUIRED = 1
ENCODING_RAW, ENCODING_ZSTD = 0, 1

MAX_SECTIONS = 4096
MAX_HEADER_BYTES = 1 << 20  # a hostile file cannot make us parse gigabytes of JSON
MAX_NAME = 24
REQUIRED_SECTIONS = ("header", "index", "chunks")


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    return zlib.crc32(data, value) & 0xFFFFFFFF


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len(B)``, without the bytes.

    zlib's method: appending ``len2`` zero bytes to ``A`` is a linear map on its CRC (a 32 x 32 matrix over
    GF(2)), applied by repeated squaring in O(log len2); ``B``'s CRC then adds in.
    """
    if len2 <= 0:
        return crc1

    def times(mat: list[int], vec: int) -> int:
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec >>= 1
            i += 1
        return out

    def square(mat: list[int]) -> list[int]:
        return [times(mat, m) for m in mat]

    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = square(odd)  # two zero bits
    odd = square(even)  # four
    while True:
        even = square(odd)  # the next power of two zero bytes, alternating between the two tables
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return (crc1 ^ crc2) & 0xFFFFFFFF


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def read_exact(f: BinaryIO, offset: int, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes at ``offset`` or raise ``SlcFormatError``."""
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise SlcFormatError(f"expected {n} bytes of {what} at offset {offset}, got {len(data)} (file truncated?)")
    return data


@dataclass(frozen=True)
class Section:
    name: str
    offset: int
    length: int
    crc: int
    flags: int = FLAG_REQUIRED

    @property
    def required(self) -> bool:
        return bool(self.flags & FLAG_REQUIRED)


@dataclass(frozen=True)
class ChunkEntry:
    """Where one chunk of labels lives: ``count`` samples of ``epoch`` from ``start``."""

    epoch: int
    count: int
    start: int
    offset: int  # relative to the start of the ``chunks`` section
    stored_length: int
    raw_length: int
    crc: int
    encoding: int = ENCODING_RAW

    def pack(self) -> bytes:
        return CHUNK.pack(self.epoch, self.count, self.start, self.offset, self.stored_length,
                          self.raw_length, self.crc, self.encoding, 0)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Layout:
    """The validated outline of a file: version, sections by name, file length."""

    major: int
    minor: int
    file_length: int
    sections: dict[str, Section]


# Files people pass to a command that wants an .slc: named, so the error says what to do instead.
OTHER_FORMATS = ((b"\x93NUMPY", "an .npy array (labels: `slc compress` makes an .slc from them)"),
                 (b"\x89HDF\r\n\x1a\n", "an HDF5 file (labels: `slc compress FILE.h5:/dataset` makes an .slc)"),
                 (b"PK\x03\x04", "a zip archive (.npz, or a torch.save / TorchScript model)"),
                 (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"))


def read_layout(f: BinaryIO) -> Layout:
    """Validate the preamble and the section table; read no section bodies."""
    f.seek(0)
    head = f.read(len(MAGIC))
    for magic, what in OTHER_FORMATS:
        expect(not head.startswith(magic), f"an .slc file (magic {MAGIC!r})", what)
    f.seek(0, os.SEEK_END)
    size = f.tell()
    expect(size >= PREAMBLE.size, f"a file of at least {PREAMBLE.size} bytes", f"{size} bytes")
    raw = read_exact(f, 0, PREAMBLE.size, "preamble")
    magic, major, minor, count, table_off, length, table_crc, reserved, pre_crc = PREAMBLE.unpack(raw)
    expect(magic == MAGIC, f"magic {MAGIC!r} (an .slc file)", repr(magic))
    expect(major == FORMAT_MAJOR, f"format major version {FORMAT_MAJOR} (this slc reads v{FORMAT_MAJOR}.x)",
           f"v{major}.{minor}")
    expect(pre_crc == crc32(raw[:60]), f"preamble CRC {crc32(raw[:60]):08x}", f"{pre_crc:08x}")
    expect(reserved == bytes(24), "zero reserved preamble bytes", reserved.hex())
    expect(length == size, f"file length {length} as recorded in the preamble", f"{size} bytes on disk")
    expect(1 <= count <= MAX_SECTIONS, f"1..{MAX_SECTIONS} sections", count)
    expect(table_off % ALIGN == 0 and table_off >= PREAMBLE.size, "a 64-byte aligned table offset >= 64", table_off)
    expect(table_off + count * ENTRY.size == size, f"the section table to end the file at {size}",
           f"table at {table_off} with {count} entries")
    table = read_exact(f, table_off, count * ENTRY.size, "section table")
    expect(crc32(table) == table_crc, f"section table CRC {table_crc:08x}", f"{crc32(table):08x}")

    sections: dict[str, Section] = {}
    cursor = PREAMBLE.size
    for i in range(count):
        name_raw, off, n, crc, flags, res = ENTRY.unpack_from(table, i * ENTRY.size)
        name = _decode_name(name_raw)
        expect(name not in sections, "unique section names", f"{name!r} twice")
        expect(res == bytes(16), f"zero reserved bytes in section {name!r}", res.hex())
        expect(flags & ~FLAG_REQUIRED == 0, f"known flags in section {name!r}", f"{flags:#x}")
        # sections are contiguous up to alignment: no holes, no overlaps, nothing hidden
        expect(off == align(cursor), f"section {name!r} at offset {align(cursor)}", off)
        _check_padding(f, cursor, off)
        expect(off + n <= table_off, f"section {name!r} to end before the table at {table_off}", off + n)
        sections[name] = Section(name, off, n, crc, flags)
        cursor = off + n
    expect(align(cursor) == table_off, f"the section table right after the last section at {align(cursor)}",
           table_off)
    _check_padding(f, cursor, table_off)
    for name in REQUIRED_SECTIONS:
        expect(name in sections, f"a {name!r} section", f"sections {sorted(sections)}")
    return Layout(major, minor, size, sections)


def _check_padding(f: BinaryIO, start: int, end: int) -> None:
    pad = read_exact(f, start, end - start, "padding")  # < 64 bytes: end is align(start)
    expect(pad == bytes(len(pad)), f"zero padding bytes at {start}..{end}", pad.hex())


def _decode_name(raw: bytes) -> str:
    name = raw.rstrip(b"\0")
    ok = b"\0" not in name and len(name) > 0 and all(32 < c < 127 for c in name)
    expect(ok, "a printable ASCII section name padded with NUL", repr(raw))
    return name.decode("ascii")


def read_section(f: BinaryIO, s: Section, check: bool = True) -> bytes:
    data = read_exact(f, s.offset, s.length, f"section {s.name!r}")
    if check:
        expect(crc32(data) == s.crc, f"CRC {s.crc:08x} for section {s.name!r}", f"{crc32(data):08x} (corrupted)")
    return data


def check_section_crc(f: BinaryIO, s: Section, block: int = 1 << 23) -> None:
    """Verify a section's CRC reading it in blocks, so checking a 50 GB file needs no 50 GB."""
    value, pos = 0, 0
    while pos < s.length:
        n = min(block, s.length - pos)
        value = crc32(read_exact(f, s.offset + pos, n, f"section {s.name!r}"), value)
        pos += n
    expect(value == s.crc, f"CRC {s.crc:08x} for section {s.name!r}", f"{value:08x} (corrupted)")


def read_header(f: BinaryIO, layout: Layout) -> dict:
    s = layout.sections["header"]
    expect(s.length <= MAX_HEADER_BYTES, f"a header of at most {MAX_HEADER_BYTES} bytes", s.length)
    return parse_json(read_section(f, s), "header")


def parse_json(data: bytes, what: str) -> dict:
    """A JSON object from an untrusted section: unique keys, finite numbers, bounded nesting."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except SlcFormatError:
        raise
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a 5000-digit integer, deep nesting
        raise SlcFormatError(f"expected a UTF-8 JSON {what}, got unparseable bytes ({e})") from None
    expect(isinstance(obj, dict), f"a JSON object as {what}", type(obj).__name__)
    return obj


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) < len(pairs):
        dup = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise SlcFormatError(f"expected unique keys in the JSON header, got {dup!r} twice")
    return d


def _no_constant(name: str):
    raise SlcFormatError(f"expected only finite numbers in the JSON header, got {name}")


def parse_index(data: bytes, chunks: Section) -> list[ChunkEntry]:
    """Decode the chunk index and check that chunks tile the ``chunks`` section."""
    expect(len(data) % CHUNK.size == 0, f"an index of whole {CHUNK.size}-byte entries", f"{len(data)} bytes")
    entries = []
    cursor = 0
    for i in range(len(data) // CHUNK.size):
        e = parse_index_entry(data[i * CHUNK.size:(i + 1) * CHUNK.size], i)
        expect(e.offset == cursor, f"chunk {i} at offset {cursor} in 'chunks'", e.offset)
        cursor += e.stored_length
        entries.append(e)
    expect(cursor == chunks.length, f"chunks to fill the 'chunks' section ({chunks.length} bytes)", cursor)
    return entries


def parse_index_entry(raw: bytes, i: int) -> ChunkEntry:
    """One 48-byte chunk index entry, checked on its own."""
    epoch, count, start, off, stored, raw_len, crc, enc, res = CHUNK.unpack(raw)
    expect(res == 0, f"zero reserved field in chunk {i}", res)
    expect(enc in (ENCODING_RAW, ENCODING_ZSTD), f"chunk encoding 0 or 1 in chunk {i}", enc)
    expect(enc == ENCODING_ZSTD or stored == raw_len, f"stored length == raw length for raw chunk {i}",
           f"{stored} != {raw_len}")
    return ChunkEntry(epoch, count, start, off, stored, raw_len, crc, enc)


# --------------------------------------------------------------------------- writing


class ContainerWriter:
    """Writes sections to an open binary file; ``finish`` appends the table and patches the preamble.

    The ``chunks`` section is streamed with :meth:`add_chunk` between :meth:`begin_chunks`
    and :meth:`end_chunks`; other sections are written whole with :meth:`add_section`.
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sections: list[Section] = []
        self.index: list[ChunkEntry] = []
        self._chunks_start: int | None = None
        self._chunks_crc = 0
        self._chunks_len = 0
        self._in_chunks = False
        self.min_minor = 0  # raised by a writer whose codec is newer than 1.0 (Codec.since_minor)
        f.seek(0)
        f.write(bytes(PREAMBLE.size))  # patched in finish()
        self._pos = PREAMBLE.size

    @property
    def position(self) -> int:
        """Bytes written so far (where the next write goes)."""
        return self._pos

    @property
    def chunks_start(self) -> int | None:
        """File offset of the ``chunks`` section once :meth:`begin_chunks` was called."""
        return self._chunks_start

    @classmethod
    def reopen(cls, f: BinaryIO, sections: list[Section], chunks_start: int, entries: list[ChunkEntry],
               chunks_crc: int) -> "ContainerWriter":
        """Continue an interrupted write after its last good chunk (see ``slc.resume``)."""
        w = cls.__new__(cls)
        w.f, w.sections, w.index = f, list(sections), list(entries)
        w._chunks_start, w._chunks_crc = chunks_start, chunks_crc
        w._chunks_len = sum(e.stored_length for e in entries)
        w._in_chunks = True
        w._pos = chunks_start + w._chunks_len
        f.seek(w._pos)
        f.truncate()
        return w

    def _pad_to_alignment(self) -> int:
        start = align(self._pos)
        self.f.write(bytes(start - self._pos))
        self._pos = start
        return start

    def add_section(self, name: str, data: bytes, required: bool = True) -> None:
        self.add_section_stream(name, [data], required)

    def add_section_stream(self, name: str, parts: Iterable[bytes], required: bool = True) -> None:
        """A section written piece by piece, for bodies too large to hold in memory."""
        if self._in_chunks:
            raise RuntimeError("end_chunks() before adding other sections")
        self._check_name(name)
        start = self._pad_to_alignment()
        crc, n = 0, 0
        for part in parts:
            self.f.write(part)
            crc, n = crc32(part, crc), n + len(part)
        self._pos += n
        self.sections.append(Section(name, start, n, crc, FLAG_REQUIRED if required else 0))

    def begin_chunks(self) -> None:
        self._chunks_start = self._pad_to_alignment()
        self._in_chunks = True

    def add_chunk(self, epoch: int, start: int, count: int, payload: bytes, raw_length: int,
                  encoding: int = ENCODING_RAW) -> ChunkEntry:
        entry = ChunkEntry(epoch, count, start, self._chunks_len, len(payload), raw_length, crc32(payload), encoding)
        self.f.write(payload)
        self._pos += len(payload)
        self._chunks_len += len(payload)
        self._chunks_crc = crc32(payload, self._chunks_crc)
        self.index.append(entry)
        return entry

    def add_chunk_run(self, blocks: Iterable[bytes], entries: Iterable[ChunkEntry]) -> int:
        """Append chunks encoded elsewhere (a part file's): their payloads back to back as ``blocks``, and their
        index ``entries`` with offsets counted from the run's start. Returns the run's CRC-32 (one pass over
        the bytes), so the caller can check it against the run's own record."""
        base, crc, n = self._chunks_len, 0, 0
        for block in blocks:
            self.f.write(block)
            crc, n = crc32(block, crc), n + len(block)
        self._chunks_crc = crc32_combine(self._chunks_crc, crc, n)
        self._pos += n
        self._chunks_len += n
        self.index.extend(ChunkEntry(e.epoch, e.count, e.start, e.offset + base, e.stored_length, e.raw_length, e.crc,
                                     e.encoding) for e in entries)
        return crc

    def end_chunks(self) -> None:
        assert self._chunks_start is not None
        self.sections.append(Section("chunks", self._chunks_start, self._chunks_len, self._chunks_crc))
        self._in_chunks = False
        self.add_section("index", b"".join(e.pack() for e in self.index))

    def finish(self) -> int:
        """Write the section table and the preamble; return the file length."""
        table_off = self._pad_to_alignment()
        table = b"".join(ENTRY.pack(s.name.encode("ascii"), s.offset, s.length, s.crc, s.flags, bytes(16))
                         for s in self.sections)
        self.f.write(table)
        length = table_off + len(table)
        # the lowest minor version whose features the file uses (spec: stability policy)
        minor = max(self.min_minor, minor_for(s.name for s in self.sections))
        head = PREAMBLE.pack(MAGIC, FORMAT_MAJOR, minor, len(self.sections), table_off, length,
                             crc32(table), bytes(24), 0)
        head = head[:60] + struct.pack("<I", crc32(head[:60]))
        self.f.seek(0)
        self.f.write(head)
        self.f.seek(length)
        return length

    def _check_name(self, name: str) -> None:
        raw = name.encode("ascii")
        if not 0 < len(raw) <= MAX_NAME or any(not 32 < c < 127 for c in raw):
            raise ValueError(f"expected a printable ASCII section name of 1..{MAX_NAME} bytes, got {name!r}")
        if any(s.name == name for s in self.sections):
            raise ValueError(f"section {name!r} written twice")


def header_bytes(header: dict) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, so equal headers give equal bytes."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
