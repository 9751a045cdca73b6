"""FKD (szq0214/FKD, ``FKD_SLG/generate_soft_label.py``, commit ``afd5294``): one ``.tar`` per training image.

Layout: ``ROOT/<class>/<stem>.tar`` for the image ``train/<class>/<stem>.<ext>`` (the stem cut at its
first ``.``). ROOT is what their trainer gets as ``--softlabel_path``, so it usually holds ``train/``:
:func:`open_fkd` takes either that folder or ``train/`` itself, whichever has class folders with
``.tar`` files (the given folder wins). Each file is ``torch.save`` of a list of 3 numpy arrays:

- coords ``[crops, 4]`` float32 (float16 with ``--use_fp16``): ``(top/H, left/W, height/H, width/W)``;
- flip ``[crops]`` bool;
- labels ``[crops, 2, K]`` float32/float16: ``[:, 0]`` class indices (as floats), ``[:, 1]`` their
  softmax probabilities at T=1, in decreasing order (``--label_type marginal_smoothing_k5``, the
  default, or ``_k10``). ``hard`` and ``smoothing`` files are refused; ``marginal_renorm_k5`` files are
  the same arrays and are read as marginal smoothing, what their trainer's default does with them.

Dense labels are their trainer's ``Recover_soft_label``: the K probabilities at their classes and
``(1 - sum(top-K)) / (C - K)`` on every other class, float32, computed with torch as they do, so the
values are theirs bit for bit, with two exceptions: float16 values are widened to float32 first (their
``scatter_`` refuses float16 into float32), and where the stored top-K sums past 1 (float rounding of a
near-certain teacher, e.g. a top-1 of 1.0) the remainder is 0, not their slightly negative value.

In the ``.slc``, epoch ``e`` is crop ``e`` of every image and position ``s`` is image ``s``: images in
ImageFolder order (class folders sorted, then file names sorted). That is the rank of each ``.tar``,
which equals the rank of its image when every image has exactly one label file (a ``.tar`` name sorts
like its image's name: both are the stem then a ``.``); the stream's ``names`` (``class/stem``) let
the writer check it against the image folder.

FKD keeps all crops of an image in one file, but compression reads epoch by epoch. Reading every file
once per epoch would cost ``crops x images`` loads (500 x 1.28M for ImageNet), so the first read makes
one pass over the files and writes their arrays, epoch-major, to two temporary files (``workdir``,
default the system's temporary folder; the same size as the input, or a little more), which later reads
slice. Memory stays bounded by one chunk of :data:`CHUNK_BYTES`.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
import time
from typing import Callable, Iterator

import numpy as np

from slc.errors import SlcInputError
from slc.interop.base import Imported, input_identity
from slc.interop.crops import BatchCrops, CropStream
from slc.interop.safeload import load
from slc.sources import LabelSource

CLASSES = 1000  # their trainer's --num_classes default (ImageNet-1k)
CHUNK_BYTES = 64 << 20  # the images whose arrays are held at once while transposing
CROP_ROWS = 1 << 16  # images per BatchCrops


# ---------------------------------------------------------------- finding the files
def _has_class_tars(folder: str) -> bool:
    """Whether ``folder`` has a subfolder holding ``.tar`` files."""
    if not os.path.isdir(folder):
        return False
    for entry in os.scandir(folder):
        if entry.is_dir() and any(f.endswith(".tar") for f in os.listdir(entry.path)):
            return True
    return False


def label_folder(root: str) -> str:
    """The folder of class folders: ``root`` itself, or ``root/train``."""
    for top in (root, os.path.join(root, "train")):
        if _has_class_tars(top):
            return top
    raise SlcInputError(f"expected FKD label files (ROOT/<class>/<image>.tar or ROOT/train/<class>/<image>.tar, "
                        f"ROOT being their --softlabel_path), got none in {root}")


def list_files(top: str) -> tuple[list[str], list[str]]:
    """``(paths, names)`` of the ``.tar`` files under ``top``, in ImageFolder order."""
    paths, names = [], []
    for cls in sorted(e.name for e in os.scandir(top) if e.is_dir()):
        files = sorted((e for e in os.scandir(os.path.join(top, cls)) if e.name.endswith(".tar") and e.is_file()),
                       key=lambda e: e.name)
        for entry in files:
            paths.append(entry.path)
            names.append(f"{cls}/{entry.name[:-4]}")
    return paths, names


# ---------------------------------------------------------------- one file
def _array(obj, name: str, what: str) -> np.ndarray:
    import torch

    if isinstance(obj, torch.Tensor):
        obj = obj.numpy()
    if not isinstance(obj, np.ndarray):
        raise SlcInputError(f"expected {what} as an array, got a {type(obj).__name__} in {name}")
    return obj


def read_file(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(coords [n, 4] float, flip [n] bool, labels [n, 2, K] float)`` of one file, shapes checked."""
    obj = load(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 3:
        got = f"a list of {len(obj)}" if isinstance(obj, (list, tuple)) else f"a {type(obj).__name__}"
        raise SlcInputError(f"expected FKD's list [coords, flip, labels], got {got} in {path}")
    coords, flip, labels = (_array(o, path, w) for o, w in zip(obj, ("coords", "flips", "labels")))
    n = len(labels)
    if labels.ndim == 1 or (labels.ndim == 2 and labels.shape[1:] == (2,)):
        kind = "hard" if labels.ndim == 1 else "smoothing"
        raise SlcInputError(f"expected marginal_smoothing_k* labels [crops, 2, K], got shape {labels.shape} "
                            f"(--label_type {kind}, not supported) in {path}")
    if labels.ndim != 3 or labels.shape[1] != 2 or labels.dtype.kind != "f":
        raise SlcInputError(f"expected labels [crops, 2, K] of floats, got {labels.dtype} {labels.shape} in {path}")
    if coords.shape != (n, 4) or coords.dtype.kind != "f":
        raise SlcInputError(f"expected coords [{n}, 4] of floats (one per label), got {coords.dtype} "
                            f"{coords.shape} in {path}")
    boolean = flip.dtype.kind == "b" or (flip.dtype.kind in "iu" and np.isin(flip, (0, 1)).all())
    if flip.shape != (n,) or not boolean:
        raise SlcInputError(f"expected flips [{n}] of booleans, got {flip.dtype} {flip.shape} in {path}")
    return coords, flip.astype(bool), labels


def check_topk(labels: np.ndarray, classes: int, path: str) -> None:
    """Indices whole, distinct per crop and below ``classes``; probabilities finite."""
    idx = labels[:, 0, :].astype(np.float64)
    bad = (idx != np.round(idx)) | (idx < 0) | (idx >= classes) | ~np.isfinite(idx)
    if bad.any():
        raise SlcInputError(f"expected class indices 0..{classes - 1} (--classes {classes}), got "
                            f"{idx[bad].flat[0]:g} in {path}")
    s = np.sort(idx, axis=1)
    if (s[:, 1:] == s[:, :-1]).any():
        raise SlcInputError(f"expected distinct classes in each crop's top-k, got a repeated one in {path}")
    if not np.isfinite(labels[:, 1, :]).all():
        raise SlcInputError(f"expected finite probabilities, got NaN or inf in {path}")


def recover(topk: np.ndarray, classes: int) -> np.ndarray:
    """Their ``Recover_soft_label`` (``marginal_smoothing_k*``) of ``[n, 2, K]`` rows: float32 ``[n, classes]``."""
    import torch

    label = torch.from_numpy(np.array(topk, dtype=np.float32))  # a writable copy
    index = label[:, 0, :].to(dtype=torch.int64)
    value = label[:, 1, :]
    minor = (torch.ones(label.size(0), 1) - torch.sum(value, dim=1, keepdim=True)) / (classes - label.size(2))
    minor.clamp_min_(0.0)  # a top-K summing past 1 (rounding of a near-certain teacher): theirs goes negative
    return (minor * torch.ones(index.size(0), classes)).scatter_(1, index, value).numpy()


# ---------------------------------------------------------------- the epoch-major copy
def _cast(a: np.ndarray, dtype: np.dtype, what: str, first: str, path: str) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if not np.can_cast(a.dtype, dtype, "safe"):
        raise SlcInputError(f"expected {what} of {dtype} like {first}, got {a.dtype} in {path}")
    return a.astype(dtype)


class FkdStore:
    """All files' arrays, epoch-major, in two temporary files made by one pass (:meth:`build`)."""

    def __init__(self, paths: list[str], crops: int, k: int, coord_dtype: np.dtype, label_dtype: np.dtype,
                 classes: int, workdir: str | None = None, log: Callable[[str], None] = lambda s: None,
                 progress: Callable[[int, int], None] | None = None):
        self.paths, self.crops, self.k, self.classes, self.workdir, self.log = paths, crops, k, classes, workdir, log
        self.progress = progress  # (files read, of how many) during the one pass
        self.crop_dtype = np.dtype([("coords", coord_dtype, (4,)), ("flip", np.bool_)])
        self.label_dtype = np.dtype((label_dtype, (2, k)))
        self.files: list = []  # [crops file, labels file] once built

    def check(self, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One file's arrays, checked against the first and cast to its dtypes."""
        coords, flip, labels = read_file(path)
        if labels.shape != (self.crops, 2, self.k):
            raise SlcInputError(f"expected {self.crops} crops of top-{self.k} labels like {self.paths[0]}, got "
                                f"{labels.shape[0]} crops of top-{labels.shape[2]} in {path}")
        check_topk(labels, self.classes, path)
        return (_cast(coords, self.crop_dtype["coords"].base, "coords", self.paths[0], path), flip,
                _cast(labels, self.label_dtype.base, "labels", self.paths[0], path))

    def build(self) -> None:
        """Read every file once; write crop ``e`` of images ``a..b`` at row ``e * N + a`` of each copy."""
        if self.files:
            return
        e_count, n = self.crops, len(self.paths)
        per_image = e_count * (self.crop_dtype.itemsize + self.label_dtype.itemsize)
        group = max(1, CHUNK_BYTES // per_image)
        self.log(f"fkd: reading {n:,} files once into an epoch-major copy of {n * per_image:,} bytes in "
                 f"{self.workdir or tempfile.gettempdir()}")
        t0 = time.monotonic()
        files = [tempfile.TemporaryFile(prefix="slc-fkd-", dir=self.workdir) for _ in range(2)]
        try:
            for a in range(0, n, group):
                b = min(n, a + group)
                crops = np.empty((e_count, b - a), self.crop_dtype)
                labels = np.empty((e_count, b - a, 2, self.k), self.label_dtype.base)
                for i in range(a, b):
                    crops["coords"][:, i - a], crops["flip"][:, i - a], labels[:, i - a] = self.check(self.paths[i])
                if self.progress:
                    self.progress(b - a, n)
                for f, arr, dtype in zip(files, (crops, labels), (self.crop_dtype, self.label_dtype)):
                    for e in range(e_count):
                        _write(f, arr[e].tobytes(), (e * n + a) * dtype.itemsize)
        except BaseException:
            for f in files:
                f.close()
            raise
        self.files = files
        self.log(f"fkd: {n:,} files read in {time.monotonic() - t0:.1f} s")

    def rows(self, which: int, epoch: int, start: int, stop: int) -> np.ndarray:
        """Crop records (``which`` 0) or top-k labels (1) of images ``start..stop`` in ``epoch``."""
        self.build()
        dtype = (self.crop_dtype, self.label_dtype)[which]
        size = dtype.itemsize
        data = _read(self.files[which], (stop - start) * size, (epoch * len(self.paths) + start) * size)
        return np.frombuffer(data, dtype.base if which else dtype).reshape((stop - start, *dtype.shape))

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []


def _write(f, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(f.fileno(), view, offset)
        view, offset = view[done:], offset + done


def _read(f, size: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = os.pread(f.fileno(), size - got, offset + got)
        if not part:
            raise SlcInputError(f"expected {size} bytes in the temporary FKD copy, got {got} (was it removed?)")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class FkdLabels(LabelSource):
    """``(crops, images, classes)`` float32: crop ``e`` of every image, recovered to all classes."""

    def __init__(self, store: FkdStore, name: str):
        self.store, self.name = store, name
        self.shape = (store.crops, len(store.paths), store.classes)
        self.dtype = np.dtype(np.float32)

    def read(self, epoch: int, start: int, stop: int) -> np.ndarray:
        return recover(self.store.rows(1, epoch, start, stop), self.store.classes)

    def close(self) -> None:
        self.store.close()


class FkdCrops(CropStream):
    """Crop ``e`` of every image, in image order; ``names``: ``class/stem`` of each image."""

    rule, mix, batch = "round", "none", 0

    def __init__(self, store: FkdStore, names: list[str]):
        self.store, self.names = store, names
        self.epochs, self.n = store.crops, len(names)

    def check_images(self, images) -> None:
        stems = [posixpath.join(posixpath.dirname(n), posixpath.basename(n).split(".")[0]) for n in images.names]
        if stems != self.names:
            raise SlcInputError(f"expected the images the labels were made for ({self.n}, e.g. {self.names[0]}), got "
                                f"{len(images)} in {images.source}")

    def epoch(self, e: int) -> Iterator[BatchCrops]:
        for a in range(0, self.n, CROP_ROWS):
            b = min(self.n, a + CROP_ROWS)
            rec = self.store.rows(0, e, a, b)
            yield BatchCrops(np.arange(a, b, dtype=np.int64), rec["coords"].astype(np.float64), rec["flip"].copy())


def open_fkd(root: str, *, classes: int | None = None, log: Callable[[str], None] = lambda s: None,
             workdir: str | None = None, progress: Callable[[int, int], None] | None = None) -> Imported:
    """FKD's per-image label files under ``root`` (their ``--softlabel_path``, or its ``train/``).

    Only the first file is read here; the others are read and checked (same crop count and K, indices
    below ``classes``) by the first read of labels or crops, which makes the epoch-major copy in ``workdir``.
    """
    top = label_folder(root)
    paths, names = list_files(top)
    coords, _, labels = read_file(paths[0])
    crops, k = labels.shape[0], labels.shape[2]
    if classes is None:
        classes = CLASSES
        log(f"fkd: {CLASSES} classes (ImageNet-1k, their trainer's default --num_classes; --classes to change)")
    if not k < classes:
        raise SlcInputError(f"expected more classes than the top-{k} stored, got --classes {classes}")
    if crops < 1:
        raise SlcInputError(f"expected at least one crop per image, got 0 in {paths[0]}")
    store = FkdStore(paths, crops, k, coords.dtype, labels.dtype, classes, workdir, log, progress)
    identity = input_identity(paths, root)
    summary = {"format": "fkd", "files": len(paths), "epochs": crops, "images": len(paths),
               "crops": crops * len(paths), "dtype": str(labels.dtype), "classes": classes, "topk": k,
               "bytes": identity["bytes"]}
    return Imported(format="fkd", labels=FkdLabels(store, top), source="probs", temperature=1.0,
                    crops=FkdCrops(store, names), summary=summary, identity=identity)
