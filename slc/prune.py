"""LPLD's label pruning (Xiao & He, 2024): store a random 1/r of the relabelled epochs.

A pruned file holds ``E' = round(E / r)`` of the ``E`` epochs, chosen at random with the seed
and kept in order, plus a REQUIRED ``epochs.map`` section: for each stored epoch, the epoch of
the augmentation recipe it was relabelled in (so crops replay exactly). The student cycles
through the stored epochs, or draws stored batches at random (``train-student --sampling lpld``).
Pruning stacks with any codec: the codec then only has to reach ``ratio / r``.

Pruning is by whole epochs, not by LPLD's random batches: every kept epoch still shows each
image once, so classes stay balanced, and crop replay stays one lookup per epoch.
"""
from __future__ import annotations

import numpy as np

from slc.errors import SlcInputError
from slc.sources import LabelSource

def kept_epochs(epochs: int, factor: float, seed: int = 0) -> np.ndarray:
    """Which of ``epochs`` stored epochs a prune by ``factor`` keeps (sorted)."""
    if not factor >= 1:
        raise SlcInputError(f"expected a prune factor >= 1, got {factor}")
    keep = round(epochs / factor)
    if keep < 1:
        raise SlcInputError(f"expected a prune factor of at most {epochs} (one stored epoch of {epochs}), got "
                            f"{factor:g}; the nearest reachable is {epochs}x")
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(epochs, keep, replace=False))


class PrunedSource(LabelSource):
    """The stored epochs ``kept`` of another source, renumbered 0..len(kept)-1."""

    def __init__(self, src: LabelSource, kept: np.ndarray):
        if not src.seekable:
            raise SlcInputError(f"expected a labels file to prune, got a stream ({src.name})")
        self.src, self.kept = src, kept
        self.name, self.dtype, self.seekable = src.name, src.dtype, True
        self.shape = (len(kept), src.shape[1], src.shape[2])

    def read(self, epoch, start, stop):
        return self.src.read(int(self.kept[epoch]), start, stop)

    def close(self):
        self.src.close()
