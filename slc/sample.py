"""The fit sample: labels drawn from a source to fit a codec, spread out, held-out positions excluded."""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from slc.codecs.base import Kind
from slc.codecs.labels import check_block, to_logp
from slc.codecs.sparse import SparseLabels
from slc.sources import LabelSource

SAMPLE_BLOCK_ELEMENTS = 1 << 26  # floats per block read for a fit sample (256 MB): large vocabularies read fewer rows
HEAD_ELEMENTS = 1 << 28  # floats of a stream's first rows kept as its fit sample


def sample_blocks(src: LabelSource, source: Kind, temperature: float, labels: int, seed: int,
                  fit_samples: int | None = None, neg_inf: bool = False) -> Iterator[np.ndarray | SparseLabels]:
    """Blocks of up to ``labels`` rows spread over a seekable source, as log-probabilities.

    ``fit_samples`` limits the sample to positions below it in each epoch (the rest is held out).
    Sparse sources yield their rows as they are.
    """
    e_count, full_n, c = src.shape
    n = min(full_n, fit_samples or full_n)

    def read(e: int, s: int, stop: int):
        block = src.read(e, s, stop)
        if isinstance(block, SparseLabels):
            return block
        check_block(block, source, e * full_n + s, neg_inf)
        return to_logp(block, source, temperature)

    rows = max(1, min(4096, SAMPLE_BLOCK_ELEMENTS // c))
    if labels >= e_count * n:
        for e in range(e_count):
            for s in range(0, n, rows):
                yield read(e, s, min(n, s + rows))
        return
    rng = np.random.default_rng(seed)
    # whole runs of 256 rows at random places: few seeks, still a spread-out sample
    run = min(256, n)
    per_epoch = n // run  # runs never cross an epoch boundary
    count = min(e_count * per_epoch, math.ceil(labels / run))
    runs = np.sort(rng.choice(e_count * per_epoch, size=count, replace=False))
    left = labels
    for r in runs:
        e, s = divmod(int(r), per_epoch)
        s *= run
        yield read(e, s, s + min(run, left))
        left -= run


def fit_sample(src: LabelSource, source: Kind, temperature: float, labels: int, seed: int,
               fit_samples: int | None = None) -> np.ndarray:
    """:func:`sample_blocks` as one ``(rows, C)`` array, filled in place (no list + concatenate copy)."""
    e_count, full_n, c = src.shape
    n = min(full_n, fit_samples or full_n)
    out = np.empty((min(labels, e_count * n), c), np.float32)
    at = 0
    for block in sample_blocks(src, source, temperature, labels, seed, fit_samples):
        out[at:at + len(block)] = block
        at += len(block)
    return out[:at]  # fewer than asked when the runs of 256 cannot cover it


