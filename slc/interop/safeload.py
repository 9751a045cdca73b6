"""Read what another tool wrote with ``torch.save``, without running its code.

``torch.load(weights_only=True)`` only: tensors, lists, tuples, dicts and plain scalars come back;
anything else (a class, a function, a ``__reduce__`` payload) is refused by torch's restricted
unpickler before it is built, and reported as one line naming the file.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import zipfile

from slc.errors import SlcInputError

_PLAIN = (bool, int, float, str, bytes, type(None))
_NUMERIC = "?bBhHiIlLqQefd"  # numpy dtype chars a label file may hold (no objects, no strings)


def _numpy_globals() -> list:
    """What numpy arrays and scalars pickle through (FKD and HALD save some): rebuilding an array from its
    bytes runs no code, and ``object`` arrays stay refused (their dtype class is not on the list)."""
    import numpy as np

    try:
        from numpy._core import multiarray as ma  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray as ma
    out = [np.ndarray, np.dtype] + [(f, f"numpy.{core}.multiarray.{f.__name__}")  # files written under numpy 1 or 2
                                    for f in (ma._reconstruct, ma.scalar) for core in ("core", "_core")]
    return out + [type(np.dtype(c)) for c in _NUMERIC]


def load(path: str | os.PathLike, data: bytes | None = None, mmap: bool = False):
    """The object ``torch.save`` wrote to ``path`` (or to ``data``, read from ``path``), plain types only.

    ``mmap``: map tensor storages instead of reading them (a file of the zip format only; others are read),
    for a pass that wants the small tensors of a file and not its labels.
    """
    import torch

    name = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            if mmap and data is None and zipfile.is_zipfile(name):
                obj = torch.load(name, map_location="cpu", weights_only=True, mmap=True)
            else:
                obj = torch.load(io.BytesIO(data) if data is not None else name, map_location="cpu",
                                 weights_only=True)
    except FileNotFoundError:
        raise SlcInputError(f"expected a file, got nothing at {name}") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)|but got (<[^>]*>)", str(e))
        what = next((g for g in found.groups() if g), "") if found else ""
        raise SlcInputError(f"expected tensors, lists, dicts and numbers in {name}, got a pickled object "
                            f"({what or 'not plain data'}) that slc will not unpickle: it could run code") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        why = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        raise SlcInputError(f"expected a complete torch.save file, got an unreadable one: {name} ({why[:120]})") from None
    check_plain(obj, name)
    return obj


def check_plain(obj, name: str, depth: int = 0) -> None:
    """Refuse anything but tensors, numeric numpy arrays, lists, tuples, dicts and plain scalars."""
    import numpy as np
    import torch

    if depth > 8:
        raise SlcInputError(f"expected plain nested data in {name}, got nesting deeper than 8")
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise SlcInputError(f"expected dense tensors in {name}, got a {obj.layout} tensor")
        return
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.char not in _NUMERIC:
            raise SlcInputError(f"expected numeric arrays in {name}, got dtype {obj.dtype}")
        return
    if isinstance(obj, (list, tuple)):
        for v in obj:
            check_plain(v, name, depth + 1)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, _PLAIN):
                raise SlcInputError(f"expected plain dict keys in {name}, got a {type(k).__name__} key")
            check_plain(v, name, depth + 1)
        return
    raise SlcInputError(f"expected tensors, lists, dicts and numbers in {name}, got a {type(obj).__name__}")
