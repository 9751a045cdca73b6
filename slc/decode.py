"""Stream decoded labels out of a ``.slc`` file as ``.npy`` (file or stdout) or HDF5."""
from __future__ import annotations

import sys
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npformat

from slc.atomic import atomic_output, atomic_path, check_output, check_space
from slc.errors import SlcInputError
from slc.reader import SlcFile, open_slc


def _npy_header(f: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> None:
    npformat.write_array_header_2_0(f, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": False,
                                        "shape": shape})


def _blocks(f: SlcFile, epochs, start, stop, out, temperature, dtype):
    for _, _, a in f.iter_chunks(epochs, start, stop, out, temperature):
        yield np.ascontiguousarray(a, dtype=dtype)


def sparse_dtype(k: int) -> np.dtype:
    """One record per token: the stored words, their log-probabilities, the tail's log-mass."""
    return np.dtype([("indices", "<i4", (k,)), ("logp", "<f4", (k,)), ("tail", "<f4")])


def _sparse_records(f: SlcFile, start: int, stop: int, dt: np.dtype):
    for _, s in f.iter_sparse(start, stop):
        rec = np.empty(len(s), dt)
        rec["indices"], rec["logp"], rec["tail"] = s.indices, s.logp, s.tail
        yield rec


def export(path: str, output: str, epochs: list[int] | None = None, start: int = 0, stop: int | None = None,
           out: str = "probs", temperature: float | None = None, dtype: str = "float32", force: bool = False,
           sparse: bool = False) -> tuple:
    """Decode ``path`` to ``output`` (``.npy``, ``.h5``/``.hdf5`` or ``-``); return the written shape.

    ``sparse`` (token files): per token the stored words, log-probabilities and tail, as records of
    :func:`sparse_dtype` (npy) or datasets ``indices``, ``logp``, ``tail`` and ``offsets`` (HDF5).
    """
    if temperature is not None and not temperature > 0:
        raise SlcInputError(f"expected a `temperature` > 0, got {temperature}")
    dt = np.dtype(dtype).newbyteorder("<")
    kind = "npy" if output == "-" or output.lower().endswith(".npy") else "h5" if output.lower().endswith(
        (".h5", ".hdf5")) else None
    if kind is None:
        raise SlcInputError(f"expected an output ending in .npy, .h5 or .hdf5, or -, got {output!r}")
    if output != "-":
        check_output(output, force)
    elif sys.stdout.isatty():  # as gzip does: binary on a terminal is garbage, and can upset it
        raise SlcInputError("expected a pipe or a file for binary npy output on stdout, got a terminal; pipe it "
                            "(... -o - | python consumer.py) or write a file (-o out.npy)")
    with open_slc(path) as f:
        e_all, n_all, c = f.shape
        stop_ = n_all if stop is None else stop
        f.check_range(start, stop_)
        sel = f.select_epochs(epochs)
        n = stop_ - start
        shape = (n, c) if len(sel) == 1 else (len(sel), n, c)
        blocks = _blocks(f, sel, start, stop_, out, temperature, dt)
        if sparse:
            k = f.sparse_codec.k
            if temperature not in (None, f.temperature) or out != "probs" or dt != np.dtype("<f4"):
                raise SlcInputError("expected no `temperature`, `out='logits'` or `dtype` with `sparse=True` (it writes the stored "
                                    "log-probabilities)")
            dt, shape = sparse_dtype(k), (n,)
            blocks = _sparse_records(f, start, stop_, dt)
        if output != "-":  # fail now, not hours in (and HDF5 cannot recover from a full disk mid-write)
            check_space(output, int(np.prod(shape)) * dt.itemsize * 101 // 100 + (64 << 10))  # + headers, HDF5's index
        if output == "-":
            stream = sys.stdout.buffer
            _npy_header(stream, shape, dt)
            for b in blocks:
                stream.write(b.data)  # the array's own bytes: no copy
            stream.flush()
        elif kind == "npy":
            with atomic_output(output, force) as o:
                _npy_header(o, shape, dt)
                for b in blocks:
                    o.write(b.data)
        else:
            import h5py

            with atomic_path(output, force) as tmp:
                with h5py.File(tmp, "w") as h5:
                    if sparse:
                        _sparse_h5(h5, f, start, stop_, path)
                        return shape
                    ds = h5.create_dataset("labels", shape=shape, dtype=dt, chunks=(min(n, 1024), c) if len(
                        sel) == 1 else (1, min(n, 1024), c))
                    ds.attrs["kind"] = out
                    ds.attrs["temperature"] = temperature if temperature is not None else f.temperature
                    ds.attrs["source"] = path
                    for e, s, a in f.iter_chunks(sel, start, stop_, out, temperature):
                        rows = slice(s - start, s - start + len(a))
                        ds[(rows,) if len(sel) == 1 else (sel.index(e), rows)] = a.astype(dt)
    return shape


def _sparse_h5(h5, f: SlcFile, start: int, stop: int, path: str) -> None:
    n, k = stop - start, f.sparse_codec.k
    chunk = (min(max(n, 1), 1024), k)
    ds = {"indices": h5.create_dataset("indices", (n, k), "<i4", chunks=chunk),
          "logp": h5.create_dataset("logp", (n, k), "<f4", chunks=chunk),
          "tail": h5.create_dataset("tail", (n,), "<f4", chunks=chunk[:1])}
    offsets = f.offsets[(f.offsets > start) & (f.offsets < stop)] - start
    h5["offsets"] = np.concatenate([[0], offsets, [n]]).astype(np.int64)
    h5.attrs.update(temperature=f.temperature, source=path, vocab=f.header.classes)
    for a, s in f.iter_sparse(start, stop):
        rows = slice(a - start, a - start + len(s))
        ds["indices"][rows], ds["logp"][rows], ds["tail"][rows] = s.indices, s.logp, s.tail
