"""The images a teacher relabels and a student replays: a folder, ``.npy``, ``.npz`` or ``FILE.h5:/DATASET``.

Order and pixels are deterministic, and every image carries a 16-byte fingerprint (:attr:`ImageSet.fingerprints`)
so a student can check it replays the very images the labels were made for (:meth:`ImageSet.digest`).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

import numpy as np

from slc.errors import SlcInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

_H5_SPEC = re.compile(r"(.+?\.(?:h5|hdf5))(?::(.*))?$", re.IGNORECASE)
_SCAN_THREADS = min(8, os.cpu_count() or 1)  # Pillow decoding and sha256 release the GIL
_BLOCK_BYTES = 64 << 20  # rows read at once when fingerprinting an array


@dataclass
class BadImage:
    """An image left out of an :class:`ImageSet`, and why."""

    name: str
    reason: str


class ImageSet:
    """N images with deterministic order, addressable by index.

    ``names``: relative POSIX paths for folders (``"cat/001.png"``), ``"#i"`` for arrays.
    ``targets``: int64 class index per image (ImageFolder trees, or an npz ``labels``/``targets`` key), else None.
    ``classes``: sorted class folder names, else None. ``sizes``: int64 ``[N, 2]`` of (height, width).
    ``channels``: 1 if every image is greyscale, else 3. ``fingerprints``: uint8 ``[N, 16]``.
    ``skipped``: images left out by ``skip_bad=True``. ``source``: the path it was opened from.
    """

    def __init__(self, *, names: list[str], targets: np.ndarray | None, classes: list[str] | None,
                 sizes: np.ndarray, channels: int, fingerprints: np.ndarray, skipped: list[BadImage],
                 source: str, reader: _FolderReader | _ArrayReader):
        self.names, self.targets, self.classes = names, targets, classes
        self.sizes, self.channels, self.fingerprints = sizes, channels, fingerprints
        self.skipped, self.source = skipped, source
        self._reader = reader

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ImageSet({self.source!r}, n={len(self)}, channels={self.channels})"

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 ``[H, W, channels]``; raises if its bytes changed since :func:`open_images`."""
        n = len(self.names)
        if not -n <= i < n:
            raise IndexError(f"expected an image index in [0, {n}), got {i}")
        i %= n
        fp, image = self._reader.read(i, self.channels)
        if fp != self.fingerprints[i].tobytes():
            raise SlcInputError(f"expected {self.names[i]} unchanged since it was opened, got different bytes")
        return image

    def digest(self) -> str:
        """Hex sha256 over N (uint64 little-endian) then all fingerprints in order: one id for the whole list."""
        h = hashlib.sha256(struct.pack("<Q", len(self.names)))
        h.update(np.ascontiguousarray(self.fingerprints, dtype=np.uint8).tobytes())
        return h.hexdigest()

    def close(self) -> None:
        """Close an open HDF5 handle (it is reopened if :meth:`load` is called again)."""
        self._reader.close()

    def __enter__(self) -> ImageSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- decoding

def _is_grey(mode: str) -> bool:
    return mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")


def _decode(data: bytes) -> PILImage:
    """Fully decode frame 0 (truncated or corrupt data raises here, not mid-run)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.width == 0 or im.height == 0:
        raise ValueError("zero size")
    return im


def _to_array(im: PILImage, channels: int) -> np.ndarray:
    if im.mode == "I" or im.mode.startswith("I;16"):
        # Pillow's convert("L") clips 16-bit values at 255; scale the 0..65535 range instead.
        a = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        a = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(a[:, :, None], channels, axis=2)
    a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return a[:, :, None] if a.ndim == 2 else a


def _reason(e: BaseException) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(e, Image.DecompressionBombError):
        return "too many pixels for Pillow's decompression-bomb limit"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "truncated" in text.lower():
        return "truncated file"
    if isinstance(e, ValueError) and text == "zero size":
        return text
    if isinstance(e, OSError) and e.strerror:
        return f"unreadable file ({e.strerror})"
    return f"{type(e).__name__}: {text}"[:200]


def _fp(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()[:16]


_T = TypeVar("_T")
_R = TypeVar("_R")


def _ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], threads: int) -> Iterator[_R]:
    """``map`` over a thread pool, in order, with a bounded number of tasks in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        window: deque = deque()
        for x in items:
            window.append(pool.submit(fn, x))
            if len(window) >= 4 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


