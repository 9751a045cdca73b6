"""Batch-file layouts of SRe2L-style relabelling: SRe2L and CDA, LPLD, LPQLD and HALD.

Every one stores, per relabel batch, a list whose first items are the crop fractions, the flips
and the batch's mix, and whose last item(s) are the teacher's labels (commits read: SRe2L
``8d00cba``, LPLD ``63eee18``, LPQLD ``107c7a5``, HALD ``ffbca04``):

==========  ========================================  ============================================
format      files                                      labels; which image each row is
==========  ========================================  ============================================
``sre2l``   ``epoch_{e}/batch_{b}.tar``: 6 items       fp16/fp32 logits ``[B, C]``; a ``RandomSampler``
                                                       seeded 42, one permutation per epoch
``lpld``    the same + ``sampler_indices_epoch.json``  the same; the json's index list per epoch
``lpqld``   ``batch_{g}.tar``: 7 items (6 unquantised)  top-k fp16 logits + int16 classes; the json
            + ``sampler_indices_batch.json``           ``sampler_indices_batch.json`` per batch
``hald``    ``epoch_{k}.tar``: a list of batches      fp16 softmax at T; ``sampler_indices_dict.pt``
            + ``sampler_indices_dict.pt``
==========  ========================================  ============================================

The 6 items: ``[coords [B, 4], flip [B], mix_index [B] | None, lam | None, bbox [4] | None, labels]``.
LPQLD's top-k is turned into what its trainer ("MR-k") makes of it: the softmax of the k stored
logits at the temperature, zero elsewhere (a probability file at that temperature).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from slc.errors import SlcInputError
from slc.interop.base import Imported, input_identity
from slc.interop.crops import BatchCrops, CropStream
from slc.interop.safeload import load
from slc.sources import LabelSource

SAMPLER_SEED = 42  # --fkd-seed of every reference script
TEMPERATURE = 20.0
PROB_FLOOR = 1e-30  # slc.codecs.labels.PROB_FLOOR: zero probabilities as logits  # the student temperature of SRe2L's, LPLD's, LPQLD's and HALD's reference scripts


@dataclass(frozen=True)
class BatchRef:
    """One stored batch: its file, its place in that file (HALD), and the image of each row."""

    path: str
    item: int | None
    images: np.ndarray


# ---------------------------------------------------------------- finding the batches
def _numbered(folder: str, pattern: str, what: str) -> list[str]:
    """Files ``pattern`` (one ``(\\d+)`` group) of ``folder``, by number; they must run 0, 1, 2, ... without gaps."""
    rx = re.compile(pattern)
    found = {}
    for name in os.listdir(folder):
        m = rx.fullmatch(name)
        if m:
            found[int(m.group(1))] = os.path.join(folder, name)
    if not found:
        raise SlcInputError(f"expected {what} in {folder}, got none")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        name = rx.pattern.replace(r"(\d+)", str(missing[0])).replace("\\", "")
        raise SlcInputError(f"expected {what} numbered 0..{max(found)} in {folder}, got no {name} "
                            f"({len(missing)} missing)")
    return [found[i] for i in range(len(found))]


def _rows(path: str, item: int | None = None) -> int:
    """Rows of a stored batch, from its flips (mapped, not read)."""
    batch = load(path, mmap=True)
    if item is not None:
        batch = batch[item]
    return len(_items(batch, path)[1])


def sampler_orders(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The image order of every epoch of ``DataLoader(sampler=RandomSampler(generator=manual_seed(seed)))``
    reused across epochs, as SRe2L relabels: each epoch draws ``randperm(n)`` and an empty tail ``randperm(n)[:0]``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        out.append(torch.randperm(n, generator=g).numpy().astype(np.int64))
        torch.randperm(n, generator=g)
    return out


def _json_lists(path: str) -> dict[int, list[int]]:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise SlcInputError(f"expected a JSON object of index lists in {path}, got {str(e)[:120]}") from None
    if not isinstance(d, dict) or not all(isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)
                                          for v in d.values()):
        raise SlcInputError(f"expected a JSON object of non-negative integer lists in {path}, got something else")
    try:
        return {int(k): v for k, v in d.items()}
    except ValueError:
        raise SlcInputError(f"expected integer keys in {path}, got {sorted(d)[:3]}") from None


def _cut(files: list[str], order: np.ndarray, rows: int, where: str) -> list[BatchRef]:
    """An epoch's batch files over its image order, ``rows`` per batch (the last may be short)."""
    need = -(-len(order) // rows)
    if len(files) != need:
        raise SlcInputError(f"expected {need} batch files for {len(order)} images in batches of {rows}, got "
                            f"{len(files)} in {where}")
    return [BatchRef(p, None, order[i * rows:(i + 1) * rows]) for i, p in enumerate(files)]


def find_sre2l(root: str, *, seed: int = SAMPLER_SEED, log: Callable[[str], None]) -> tuple[str, list[list[BatchRef]]]:
    """SRe2L/CDA (sampler replayed from ``seed``) or LPLD (``sampler_indices_epoch.json``)."""
    dirs = _numbered(root, r"epoch_(\d+)", "epoch_{e} folders")
    files = [_numbered(d, r"batch_(\d+)\.tar", "batch_{b}.tar files") for d in dirs]
    rows = _rows(files[0][0])
    index = os.path.join(root, "sampler_indices_epoch.json")
    if os.path.exists(index):  # LPLD: the order of every epoch is written down
        lists = _json_lists(index)
        epochs = []
        for e, fs in enumerate(files):
            if e not in lists:
                raise SlcInputError(f"expected epoch {e} in {index}, got epochs {sorted(lists)[:5]}...")
            epochs.append(_cut(fs, np.asarray(lists[e], np.int64), rows, os.path.dirname(fs[0])))
        if len(epochs) > 1 and len(epochs[-1]) < len(epochs[0]):  # a pruned run stops mid-epoch
            log(f"lpld: the last epoch's {len(epochs[-1])} batches are left out (a pruned run stops mid-epoch; "
                f"every stored epoch must hold the {len(epochs[0])} batches of the first)")
            epochs = epochs[:-1]
        return "lpld", epochs
    last = _rows(files[0][-1])
    n = rows * (len(files[0]) - 1) + last
    log(f"image order: torch RandomSampler seeded {seed} over {n} images (SRe2L's --fkd-seed), one permutation per epoch")
    orders = sampler_orders(n, len(files), seed)
    return "sre2l", [_cut(fs, o, rows, os.path.dirname(fs[0])) for fs, o in zip(files, orders)]


def find_lpqld(root: str, *, per_epoch: int | None, log: Callable[[str], None]) -> tuple[str, list[list[BatchRef]]]:
    """LPQLD: flat ``batch_{g}.tar`` with their images in ``sampler_indices_batch.json``, grouped into epochs."""
    files = _numbered(root, r"batch_(\d+)\.tar", "batch_{g}.tar files")
    index = os.path.join(root, "sampler_indices_batch.json")
    if not os.path.exists(index):
        raise SlcInputError(f"expected sampler_indices_batch.json beside LPQLD's batch files, got none in {root}")
    lists = _json_lists(index)
    refs = []
    for g, p in enumerate(files):
        if g not in lists:
            raise SlcInputError(f"expected batch {g} in {index}, got no entry for it")
        refs.append(BatchRef(p, None, np.asarray(lists[g], np.int64)))
    rows = len(refs[0].images)
    images = 1 + max(int(r.images.max(initial=0)) for r in refs)
    per = per_epoch or max(1, images // rows)  # drop_last: floor(N / B) batches per relabel epoch
    epochs = len(refs) // per
    if epochs == 0:
        raise SlcInputError(f"expected at least one epoch of {per} batches, got {len(refs)} batches in {root}")
    if len(refs) % per:
        log(f"lpqld: {len(refs) % per} batches after the last whole epoch of {per} batches are left out")
    return "lpqld", [refs[e * per:(e + 1) * per] for e in range(epochs)]


def find_hald(root: str, *, log: Callable[[str], None]) -> tuple[str, list[list[BatchRef]]]:
    """HALD: ``epoch_{k}.tar`` lists of batches, images from ``sampler_indices_dict.pt``."""
    files = _numbered(root, r"epoch_(\d+)\.tar", "epoch_{k}.tar files")
    index = os.path.join(root, "sampler_indices_dict.pt")
    if not os.path.exists(index):
        raise SlcInputError(f"expected sampler_indices_dict.pt beside HALD's epoch files, got none in {root}")
    orders = load(index)
    if not isinstance(orders, dict):
        raise SlcInputError(f"expected a dict of per-epoch index lists in {index}, got a {type(orders).__name__}")
    epochs = []
    for e, p in enumerate(files):
        order = orders.get(str(e), orders.get(e))
        if order is None:
            raise SlcInputError(f"expected epoch {e} in {index}, got keys {sorted(map(str, orders))[:5]}")
        batches = load(p, mmap=True)
        if not isinstance(batches, list) or not batches:
            raise SlcInputError(f"expected a list of batches in {p}, got {type(batches).__name__}")
        rows = len(_items(batches[0], p)[1])
        order = np.asarray(order, np.int64)
        epochs.append([BatchRef(p, j, order[j * rows:(j + 1) * rows]) for j in range(len(batches))])
        if sum(len(r.images) for r in epochs[-1]) != len(order) and len(order) > rows * len(batches):
            log(f"hald: epoch {e} labels {rows * len(batches)} of its {len(order)} images (the last partial batch "
                "is not stored)")
    return "hald", epochs


def detect(root: str) -> str:
    """The batch layout of ``root``: ``sre2l``/``lpld``, ``lpqld`` or ``hald``; otherwise ``""``."""
    if not os.path.isdir(root):
        return ""
    if os.path.isfile(os.path.join(root, "epoch_0", "batch_0.tar")):
        return "lpld" if os.path.exists(os.path.join(root, "sampler_indices_epoch.json")) else "sre2l"
    if os.path.isfile(os.path.join(root, "batch_0.tar")):
        return "lpqld"
    if os.path.isfile(os.path.join(root, "epoch_0.tar")):
        return "hald"
    return ""


# ---------------------------------------------------------------- reading a batch
def _items(batch, path: str) -> tuple:
    """``(coords, flip, mix_index, lam, bbox, labels...)`` of a stored batch, checked for their types."""
    import torch

    if not isinstance(batch, (list, tuple)) or len(batch) not in (6, 7):
        got = f"{len(batch)} items" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise SlcInputError(f"expected a batch list of 6 items (7 with top-k indices), got {got} in {path}"
                            + (" (RandAugment parameters are not supported)" if got == "8 items" else ""))
    coords, flip = batch[0], batch[1]
    if not (_array(coords) and np.asarray(coords).ndim == 2 and np.asarray(coords).shape[1] == 4):
        raise SlcInputError(f"expected crop coordinates [B, 4] first, got {_describe(coords)} in {path}")
    if not (_array(flip) and np.asarray(flip).shape == (len(coords),)):
        raise SlcInputError(f"expected {len(coords)} flips second, got {_describe(flip)} in {path}"
                            + (" (ImageNet-21K cutout files are not supported)" if _array(flip) and
                               np.asarray(flip).ndim == 2 else ""))
    return tuple(t.numpy() if isinstance(t, torch.Tensor) else t for t in batch)


def _array(x) -> bool:
    import torch

    return isinstance(x, (torch.Tensor, np.ndarray))


def _describe(x) -> str:
    return f"shape {tuple(x.shape)}" if _array(x) else type(x).__name__


def batch_crops(items: tuple, images: np.ndarray, path: str) -> BatchCrops:
    coords, flip, mix_index, lam, bbox = items[:5]
    if len(images) != len(coords):
        raise SlcInputError(f"expected {len(images)} rows (the sampler's batch), got {len(coords)} in {path}")
    partner = None if mix_index is None else np.asarray(mix_index, np.int64)
    box = None if bbox is None else tuple(int(np.asarray(v)) for v in bbox)
    if box is not None and len(box) != 4:
        raise SlcInputError(f"expected a cutmix box of 4 numbers, got {len(box)} in {path}")
    return BatchCrops(images, np.asarray(coords, np.float64), np.asarray(flip, bool), partner,
                      None if lam is None else float(lam), box)


def dense_labels(items: tuple, fmt: str, classes: int | None, temperature: float, path: str) -> np.ndarray:
    """The batch's labels as float32 logits ``[B, C]`` whose softmax at ``temperature`` is what their trainer uses.

    Stored logits (SRe2L, LPLD) pass as they are; probabilities at T (HALD) become ``T log p``; LPQLD's
    top-k logits keep their values, every other class ``T log 1e-30`` below the row's best (so the softmax
    at any T >= 1 is theirs: the k stored logits' softmax, zero elsewhere, to 1e-30).
    """
    values = np.asarray(items[5])
    if values.ndim != 2 or values.shape[0] != len(items[0]) or values.dtype.kind != "f":
        raise SlcInputError(f"expected float labels [{len(items[0])}, C], got {_describe(values)} "
                            f"{values.dtype} in {path}")
    if len(items) == 6:
        if classes is not None and values.shape[1] != classes:
            raise SlcInputError(f"expected {classes} classes (as the first batch), got {values.shape[1]} in {path}")
        if fmt != "hald":
            return values.astype(np.float32)
        return (temperature * np.log(np.maximum(values.astype(np.float64), PROB_FLOOR))).astype(np.float32)
    idx = np.asarray(items[6]).astype(np.int64)
    if idx.shape != values.shape:
        raise SlcInputError(f"expected top-k indices of the values' shape {values.shape}, got {idx.shape} in {path}")
    if idx.min(initial=0) < 0 or idx.max(initial=0) >= classes:
        raise SlcInputError(f"expected class indices below {classes}, got {int(idx.max())} in {path} (give --classes)")
    v = values.astype(np.float32)
    out = np.repeat(v.max(1, keepdims=True) + np.float32(temperature * np.log(PROB_FLOOR)), classes, 1)
    np.put_along_axis(out, idx, v, 1)
    return out


# ---------------------------------------------------------------- the import
class _Opened:
    """Stored batches by reference; a HALD epoch file (every batch of an epoch) is mapped once, not per batch."""

    def __init__(self, mmap: bool):
        self.mmap = mmap
        self._file: tuple[str, object] | None = None

    def __call__(self, ref: BatchRef):
        if ref.item is None:
            return _items(load(ref.path, mmap=self.mmap), ref.path)
        if self._file is None or self._file[0] != ref.path:
            self._file = (ref.path, load(ref.path, mmap=True))
        return _items(self._file[1][ref.item], ref.path)


class BatchLabels(LabelSource):
    """``(E, N, C)`` labels over stored batches; holds at most two decoded batches (bounded memory)."""

    def __init__(self, fmt: str, epochs: list[list[BatchRef]], classes: int, temperature: float, name: str):
        self.fmt, self.epochs, self.classes, self.temperature = fmt, epochs, classes, temperature
        sizes = [len(r.images) for r in epochs[0]]
        for e, refs in enumerate(epochs):
            if [len(r.images) for r in refs] != sizes:
                raise SlcInputError(f"expected every epoch to hold batches of {sizes[0]} rows like epoch 0, got "
                                    f"{[len(r.images) for r in refs][:4]}... in epoch {e} ({refs[0].path})")
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.shape = (len(epochs), int(self.starts[-1]), classes)
        self.dtype, self.name = np.dtype(np.float32), name
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._open = _Opened(mmap=False)

    def batch(self, e: int, b: int) -> np.ndarray:
        key = (e, b)
        if key not in self._cache:
            ref = self.epochs[e][b]
            labels = dense_labels(self._open(ref), self.fmt, self.classes, self.temperature, ref.path)
            if len(labels) != len(ref.images):
                raise SlcInputError(f"expected {len(ref.images)} rows (the sampler's batch), got {len(labels)} in "
                                    f"{ref.path}")
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = labels
        return self._cache[key]

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.classes), np.float32)
        b = int(np.searchsorted(self.starts, start, side="right")) - 1
        at = start
        while at < stop:
            lo, hi = int(self.starts[b]), int(self.starts[b + 1])
            take = min(stop, hi) - at
            out[at - start:at - start + take] = self.batch(epoch, b)[at - lo:at - lo + take]
            at, b = at + take, b + 1
        return out


