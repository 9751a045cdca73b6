"""What every importer returns (:class:`Imported`), and the pieces importers share: the input's identity for
``--resume``, and sparse token labels in a temporary folder."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from slc.interop.crops import CropStream
from slc.sources import ArraySource, LabelSource, SparseSource


@dataclass
class Imported:
    """Labels another tool wrote, opened for :func:`slc.interop.write.import_file`.

    ``labels``: an ``(E, N, C)`` source (dense), or a :class:`~slc.sources.SparseSource` for token
    formats. ``source``: ``"logits"`` or ``"probs"``, what the values are. ``temperature``: the one
    their trainer uses, which the file keeps. ``crops``: how each label's crop is replayed
    (:class:`slc.interop.crops.CropStream`), or None. ``sequences``/``token_ids``: token formats.
    ``summary``: what was found, shown by ``slc inspect`` (format, epochs, batches, crops, dtype,
    classes, files, bytes on disk).
    """

    format: str
    labels: LabelSource
    source: str
    temperature: float
    crops: CropStream | None = None
    sequences: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    summary: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # what identifies the input for --resume (paths, sizes, mtimes)

    def close(self) -> None:
        self.labels.close()


class TempSparse(SparseSource):
    """A :class:`SparseSource` over memory-mapped arrays in a temporary folder, removed by :meth:`close`."""

    def __init__(self, tmp: tempfile.TemporaryDirectory, values: np.ndarray, indices: np.ndarray, vocab: int,
                 name: str):
        super().__init__(ArraySource(values, name), ArraySource(indices, name, kinds="iu"), vocab)
        self.tmp = tmp

    def close(self) -> None:
        super().close()
        self.tmp.cleanup()


def temp_arrays(n: int, k: int, vocab_hint: int) -> tuple[tempfile.TemporaryDirectory, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """A temporary folder and three arrays mapped in it: values (n, k) float32, word ids (n, k), input tokens (n,)."""
    tmp = tempfile.TemporaryDirectory(prefix="slc-import-")
    ids = np.int32 if vocab_hint < 2 ** 31 else np.int64
    values = np.lib.format.open_memmap(os.path.join(tmp.name, "values.npy"), "w+", np.float32, (n, k))
    words = np.lib.format.open_memmap(os.path.join(tmp.name, "indices.npy"), "w+", ids, (n, k))
    tokens = np.lib.format.open_memmap(os.path.join(tmp.name, "tokens.npy"), "w+", ids, (n,))
    return tmp, values, words, tokens


def input_identity(paths: list[str], root: str) -> dict:
    """What identifies an input for ``--resume``: its path, files, bytes and latest mtime."""
    return {"input": os.path.abspath(root), "files": len(paths), "bytes": sum(os.path.getsize(p) for p in paths),
            "mtime_ns": max(os.stat(p).st_mtime_ns for p in paths)}