# ---------------------------------------------------------------------------------------------- folders

class _FolderReader:
    """Holds no open files, so it is safe across fork and pickling."""

    def __init__(self, root: str, names: list[str]):
        self.root, self.names = root, names

    def read(self, i: int, channels: int) -> tuple[bytes, np.ndarray]:
        path = os.path.join(self.root, *self.names[i].split("/"))
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = _to_array(_decode(data), channels)
        except Exception as e:
            raise SlcInputError(f"expected a readable image, got {self.names[i]} ({_reason(e)})") from None
        return _fp(data), image

    def close(self) -> None:
        pass


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_images(top: str, ignored: list[str], label: str) -> list[str]:
    """Image files under ``top`` as sorted relative POSIX paths; other visible files go to ``ignored``."""
    found, others = [], []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        rel = os.path.relpath(dirpath, top)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for f in filenames:
            if _hidden(f):
                continue
            (found if f.lower().endswith(IMAGE_EXTS) else others).append(prefix + f)
    ignored += [f"{label}/{f}" for f in others]
    return sorted(found)


def _list_folder(root: str, log: Callable[[str], None] | None) -> tuple[list[str], list[int] | None, list[str] | None]:
    ignored: list[str] = []
    entries = sorted((e for e in os.scandir(root) if not _hidden(e.name)), key=lambda e: e.name)
    top = [e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTS)]
    ignored += [e.name for e in entries if e.is_file() and not e.name.lower().endswith(IMAGE_EXTS)]
    subdirs = [e.name for e in entries if e.is_dir()]
    per_class = {d: _walk_images(os.path.join(root, d), ignored, d) for d in subdirs}
    with_images = [d for d in subdirs if per_class[d]]
    if top and with_images:
        raise SlcInputError(
            f"expected either class subfolders or image files directly in {root}, got both "
            f"({len(top)} image files such as {top[0]!r} and {len(with_images)} subfolders with images "
            f"such as {with_images[0]!r})")
    if ignored and log:
        log(f"ignored {len(ignored)} non-image files in {root} (e.g. {sorted(ignored)[0]})")
    if not with_images:
        return top, None, None
    # Every visible subfolder is a class, as in torchvision's ImageFolder, so indices match its find_classes.
    names, targets = [], []
    for k, d in enumerate(subdirs):
        if not per_class[d] and log:
            log(f"class folder {d} has no images")
        names += [f"{d}/{r}" for r in per_class[d]]
        targets += [k] * len(per_class[d])
    return names, targets, subdirs


def _scan_file(path: str) -> tuple[bytes, int, int, bool] | str:
    try:
        with open(path, "rb") as f:
            data = f.read()
        im = _decode(data)
        return _fp(data), im.height, im.width, _is_grey(im.mode)
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, struct.error...)
        return _reason(e)


def _open_folder(root: str, skip_bad: bool, log, progress) -> ImageSet:
    names, targets, classes = _list_folder(root, log)
    if not names:
        raise SlcInputError(f"expected images in {root}, got none (looked for {', '.join(IMAGE_EXTS)})")
    paths = [os.path.join(root, *n.split("/")) for n in names]
    kept: list[int] = []
    fps: list[bytes] = []
    sizes: list[tuple[int, int]] = []
    bad: list[BadImage] = []
    grey = True
    for i, res in enumerate(_ordered_map(_scan_file, paths, _SCAN_THREADS)):
        if isinstance(res, str):
            bad.append(BadImage(names[i], res))
            if skip_bad and log:
                log(f"skipped {names[i]}: {res}")
        else:
            kept.append(i)
            fps.append(res[0])
            sizes.append((res[1], res[2]))
            grey &= res[3]
        if progress:
            progress(1)
    if bad and not skip_bad:
        more = f"; {len(bad) - 1} more unreadable images in {root}" if len(bad) > 1 else ""
        raise SlcInputError(f"expected a readable image, got {bad[0].name} ({bad[0].reason}){more}")
    if not kept:
        raise SlcInputError(f"expected images in {root}, got none readable ({len(bad)} skipped)")
    kept_names = [names[i] for i in kept]
    return ImageSet(
        names=kept_names,
        targets=None if targets is None else np.asarray([targets[i] for i in kept], dtype=np.int64),
        classes=classes,
        sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        channels=1 if grey else 3,
        fingerprints=np.frombuffer(b"".join(fps), dtype=np.uint8).reshape(-1, 16).copy(),
        skipped=bad,
        source=root,
        reader=_FolderReader(root, kept_names),
    )


