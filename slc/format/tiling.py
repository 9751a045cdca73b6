"""How chunks tile a file's ``epochs x samples`` labels, and where label ``(epoch, sample)`` lives.

Every epoch is cut into chunks of ``chunk_size`` samples (the last one shorter), in epoch order.
From format 1.5 a file whose epochs are short may instead store ``epochs_per_chunk = G >= 2``
whole epochs in each chunk (``G * samples <= chunk_size``), epoch-major: chunk ``j`` holds epochs
``jG .. jG + G - 1`` (the last chunk fewer), so the index and the per-chunk zstd frame cost one
entry per ``G`` epochs instead of one per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from slc.errors import expect

SINCE_MINOR = 5  # the format minor version of chunks that span epochs


def most_epochs(epochs: int, samples: int, chunk_size: int) -> int:
    """The most whole epochs one chunk can hold."""
    return min(epochs, chunk_size // samples)


def allowed(epochs: int, samples: int, chunk_size: int, epochs_per_chunk: int) -> bool:
    """Whether ``epochs_per_chunk`` is 1 or 2 .. :func:`most_epochs`."""
    return epochs_per_chunk == 1 or 2 <= epochs_per_chunk <= most_epochs(epochs, samples, chunk_size)


@dataclass(frozen=True)
class Tiling:
    epochs: int
    samples: int
    chunk_size: int
    epochs_per_chunk: int = 1

    def __post_init__(self) -> None:
        g = self.epochs_per_chunk
        expect(allowed(self.epochs, self.samples, self.chunk_size, g),
               f"epochs_per_chunk 1, or 2 .. {self.epochs} with epochs_per_chunk x samples <= chunk_size "
               f"{self.chunk_size}", f"{g} (x {self.samples} samples)")

    @classmethod
    def default(cls, epochs: int, samples: int, chunk_size: int) -> "Tiling":
        """As many whole epochs a chunk as ``chunk_size`` holds (one epoch a chunk when it holds fewer than 2)."""
        g = most_epochs(epochs, samples, chunk_size)
        return cls(epochs, samples, chunk_size, g if g >= 2 else 1)

    @property
    def spans_epochs(self) -> bool:
        return self.epochs_per_chunk > 1

    @property
    def per_epoch(self) -> int:
        """Chunks in one epoch (chunks that span epochs: 1, shared)."""
        return 1 if self.spans_epochs else -(-self.samples // self.chunk_size)

    def __len__(self) -> int:
        g = self.epochs_per_chunk
        return -(-self.epochs // g) if g > 1 else self.epochs * self.per_epoch

    def chunk(self, i: int) -> tuple[int, int, int]:
        """``(epoch, start, count)`` of chunk ``i``, as its index entry holds them."""
        g = self.epochs_per_chunk
        if g > 1:
            return i * g, 0, min(g, self.epochs - i * g) * self.samples
        e, j = divmod(i, self.per_epoch)
        start = j * self.chunk_size
        return e, start, min(self.chunk_size, self.samples - start)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return (self.chunk(i) for i in range(len(self)))

    def contents(self, i: int) -> Iterator[tuple[int, int, int, int]]:
        """``(epoch, first sample, first row, last row + 1)`` of each epoch's part of chunk ``i``."""
        e, start, count = self.chunk(i)
        if self.epochs_per_chunk == 1:
            yield e, start, 0, count
            return
        for j in range(count // self.samples):
            yield e + j, 0, j * self.samples, (j + 1) * self.samples

    def counts(self) -> dict[int, int]:
        """``{label count: how many chunks hold that many}``, without listing the chunks."""
        g, out = self.epochs_per_chunk, {}
        if g > 1:
            full, rest = divmod(self.epochs, g)
            parts = [(g * self.samples, full), (rest * self.samples, 1 if rest else 0)]
        else:
            full, rest = divmod(self.samples, self.chunk_size)
            parts = [(self.chunk_size, full * self.epochs), (rest, self.epochs if rest else 0)]
        for count, times in parts:
            if times:
                out[count] = out.get(count, 0) + times
        return out

    def source_block(self, chunk: int) -> int:
        """The block number (blocks of ``chunk_size`` that never cross an epoch) chunk ``chunk`` starts at."""
        return chunk * self.epochs_per_chunk

    def locate(self, epoch: int, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
        """``(chunk, first row, last row + 1, first sample)`` for samples ``[start, stop)`` of ``epoch``."""
        g = self.epochs_per_chunk
        if g > 1:
            if start < stop:
                row = (epoch % g) * self.samples
                yield epoch // g, row + start, row + stop, start
            return
        s = self.chunk_size
        for j in range(start // s, -(-stop // s)):
            a = max(start, j * s)
            yield epoch * self.per_epoch + j, a - j * s, min(stop, (j + 1) * s) - j * s, a
