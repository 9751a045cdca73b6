"""Read labels from ``.npy`` (file or stdin stream), HDF5 (``file.h5:/dataset``) in row blocks.

Every source looks like an ``(E, N, C)`` array read in order, one block of rows at a time,
so a 2 GB file is never loaded whole. A 2-D ``(N, C)`` array is one epoch.
"""
from __future__ import annotations

import os
import sys
from typing import BinaryIO, Iterator

import numpy as np
from numpy.lib import format as npformat

from slc.errors import SlcInputError


class LabelSource:
    """``shape = (E, N, C)``; :meth:`blocks` yields ``(epoch, start, array)`` in order."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    seekable: bool = True
    name: str = ""
    progress_total: int | None = None  # labels a progress bar counts to: all of them, or a part's (see work_on)
    checked: bool = False  # blocks come validated (finite, normalised: slc.codecs.labels.check_block's rules)

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def blocks(self, rows: int, first: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        """Blocks of ``rows`` labels (never crossing an epoch), from block number ``first`` on."""
        e_count, n, _ = self.shape
        per = -(-n // rows)
        for i in range(first, e_count * per):
            e, s = divmod(i, per)
            s *= rows
            yield e, s, self.read(e, s, min(n, s + rows))

    def work_on(self, labels: int) -> None:
        """This job reads ``labels`` of the source (a part's share): what progress bars count to."""
        self.progress_total = labels

    def close(self) -> None:
        pass


def check_dtype(dtype: np.dtype, kinds: str, name: str) -> None:
    if dtype.kind not in kinds:
        what = "floating-point labels" if kinds == "f" else "integer word indices"
        raise SlcInputError(f"expected {what}, got dtype {dtype} in {name}")


def _shape3(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise SlcInputError(f"expected labels of shape (N, C) or (E, N, C), got shape {tuple(shape)} in {name}")
    if shape[2] < 2:
        raise SlcInputError(f"expected at least 2 classes, got shape {tuple(shape)} in {name}")
    return shape  # type: ignore[return-value]


class ArraySource(LabelSource):
    """An in-memory (or memory-mapped) array of shape (N, C) or (E, N, C)."""

    def __init__(self, array: np.ndarray, name: str = "<array>", kinds: str = "f"):
        check_dtype(array.dtype, kinds, name)
        self.name, self.dtype = name, array.dtype
        self.shape = _shape3(array.shape, name)
        self.array = array.reshape(self.shape)

    def read(self, epoch, start, stop):
        return self.array[epoch, start:stop]


def read_npy_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an ``.npy`` without reading its data (or unpickling anything)."""
    try:
        version = npformat.read_magic(f)
        read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        return read_header(f, max_header_size=1 << 20)
    except (ValueError, EOFError) as e:
        raise SlcInputError(f"expected an .npy file, got unreadable data in {name} ({e})") from None


class NpySource(LabelSource):
    """An ``.npy`` file read with plain reads (not mmap, whose pages would count as resident)."""

    def __init__(self, f: BinaryIO, name: str, seekable: bool = True, kinds: str = "f"):
        self.f, self.name, self.seekable = f, name, seekable
        shape, fortran, dtype = read_npy_header(f, name)
        if fortran and len(shape) > 1:
            raise SlcInputError(f"expected a C-order .npy, got Fortran order in {name}")
        check_dtype(dtype, kinds, name)
        self.dtype = dtype
        self.shape = _shape3(shape, name)
        self.offset = f.tell() if seekable else 0
        self.row_bytes = self.shape[2] * dtype.itemsize
        self._cursor = 0  # next row for sequential streams

    def read(self, epoch, start, stop):
        row = epoch * self.shape[1] + start
        n = stop - start
        if self.seekable:
            self.f.seek(self.offset + row * self.row_bytes)
        elif row != self._cursor:
            raise SlcInputError(f"{self.name} is a stream and can only be read in order")
        buf = bytearray(n * self.row_bytes)
        got = self.f.readinto(buf) if hasattr(self.f, "readinto") else 0
        while got < len(buf):  # pipes return short reads
            more = self.f.readinto(memoryview(buf)[got:])
            if not more:
                raise SlcInputError(f"expected {len(buf)} bytes of labels in {self.name}, got {got} (truncated)")
            got += more
        self._cursor = row + n
        return np.frombuffer(buf, dtype=self.dtype).reshape(n, self.shape[2])

    def close(self):
        if self.f is not sys.stdin.buffer:
            self.f.close()


class H5Source(LabelSource):
    def __init__(self, path: str, dataset: str, kinds: str = "f"):
        import h5py

        self.name = f"{path}:{dataset}"
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as e:
            raise SlcInputError(f"expected an HDF5 file, got an unreadable file {path} ({e})") from None
        if dataset not in self.h5 or not isinstance(self.h5[dataset], h5py.Dataset):
            names: list[str] = []
            self.h5.visit(lambda k: names.append(k) if isinstance(self.h5[k], h5py.Dataset) else None)
            self.h5.close()
            raise SlcInputError(f"expected a dataset {dataset!r} in {path}, got datasets {names[:10]}")
        self.ds = self.h5[dataset]
        try:
            check_dtype(self.ds.dtype, kinds, self.name)
        except SlcInputError:
            self.h5.close()
            raise
        self.dtype = self.ds.dtype
        self.shape = _shape3(self.ds.shape, self.name)
        self.flat = self.ds.ndim == 2

    def read(self, epoch, start, stop):
        return self.ds[start:stop] if self.flat else self.ds[epoch, start:stop]

    def close(self):
        self.h5.close()


class SlcSource(LabelSource):
    """The labels of another ``.slc`` (e.g. a dense fp16 one from ``slc encode``), as logits.

    Recompressing keeps its optional sections (crop replay, image fingerprints): see :meth:`carried`.
    """

    kind = "logits"

    def __init__(self, path: str):
        from slc.reader import open_slc

        self.f = open_slc(path)
        self.name, self.dtype, self.shape = path, np.dtype(np.float32), self.f.shape

    def read(self, epoch, start, stop):
        return self.f.decode(epoch, start, stop, out="logits")

    def carried(self) -> tuple[dict[str, bytes], dict[str, int]]:
        """Optional sections to copy: small ones whole (before the chunks), large ones by size (after)."""
        before, after = {}, {}
        for name, sec in self.f.layout.sections.items():
            if sec.required or name in ("header", "index", "chunks"):
                continue
            if sec.length <= 1 << 24:
                before[name] = self.f.section(name, 1 << 24)
            else:
                after[name] = sec.length
        return before, after

    def section_parts(self, name: str, block: int = 1 << 22):
        size = self.f.layout.sections[name].length
        for a in range(0, size, block):
            yield self.f.section_range(name, a, min(block, size - a))

    def close(self):
        self.f.close()


def open_labels(spec: "str | os.PathLike | np.ndarray | LabelSource", kinds: str = "f", *,
                indices: "str | os.PathLike | np.ndarray | None" = None, vocab: int | None = None) -> LabelSource:
    """``path.npy``, ``path.h5:/dataset`` (or ``.hdf5``), ``path.slc``, ``-`` for an npy stream on stdin, or an array.

    With ``indices`` and ``vocab``: already-sparse token labels, ``spec`` holding their values
    (:class:`SparseSource`).
    """
    if (indices is None) != (vocab is None):
        raise SlcInputError("expected `indices` and `vocab` together (already-sparse input), got only one")
    if indices is not None:
        values = open_labels(spec, kinds)
        return SparseSource(values, open_labels(indices, kinds="iu"), vocab)
    if isinstance(spec, LabelSource):
        return spec
    if isinstance(spec, np.ndarray):
        return ArraySource(spec, kinds=kinds)
    spec = os.fspath(spec)
    if spec == "-":
        return NpySource(sys.stdin.buffer, "<stdin>", seekable=False, kinds=kinds)
    path, sep, dataset = spec.partition(":")
    if sep and path.lower().endswith((".h5", ".hdf5")):
        if not os.path.exists(path):
            raise SlcInputError(f"expected an existing labels file, got {path!r} (no such file)")
        return H5Source(path, dataset or "/", kinds)
    if not os.path.exists(spec):
        raise SlcInputError(f"expected an existing labels file, got {spec!r} (no such file)")
    if spec.lower().endswith((".h5", ".hdf5")):
        raise SlcInputError(f"expected FILE.h5:/DATASET for HDF5 input, got {spec!r}")
    with open(spec, "rb") as f:
        if f.read(4) == b"\x89SLC":
            return SlcSource(spec)
    return NpySource(open(spec, "rb"), spec, kinds=kinds)


def read_ints(path: str | None, what: str) -> np.ndarray | None:
    """A small integer ``.npy`` (sequence offsets, token ids), read without unpickling."""
    if path is None:
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SlcInputError(f"expected an .npy of integers for `{what}`, got {path} ({e})") from None
    if a.dtype.kind not in "iu":
        raise SlcInputError(f"expected integers in `{what}` {path}, got dtype {a.dtype}")
    return a


class SparseSource(LabelSource):
    """Already-sparse token labels: ``values`` (N, k) log-probabilities (or probabilities) over a
    vocabulary of ``vocab`` words, and their word ``indices`` (N, k). Rows are sorted, most probable
    first; the mass they leave is the tail. ``read`` returns :class:`~slc.sparse.SparseLabels`."""

    def __init__(self, values: LabelSource, indices: LabelSource, vocab: int):
        (_, n, k), (_, n2, k2) = values.shape, indices.shape
        if values.shape[0] != 1 or indices.shape[0] != 1:
            raise SlcInputError(f"expected (tokens, k) arrays of values and indices, got {values.shape} and {indices.shape}")
        if (n, k) != (n2, k2):
            raise SlcInputError(f"expected indices of the values' shape ({n}, {k}), got ({n2}, {k2}) in {indices.name}")
        if not k < vocab:
            raise SlcInputError(f"expected fewer words per token than the vocabulary ({vocab}), got top-k {k}")
        self.values, self.indices, self.vocab = values, indices, vocab
        self.name, self.dtype, self.shape = values.name, values.dtype, (1, n, vocab)
        self.seekable = values.seekable and indices.seekable
        self.k = k

    def read(self, epoch, start, stop):
        from slc.codecs.sparse import sparse_rows

        return sparse_rows(self.values.read(0, start, stop), self.indices.read(0, start, stop), self.vocab, start)

    def close(self):
        self.values.close()
        self.indices.close()
