"""What every importer returns (:class:`Imported`), and what ``slc inspect`` says about an import."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from slc.interop.crops import CropStream
from slc.sources import LabelSource


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


def tree_bytes(paths) -> int:
    """Total size of ``paths`` on disk."""
    return sum(os.path.getsize(p) for p in paths)
