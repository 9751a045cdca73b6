"""Write-then-rename outputs: a half-written file never appears at the destination."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import BinaryIO, Iterator

from .errors import SlcInputError


def check_output(path: str, force: bool) -> None:
    """Fail early, before any work, if ``path`` exists or its folder is unusable."""
    if os.path.isdir(path):
        raise SlcInputError(f"expected an output file path, got a directory: {path}")
    if os.path.exists(path) and not force:
        raise SlcInputError(f"output exists: {path} (use --force to overwrite)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SlcInputError(f"expected an existing output folder, got {folder} (no such directory)")
    if not os.access(folder, os.W_OK):
        raise SlcInputError(f"expected a writable output folder, got {folder} (permission denied)")


@contextlib.contextmanager
def atomic_output(path: str, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a temp file next to ``path``; fsync and rename it into place on success only."""
    check_output(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the permissions open() would
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path) and not force:  # appeared while we worked
            raise SlcInputError(f"output exists: {path} (use --force to overwrite)")
        os.replace(tmp, path)
        fsync_folder(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_folder(path: str) -> None:
    """Make a rename into ``path``'s folder durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