# ---------------------------------------------------------------------------------------------- arrays

def _layout(shape: tuple[int, ...], name: str) -> tuple[str, int, int, int, int]:
    """``(layout, N, H, W, C)`` for ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` with C in (1, 3)."""
    if len(shape) == 3:
        layout, (n, h, w), c = "NHW", shape, 1
    elif len(shape) == 4 and shape[3] in (1, 3):
        layout, (n, h, w, c) = "NHWC", shape
    elif len(shape) == 4 and shape[1] in (1, 3):
        layout, (n, c, h, w) = "NCHW", shape
    else:
        raise SlcInputError(f"expected images of shape [N, H, W], [N, H, W, C] or [N, C, H, W] with C 1 or 3, "
                            f"got shape {tuple(shape)} in {name}")
    if n == 0:
        raise SlcInputError(f"expected images in {name}, got none (shape {tuple(shape)})")
    if h == 0 or w == 0:
        raise SlcInputError(f"expected images of non-zero size, got shape {tuple(shape)} in {name}")
    return layout, n, h, w, c


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.hasobject:
        raise SlcInputError(f"expected uint8 images, got a pickled object array in {name} (pickle is refused)")
    if dtype != np.uint8:
        raise SlcInputError(f"expected uint8 images, got dtype {dtype} in {name}")


class _ArrayReader:
    """Rows of an npy (memory-mapped), npz (in memory) or HDF5 dataset, as canonical ``[n, H, W, C]`` uint8.

    The HDF5 file is opened lazily once per process (an h5py handle must not cross a fork); nothing
    file-backed is pickled, so the reader also travels to spawned DataLoader workers.
    """

    def __init__(self, kind: str, path: str, key: str, layout: str, array: np.ndarray | None = None):
        self.kind, self.path, self.key, self.layout = kind, path, key, layout
        self._array, self._h5, self._pid = array, None, os.getpid()

    def _data(self):
        if self.kind == "h5":
            if self._h5 is None or self._pid != os.getpid():
                import h5py

                self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
            return self._h5[self.key]
        if self._array is None:
            if self.kind == "npy":
                self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(self.path, allow_pickle=False) as z:
                    self._array = z[self.key]
        return self._array

    def rows(self, start: int, stop: int) -> np.ndarray:
        a = np.asarray(self._data()[start:stop])
        if self.layout == "NHW":
            a = a[..., None]
        elif self.layout == "NCHW":
            a = a.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(a)

    def read(self, i: int, channels: int) -> tuple[bytes, np.ndarray]:
        row = self.rows(i, i + 1)[0]
        return _row_fp(row), row

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None, "_h5": None}


def _row_fp(row: np.ndarray) -> bytes:
    """sha256 over the canonical (H, W, C) shape as int64 little-endian, then the C-order HWC bytes."""
    h = hashlib.sha256(struct.pack("<3q", *row.shape))
    h.update(memoryview(row).cast("B"))
    return h.digest()[:16]


def _open_npy(path: str) -> tuple[np.ndarray, None]:
    from slc.sources import read_npy_header

    with open(path, "rb") as f:
        _, _, dtype = read_npy_header(f, path)
    _check_dtype(dtype, path)
    return np.load(path, mmap_mode="r", allow_pickle=False), None


