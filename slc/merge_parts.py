"""``slc merge``: join part files into the file one process would have written, byte for byte.

The part format is :mod:`slc.format.parts`; this module opens parts (validated as the reader validates
any file), checks they are of one run and tile the chunks, and copies them into one container.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from slc.atomic import atomic_output, check_output
from slc.errors import SlcInputError, expect
from slc.format.container import ContainerWriter, Section, read_exact, read_section
from slc.format.parts import PART, STATE_PREFIX, PartInfo, first_difference
from slc.reader import SlcFile

COPY_BLOCK = 1 << 24


@dataclass
class OpenPart:
    path: str
    f: SlcFile
    info: PartInfo

    @property
    def sections(self) -> dict[str, Section]:
        return self.f.layout.sections


def before_chunks(p: OpenPart, with_state: bool = True) -> list[Section]:
    """The sections before ``chunks`` in file order, the ``part`` section left out."""
    chunks = p.sections["chunks"].offset
    return [s for s in sorted(p.sections.values(), key=lambda s: s.offset)
            if s.offset < chunks and s.name != PART and (with_state or not s.name.startswith(STATE_PREFIX))]


def after_chunks(p: OpenPart) -> list[Section]:
    index = p.sections["index"].offset
    return [s for s in sorted(p.sections.values(), key=lambda s: s.offset) if s.offset > index]


def setup_bytes(p: OpenPart) -> dict[str, bytes]:
    return {s.name: read_section(p.f.fileobj, s) for s in before_chunks(p)}


def open_part(path: str) -> OpenPart:
    f = SlcFile(path, part=True)
    if f.part is None:
        f.close()
        raise SlcInputError(f"expected a part file, got a whole .slc: {path}")
    return OpenPart(path, f, f.part)


def check_tiling(parts: list[OpenPart]) -> None:
    """Parts tile ``0 .. T`` with no gap, overlap or repeat; raise one line naming the first fault."""
    parts.sort(key=lambda p: (p.info.first, p.info.stop))
    total, cursor, prev = parts[0].info.of, 0, None
    for p in parts:
        i = p.info
        if prev is not None and (i.first, i.stop) == (prev.info.first, prev.info.stop):
            raise SlcInputError(f"expected each part once, got {i.describe()} twice: {prev.path} and {p.path}")
        if i.first > cursor:
            raise SlcInputError(f"expected parts that leave no gap, got chunks {cursor}..{i.first - 1} of {total} "
                                f"in no part (before {p.path})")
        if i.first < cursor:
            raise SlcInputError(f"expected parts that do not overlap, got chunks {i.first}..{min(cursor, i.stop) - 1} "
                                f"in both {prev.path} and {p.path}")
        cursor, prev = i.stop, p
    if cursor < total:
        raise SlcInputError(f"expected parts that leave no gap, got chunks {cursor}..{total - 1} of {total} in no part "
                            f"(after {prev.path})")


def merge(paths: list[str], out: str, *, force: bool = False, log: Callable[[str], None] | None = None,
          progress: Callable[[int], None] | None = None) -> int:
    """Join the part files ``paths`` (any order) into ``out``: the file one process would have written.

    Refuses, naming the first fault: a whole file or a codec file among them, parts of different runs
    (header, recipe, images, codec tensors or encoder), a gap, an overlap, the same part twice.
    ``progress(bytes)`` as chunk bytes are copied. Returns the file's size.
    """
    log = log or (lambda line: None)
    if not paths:
        raise SlcInputError("expected at least one part file, got none")
    check_output(out, force)
    parts: list[OpenPart] = []
    try:
        for path in paths:
            parts.append(open_part(os.fspath(path)))
            if parts[-1].info.codec_only:
                raise SlcInputError(f"expected part files with chunks, got a codec file (no chunks): {path}")
        ref = setup_bytes(parts[0])
        for p in parts[1:]:
            why = first_difference(ref, setup_bytes(p))
            if why is not None:
                raise SlcInputError(f"expected parts of one run, got a different {why} in {p.path} than in "
                                    f"{parts[0].path}")
            if p.info.minor != parts[0].info.minor or [s.name for s in after_chunks(p)] != \
                    [s.name for s in after_chunks(parts[0])]:
                raise SlcInputError(f"expected parts of one run, got different sections after the chunks in {p.path} "
                                    f"than in {parts[0].path}")
        check_tiling(parts)
        log(f"merge: {len(parts)} parts, {parts[0].info.of} chunks, into {out}")
        with atomic_output(out, force) as f:
            size = write_merged(parts, f, progress)
        return size
    finally:
        for p in parts:
            p.f.close()


def write_merged(parts: list[OpenPart], f, progress: Callable[[int], None] | None) -> int:
    """The whole file from ``parts`` (in order), with the same writer and section order as one process."""
    w = ContainerWriter(f)
    w.min_minor = parts[0].info.minor
    first = parts[0]
    for s in before_chunks(first, with_state=False):
        w.add_section(s.name, read_section(first.f.fileobj, s), s.required)
    w.begin_chunks()
    for p in parts:
        s = p.sections["chunks"]
        copy_chunks(w, p, s, progress)
    w.end_chunks()
    for s in after_chunks(first):
        w.add_section_stream(s.name, (read_section(p.f.fileobj, p.sections[s.name]) for p in parts), s.required)
    return w.finish()


def copy_chunks(w: ContainerWriter, p: OpenPart, s: Section, progress) -> None:
    """Append part ``p``'s chunk payloads to ``w`` with rebased index entries, checking the part's CRC."""

    def blocks():
        pos, fh = 0, p.f.fileobj
        while pos < s.length:
            block = read_exact(fh, s.offset + pos, min(COPY_BLOCK, s.length - pos), f"chunks of {p.path}")
            pos += len(block)
            if progress:
                progress(len(block))
            yield block

    crc = w.add_chunk_run(blocks(), p.f.index)
    expect(crc == s.crc, f"CRC {s.crc:08x} for the chunks of {p.path}", f"{crc:08x} (corrupted)")


def read_state(f, info: PartInfo) -> dict[str, np.ndarray]:
    """The encoder arrays of a part (validated against their declared shapes before they are read)."""
    out = {}
    for name, spec in info.state.items():
        s = f.layout.sections.get(STATE_PREFIX + name)
        expect(s is not None, f"a section {STATE_PREFIX + name!r}", "none")
        dtype = np.dtype(spec["dtype"])
        nbytes = math.prod(spec["shape"]) * dtype.itemsize
        expect(s.length == nbytes, f"{nbytes} bytes of {s.name!r}", s.length)
        out[name] = np.frombuffer(read_section(f.fileobj, s), dtype).reshape(spec["shape"]).astype(np.float32)
    return out



__all__ = ["merge", "open_part", "read_state"]
