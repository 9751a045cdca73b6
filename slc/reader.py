"""Open a ``.slc`` file and decode labels by chunk, epoch or sample range.

Everything is validated before anything large is allocated: the layout against the file
size, the header against its schema, tensors against their declared shapes, the index
against the label layout. Reading never unpickles or executes anything.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np

from slc.codecs import codec_class
from slc.codecs.base import Codec, Kind, TokenCodec
from slc.format.container import (ENCODING_ZSTD, check_section_crc, ChunkEntry, Layout, crc32, parse_index, read_exact,
                        read_header, read_layout, read_section)
from slc.errors import SlcFormatError, SlcInputError, expect
from slc.format.header import MAX_CHUNK_ELEMENTS, Header
from slc.codecs.labels import decode_probs, retemper, written
from slc.codecs.sparse import SparseLabels
from slc.codecs.topkvq import rows_of
from slc.format.parts import PART, PartInfo
from slc.format.sections import CHUNKS, EPOCHS_MAP, HEADER, INDEX, TOKENS_IDS, TOKENS_SEQ, parse_ids, parse_map, parse_seq



class SlcFile:
    """A validated, open ``.slc`` file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike, part: bool = False):
        """``part``: also open a part file (:mod:`slc.format.parts`); only ``index`` and ``verify`` then apply."""
        self.path = os.fspath(path)
        self._allow_part = part
        self.part: PartInfo | None = None
        try:
            self._f = open(self.path, "rb")
        except OSError as e:
            raise SlcFormatError(f"expected a readable .slc file, got {self.path} ({e.strerror})") from None
        try:
            self._load()
        except BaseException:
            self._f.close()
            raise

    def _load(self) -> None:
        f = self._f
        self.layout: Layout = read_layout(f)
        self.header = Header.from_json(read_header(f, self.layout))
        h = self.header
        for name, s in self.layout.sections.items():
            known = name in (HEADER, INDEX, CHUNKS, EPOCHS_MAP, PART) or name in h.tensors
            expect(known or not s.required, "only sections this reader understands to be required",
                   f"required section {name!r} (written by a newer slc?)")
        cls = codec_class(h.codec)
        specs = cls.tensor_specs(h.codec_params, h.classes)
        expect(set(h.tensors) == set(specs), f"tensors {sorted(specs)} for codec {h.codec!r}", sorted(h.tensors))
        tensors = {}
        for name, (dtype, shape) in specs.items():
            decl = h.tensors[name]
            expect(decl["dtype"] == dtype and tuple(decl["shape"]) == shape,
                   f"tensor {name!r} as {dtype}{list(shape)}", f"{decl['dtype']}{decl['shape']}")
            expect(name in self.layout.sections, f"a section for tensor {name!r}", "none")
            s = self.layout.sections[name]
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            expect(s.length == nbytes, f"{nbytes} bytes for tensor {name!r}", s.length)
            tensors[name] = np.frombuffer(read_section(f, s), dtype=dtype).reshape(shape)
        self.codec: Codec = cls.from_file(h.codec_params, tensors, h.classes)
        work = h.chunk_size * self.codec.work_per_label()
        expect(work <= MAX_CHUNK_ELEMENTS, f"chunk_size x decode work per label <= {MAX_CHUNK_ELEMENTS}",
               f"{h.chunk_size} x {self.codec.work_per_label()}")
        chunks = self.layout.sections["chunks"]
        index_s = self.layout.sections["index"]
        tiling = h.tiling
        first, stop = 0, len(tiling)
        if PART in self.layout.sections:
            self.part = PartInfo.parse(read_section(f, self.layout.sections[PART]), tiling)
            expect(self._allow_part, "a whole .slc file", f"a part of one ({self.part.describe()}); `slc merge` joins "
                   "the parts")
            first, stop = self.part.first, self.part.stop
        n_chunks = stop - first
        expect(index_s.length == n_chunks * 48, f"an index of {n_chunks} chunks for {h.epochs} x {h.samples} labels"
               + (f" (chunks {first}..{stop - 1})" if self.part else ""), f"{index_s.length // 48} entries")
        self.index: list[ChunkEntry] = parse_index(read_section(f, index_s), chunks)
        for i in range(first, stop):  # chunks tile epochs x samples in order
            e, start, count = tiling.chunk(i)
            c = self.index[i - first]
            expect((c.epoch, c.start, c.count) == (e, start, count),
                   f"chunk {i} to hold epoch {e} samples {start}..{start + count}",
                   f"epoch {c.epoch} samples {c.start}..{c.start + c.count}")
            raw = self.codec.payload_size(count)
            expect(c.raw_length == raw, f"{raw} raw bytes in chunk {i}", c.raw_length)
            expect(c.encoding != ENCODING_ZSTD or h.entropy == "zstd", f"no zstd chunks (header entropy "
                   f"{h.entropy!r})", f"zstd chunk {i}")
        self.tiling = tiling
        self._last: tuple[tuple, np.ndarray] | None = None  # the last chunk decoded, when chunks span epochs
        self._chunks_offset = chunks.offset
        # the recipe epoch each stored epoch was relabelled in; not the identity only in pruned files
        self.epoch_ids = np.arange(h.epochs)
        if EPOCHS_MAP in self.layout.sections:
            s = self.layout.sections[EPOCHS_MAP]
            expect(s.length == 4 * h.epochs, f"{4 * h.epochs} bytes of {EPOCHS_MAP}", s.length)
            self.epoch_ids = parse_map(read_section(f, s), h.epochs)
        self._token_ids: np.ndarray | None = None
        self.offsets = np.array([0, h.samples], np.int64)  # sequence boundaries (one sequence if none stored)
        if TOKENS_SEQ in self.layout.sections:
            s = self.layout.sections[TOKENS_SEQ]
            expect(h.epochs == 1, f"one epoch in a file with {TOKENS_SEQ}", h.epochs)
            expect(s.length <= 8 * (h.samples + 1), f"at most {8 * (h.samples + 1)} bytes of {TOKENS_SEQ}", s.length)
            self.offsets = parse_seq(read_section(f, s), h.samples)

    # ---------------------------------------------------------------- properties
    @property
    def fileobj(self):
        """The open binary file (for tools that copy sections as they are, such as ``slc merge``)."""
        return self._f

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(epochs, samples, classes)``."""
        return self.header.epochs, self.header.samples, self.header.classes

    @property
    def temperature(self) -> float:
        return self.header.temperature

    def __len__(self) -> int:
        return self.header.labels

    # ---------------------------------------------------------------- decoding
    def chunk_payload(self, c: ChunkEntry) -> bytes:
        data = read_exact(self._f, self._chunks_offset + c.offset, c.stored_length, "chunk")
        expect(crc32(data) == c.crc, f"CRC {c.crc:08x} for chunk at epoch {c.epoch} sample {c.start}",
               f"{crc32(data):08x} (corrupted)")
        if c.encoding == ENCODING_ZSTD:
            import zstandard

            where = f"chunk at epoch {c.epoch} sample {c.start}"
            try:
                # the decompressor allocates what the frame header declares: check it before decoding
                size = zstandard.frame_content_size(data)
                expect(size == c.raw_length, f"a zstd frame declaring {c.raw_length} bytes for {where}",
                       size if size >= 0 else "no content size")
                z = zstandard.ZstdDecompressor().decompressobj()
                data = z.decompress(data)
            except zstandard.ZstdError as e:
                raise SlcFormatError(f"expected a zstd frame for {where}, got {e}") from None
            expect(z.eof and not z.unused_data, f"exactly one zstd frame for {where}",
                   f"{len(z.unused_data)} trailing bytes" if z.eof else "a truncated frame")
            expect(len(data) == c.raw_length, f"{c.raw_length} bytes after zstd", len(data))
        return data

    def decode_chunk(self, c: ChunkEntry, out: Kind = "probs", temperature: float | None = None,
                     into: np.ndarray | None = None) -> np.ndarray:
        """One chunk's labels ``(c.count, C)`` as float32 probabilities or logits; written into ``into`` if given."""
        payload = self.chunk_payload(c)
        if out == "probs":
            return decode_probs(self.codec, payload, c.count, self.header.temperature, temperature, into)
        labels, kind = self.codec.decode(payload, c.count)
        return written(retemper(labels, kind, self.header.temperature, out, temperature), into)

    def _rows(self, i: int, a: int, b: int, out: Kind, temperature: float | None,
              into: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[a, b)`` of chunk ``i`` (a copy the caller may write into), or written into ``into``."""
        c = self.index[i]
        if not self.tiling.spans_epochs:
            if into is not None and (a, b) == (0, c.count):
                return self.decode_chunk(c, out, temperature, into)
            if isinstance(self.codec, TokenCodec) and (a, b) != (0, c.count):  # a few tokens of a long chunk
                rows = self._token_rows(c, a, b, out, temperature)
            else:
                rows = self.decode_chunk(c, out, temperature)[a:b]
        else:
            key = (i, out, temperature)
            if self._last is None or self._last[0] != key:  # epochs that share a chunk decode it once
                self._last = key, self.decode_chunk(c, out, temperature)
            rows = self._last[1][a:b]
            if into is None:
                return rows.copy()
        return written(rows, into)

    def _token_rows(self, c: ChunkEntry, a: int, b: int, out: Kind, temperature: float | None) -> np.ndarray:
        """Rows ``[a, b)`` of a token chunk, made dense from their sparse rows alone (not the chunk's (n, V))."""
        labels, kind = self.codec.dense(rows_of(self.codec.decode_sparse(self.chunk_payload(c), c.count), a, b))
        return retemper(labels, kind, self.header.temperature, out, temperature)

    def iter_chunks(self, epochs: range | list[int] | None = None, start: int = 0, stop: int | None = None,
                    out: Kind = "probs", temperature: float | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(epoch, first_sample, labels)`` block by block, in file order: bounded memory."""
        stop = self.header.samples if stop is None else stop
        self.check_range(start, stop)
        for e in self.select_epochs(epochs):
            for i, a, b, first in self.tiling.locate(e, start, stop):
                yield e, first, self._rows(i, a, b, out, temperature)

    def decode(self, epoch: int = 0, start: int = 0, stop: int | None = None, out: Kind = "probs",
               temperature: float | None = None) -> np.ndarray:
        """Labels ``(stop - start, C)`` of one epoch as float32 probabilities or logits."""
        stop = self.header.samples if stop is None else stop
        self.check_range(start, stop)
        self.select_epochs([epoch])
        labels = np.empty((stop - start, self.header.classes), np.float32)
        for i, a, b, first in self.tiling.locate(epoch, start, stop):  # each chunk decoded into its rows
            self._rows(i, a, b, out, temperature, labels[first - start:first - start + b - a])
        return labels

    def select_epochs(self, epochs) -> list[int]:
        all_e = range(self.header.epochs)
        if epochs is None:
            return list(all_e)
        bad = [e for e in epochs if e not in all_e]
        if bad:
            raise IndexError(f"expected epochs in [0, {self.header.epochs}), got {bad[:5]}")
        return list(epochs)

    def check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.header.samples:
            raise IndexError(f"expected 0 <= start <= stop <= {self.header.samples}, got {start}..{stop}")

    # ---------------------------------------------------------------- token-level labels
    @property
    def sparse_codec(self) -> TokenCodec:
        if not isinstance(self.codec, TokenCodec):
            raise SlcInputError(f"expected a token-level file (codec topk-vq) for sparse labels, got codec {self.codec.name!r}")
        return self.codec

    def iter_sparse(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, SparseLabels]]:
        """Yield ``(first_token, labels)`` chunk by chunk over tokens ``[start, stop)``: bounded memory."""
        codec = self.sparse_codec
        stop = self.header.samples if stop is None else stop
        self.check_range(start, stop)
        for i, a, b, first in self.tiling.locate(0, start, stop):  # token files hold one epoch
            c = self.index[i]
            yield first, rows_of(codec.decode_sparse(self.chunk_payload(c), c.count), a, b)

    def sparse(self, start: int = 0, stop: int | None = None) -> SparseLabels:
        """Token labels ``[start, stop)`` as stored: top-k word indices, their log-probabilities, the tail."""
        parts = [s for _, s in self.iter_sparse(start, stop)]
        if len(parts) == 1:
            return parts[0]
        k = self.sparse_codec.k
        return SparseLabels(np.concatenate([p.indices for p in parts]) if parts else np.zeros((0, k), np.int64),
                            np.concatenate([p.logp for p in parts]) if parts else np.zeros((0, k), np.float32),
                            np.concatenate([p.tail for p in parts]) if parts else np.zeros(0, np.float32))

    @property
    def sequences(self) -> int:
        return len(self.offsets) - 1

    def sequence_range(self, i: int) -> tuple[int, int]:
        if not -self.sequences <= i < self.sequences:
            raise IndexError(f"expected a sequence index in [0, {self.sequences}), got {i}")
        i %= self.sequences
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def sequence(self, i: int, sparse: bool = True, length: int | None = None) -> SparseLabels | np.ndarray:
        """Sequence ``i``'s labels: sparse (:meth:`sparse`) or dense ``(L, V)`` log-probabilities.

        ``length``: only its first ``length`` tokens (a student's shorter context); more than are stored is an error.
        """
        a, b = self.sequence_range(i)
        if length is not None:
            if not 0 <= length <= b - a:
                raise SlcInputError(f"expected at most {b - a} tokens for sequence {i} (as stored), got {length}")
            b = a + length
        if sparse:
            return self.sparse(a, b)
        return self.decode(0, a, b, out="logits") / self.header.temperature

    def token_ids(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """The input token at each position (``tokens.ids``), or ``None`` if the file does not store them."""
        if TOKENS_IDS not in self.layout.sections:
            return None
        if self._token_ids is None:
            h = self.header
            s = self.layout.sections[TOKENS_IDS]
            expect(s.length == 4 * h.samples, f"{4 * h.samples} bytes of {TOKENS_IDS}", s.length)
            self._token_ids = parse_ids(read_section(self._f, s), h.samples, h.classes)
        stop = self.header.samples if stop is None else stop
        self.check_range(start, stop)
        return self._token_ids[start:stop]

    # ---------------------------------------------------------------- other sections
    def section(self, name: str, max_bytes: int) -> bytes | None:
        """The body of an optional section (CRC checked), ``None`` if absent."""
        s = self.layout.sections.get(name)
        if s is None:
            return None
        expect(s.length <= max_bytes, f"section {name!r} of at most {max_bytes} bytes", s.length)
        return read_section(self._f, s)

    def section_range(self, name: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of a section too large to read whole (no CRC: ``verify`` checks it)."""
        expect(name in self.layout.sections, f"a {name!r} section", "none")
        s = self.layout.sections[name]
        expect(0 <= offset and offset + length <= s.length, f"a range inside section {name!r} ({s.length} bytes)",
               f"{offset}..{offset + length}")
        return read_exact(self._f, s.offset + offset, length, f"section {name!r}")

    # ---------------------------------------------------------------- checks
    def verify(self) -> None:
        """Check every section and chunk checksum and decode every chunk once."""
        for s in self.layout.sections.values():
            check_section_crc(self._f, s)
        for c in self.index:
            self.codec.decode(self.chunk_payload(c), c.count)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "SlcFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slc(path: str | os.PathLike) -> SlcFile:
    return SlcFile(path)
