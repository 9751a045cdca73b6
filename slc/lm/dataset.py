"""A student's view of a token file: per sequence, the input tokens and the teacher's sparse targets.

    ds = TokenLabelDataset("corpus.slc", vocab=student_vocab)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_tokens)
    for batch in loader:
        logits = student(batch["ids"])                                   # (B, L, V)
        loss = kd_loss(logits[batch["mask"]], batch["indices"][batch["mask"]], batch["logp"][batch["mask"]],
                       batch["tail"][batch["mask"]], mode="dense", prior_logp=ds.prior_logp, tail_mode=ds.tail_mode)

The file is opened lazily in each worker process, so the dataset pickles into DataLoader workers.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from slc.errors import SlcInputError


class TokenLabelDataset(torch.utils.data.Dataset):
    """Item ``i``: ``{"ids", "indices", "logp", "tail"}`` tensors of sequence ``i`` (``ids`` needs ``tokens.ids``).

    ``vocab``: the student's vocabulary size; a file over a different vocabulary is refused.
    ``max_len``: cut each sequence to its first ``max_len`` tokens (a student's context).
    """

    def __init__(self, path: str | os.PathLike, *, vocab: int | None = None, max_len: int | None = None):
        from slc.reader import open_slc

        self.path = os.fspath(path)
        with open_slc(self.path) as f:
            codec = f.sparse_codec
            self.vocab, self.k, self.sequences = f.header.classes, codec.k, f.sequences
            self.offsets = f.offsets.copy()
            self.has_ids = f.token_ids(0, 0) is not None
            self.tail = codec.tail
            self.tail_mode = codec.dense_tail  # kd_loss(mode="dense") spreads the tail as the file's decoder does
            self.prior_logp = None if codec.prior_logp is None else torch.from_numpy(codec.prior_logp.copy())
            self.temperature = f.temperature
        if vocab is not None and vocab != self.vocab:
            raise SlcInputError(f"vocabulary mismatch: expected a student over the file's {self.vocab:,} words, got "
                                f"{vocab:,}")
        if max_len is not None and max_len < 1:
            raise SlcInputError(f"expected max_len >= 1, got {max_len}")
        self.max_len = max_len
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return self.sequences

    def _slc(self):
        if self._file is None or self._pid != os.getpid():
            from slc.reader import open_slc

            self._file, self._pid = open_slc(self.path), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        f = self._slc()
        a, b = f.sequence_range(i)
        if self.max_len is not None:
            b = min(b, a + self.max_len)
        s = f.sparse(a, b)
        item = {"indices": torch.from_numpy(s.indices.astype(np.int64)), "logp": torch.from_numpy(s.logp),
                "tail": torch.from_numpy(s.tail)}
        if self.has_ids:
            item["ids"] = torch.from_numpy(f.token_ids(a, b).astype(np.int64))
        return item


def collate_tokens(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad sequences to the longest: ``mask`` (B, L) marks real tokens; padded targets are empty (tail 0)."""
    n = max(len(it["tail"]) for it in items)
    k = items[0]["indices"].shape[1]
    out = {"mask": torch.zeros(len(items), n, dtype=torch.bool), "indices": torch.zeros(len(items), n, k, dtype=torch.long),
           "logp": torch.full((len(items), n, k), float("-inf")), "tail": torch.zeros(len(items), n)}
    if "ids" in items[0]:
        out["ids"] = torch.zeros(len(items), n, dtype=torch.long)
    for j, it in enumerate(items):
        m = len(it["tail"])
        out["mask"][j, :m] = True
        for key in ("indices", "logp", "tail", "ids"):
            if key in it:
                out[key][j, :m] = it[key]
    return out