def _open_npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SlcInputError(f"expected an .npz file, got unreadable data in {path} ({e})") from None
    with z:
        if not hasattr(z, "files"):
            raise SlcInputError(f"expected an .npz archive, got a plain array in {path}")
        if "images" not in z.files:
            raise SlcInputError(f"expected an 'images' array in {path}, got keys {z.files[:10]}")
        try:
            images = z["images"]
            key = next((k for k in ("labels", "targets") if k in z.files), None)
            targets = None if key is None else z[key]
        except ValueError:
            raise SlcInputError(f"expected plain arrays in {path}, got pickled objects (pickle is refused)") from None
    _check_dtype(images.dtype, path)
    if targets is not None:
        if targets.dtype.kind not in "iu" or targets.shape != images.shape[:1]:
            raise SlcInputError(f"expected {key!r} of integers with shape ({len(images)},), "
                                f"got dtype {targets.dtype} shape {targets.shape} in {path}")
        targets = targets.astype(np.int64)
    return images, targets


def _open_array(spec: str, kind: str, path: str, key: str, progress) -> ImageSet:
    if kind == "npy":
        data, targets = _open_npy(path)
    elif kind == "npz":
        data, targets = _open_npz(path)
    else:
        import h5py

        try:
            h5 = h5py.File(path, "r")
        except OSError as e:
            raise SlcInputError(f"expected an HDF5 file, got an unreadable file {path} ({e})") from None
        if key not in h5 or not isinstance(h5[key], h5py.Dataset):
            names: list[str] = []
            h5.visit(lambda k: names.append(k) if isinstance(h5[k], h5py.Dataset) else None)
            h5.close()
            raise SlcInputError(f"expected a dataset {key!r} in {path}, got datasets {names[:10]}")
        data, targets = h5[key], None
        try:
            _check_dtype(data.dtype, spec)
        except SlcInputError:
            h5.close()
            raise
    try:
        layout, n, h, w, c = _layout(tuple(data.shape), spec)
        reader = _ArrayReader(kind, path, key, layout, None if kind == "h5" else data)
        if kind == "h5":
            reader._h5 = h5
        fps = np.empty((n, 16), dtype=np.uint8)
        step = max(1, _BLOCK_BYTES // (h * w * c))
        for s in range(0, n, step):
            for j, row in enumerate(reader.rows(s, min(n, s + step))):
                fps[s + j] = np.frombuffer(_row_fp(row), dtype=np.uint8)
                if progress:
                    progress(1)
    except BaseException:
        if kind == "h5":
            h5.close()
        raise
    return ImageSet(
        names=[f"#{i}" for i in range(n)],
        targets=targets,
        classes=None,
        sizes=np.tile(np.asarray([[h, w]], dtype=np.int64), (n, 1)),
        channels=c,
        fingerprints=fps,
        skipped=[],
        source=spec,
        reader=reader,
    )


# ---------------------------------------------------------------------------------------------- entry point

def open_images(path: str | os.PathLike, *, skip_bad: bool = False, log: Callable[[str], None] | None = None,
                progress: Callable[[int], None] | None = None) -> ImageSet:
    """Open a folder (ImageFolder tree or flat), ``.npy``, ``.npz`` (``images`` key) or ``FILE.h5:/DATASET``.

    Every image is decoded once now, so unreadable ones are found before a long run: they raise
    :class:`SlcInputError`, or with ``skip_bad`` are left out, listed in ``skipped`` and passed to ``log``.
    ``progress(1)`` is called per image scanned.
    """
    spec = os.fspath(path)
    if os.path.isdir(spec):
        return _open_folder(spec, skip_bad, log, progress)
    m = _H5_SPEC.match(spec)
    if m:
        file, key = m.group(1), m.group(2)
        if not os.path.isfile(file):
            raise SlcInputError(f"expected an existing HDF5 file, got {file!r} (no such file)")
        if not key:
            raise SlcInputError(f"expected FILE.h5:/DATASET for HDF5 images, got {spec!r}")
        return _open_array(spec, "h5", file, key, progress)
    if not os.path.exists(spec):
        raise SlcInputError(f"expected an existing folder or file of images, got {spec!r} (no such file or folder)")
    lower = spec.lower()
    if lower.endswith(".npy"):
        return _open_array(spec, "npy", spec, "", progress)
    if lower.endswith(".npz"):
        return _open_array(spec, "npz", spec, "images", progress)
    raise SlcInputError(f"expected a folder of images, .npy, .npz or FILE.h5:/DATASET, got {spec!r}")