class BatchCropStream(CropStream):
    """The crops of stored batches, read with tensor storages mapped (the labels are not read again)."""

    def __init__(self, epochs: list[list[BatchRef]], rule: str, mix: str, batch: int):
        self.refs, self.rule, self.mix, self.batch = epochs, rule, mix, batch
        self.epochs, self.n = len(epochs), sum(len(r.images) for r in epochs[0])

    def order(self, e: int) -> np.ndarray:
        return np.concatenate([r.images for r in self.refs[e]])

    def epoch(self, e: int) -> Iterator[BatchCrops]:
        opened = _Opened(mmap=True)
        for ref in self.refs[e]:
            yield batch_crops(opened(ref), ref.images, ref.path)


def open_batches(root: str, fmt: str = "auto", *, seed: int = SAMPLER_SEED, classes: int | None = None,
                 temperature: float | None = None, per_epoch: int | None = None,
                 log: Callable[[str], None] = lambda line: None) -> Imported:
    """Open an SRe2L/CDA, LPLD, LPQLD or HALD folder for import."""
    found = detect(root)
    if not found:
        raise SlcInputError(f"expected an SRe2L/LPLD (epoch_0/batch_0.tar), LPQLD (batch_0.tar) or HALD "
                            f"(epoch_0.tar) folder, got {root}")
    family = {"sre2l": "sre2l", "lpld": "sre2l", "cda": "sre2l", "lpqld": "lpqld", "hald": "hald"}
    if fmt not in ("auto", found) and family.get(fmt) != family[found]:
        raise SlcInputError(f"expected a {fmt} folder, got the layout of {found} in {root}")
    if family[found] == "sre2l":
        found, epochs = find_sre2l(root, seed=seed, log=log)
    elif found == "lpqld":
        found, epochs = find_lpqld(root, per_epoch=per_epoch, log=log)
    else:
        found, epochs = find_hald(root, log=log)
    T = TEMPERATURE if temperature is None else temperature
    first = epochs[0][0]
    probe = _Opened(mmap=True)(first)
    stored_dtype = str(np.asarray(probe[5]).dtype)
    if len(probe) == 7 and classes is None:
        raise SlcInputError(f"expected --classes for LPQLD top-k files (they store class indices only), got none "
                            f"for {root}")
    c = classes if len(probe) == 7 else np.asarray(probe[5]).shape[1]
    labels = BatchLabels(found, epochs, c, T, root)
    mix = batch_crops(probe, first.images, first.path).mix
    crops = BatchCropStream(epochs, "floor" if found == "hald" else "round", mix, len(first.images))
    paths = sorted({r.path for refs in epochs for r in refs})
    source = "logits"  # probabilities at T (HALD) and LPQLD's top-k arrive as logits at T: see dense_labels
    e, n, _ = labels.shape
    identity = {**input_identity(paths, root), "seed": seed, "per_epoch": per_epoch}
    summary = {"format": found, "files": len(paths), "epochs": e, "batches": sum(len(r) for r in epochs),
               "batch": len(first.images), "crops": e * n, "dtype": stored_dtype, "classes": c,
               "topk": int(np.asarray(probe[5]).shape[1]) if len(probe) == 7 else None, "mix": mix,
               "stored": {"hald": "probabilities"}.get(found, "logits") if len(probe) == 6 else "top-k logits",
               "bytes": identity["bytes"]}
    return Imported(found, labels, source, T, crops, summary=summary, identity=identity)
