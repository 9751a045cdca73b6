"""Write-then-rename outputs: a half-written file never appears at the destination."""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from typing import BinaryIO, Iterator

from slc.errors import SlcInputError


def check_output(path: str, force: bool) -> None:
    """Fail early, before any work, if ``path`` exists or its folder is unusable."""
    if os.path.isdir(path):
        raise SlcInputError(f"expected an output file path, got a directory: {path}")
    if os.path.exists(path) and not force:
        raise SlcInputError(f"output exists: {path} (use `force=True` to overwrite)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SlcInputError(f"expected an existing output folder, got {folder} (no such directory)")
    if not os.access(folder, os.W_OK):
        raise SlcInputError(f"expected a writable output folder, got {folder} ({_why_not_writable(folder)})")


def _why_not_writable(folder: str) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):
        pass
    return "permission denied"


@contextlib.contextmanager
def atomic_path(path: str, force: bool = False) -> Iterator[str]:
    """Yield a temp file name next to ``path`` to write; fsync and rename it into place on success only.

    For writers that open files themselves (HDF5): h5py on a Python file object crashed on a full disk.
    """
    check_output(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the permissions open() would
    finally:
        os.close(fd)
    try:
        yield tmp
        fsync_path(tmp)
        if os.path.exists(path) and not force:  # appeared while we worked
            raise SlcInputError(f"output exists: {path} (use `force=True` to overwrite)")
        os.replace(tmp, path)
        fsync_folder(path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        name_the_output(e, path)
        raise


@contextlib.contextmanager
def atomic_output(path: str, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that appears at ``path`` (fsynced, renamed) only if the block succeeds."""
    with atomic_path(path, force) as tmp, open(tmp, "w+b") as f:
        yield f


def check_space(path: str, nbytes: int) -> None:
    """Fail before writing if ``nbytes`` cannot fit beside ``path`` (free space, or this process's file-size limit).

    Our writers handle a full disk mid-write cleanly, but a long run should not find out at its end,
    and HDF5 cannot recover from one (h5py then fails to close the file and crashes at exit).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        free = None
    if free is not None and nbytes > free:
        raise SlcInputError(f"expected {nbytes:,} free bytes for {path}, got {free:,} (No space left on device)")
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, AttributeError):
        return
    if limit != resource.RLIM_INFINITY and nbytes > limit:
        raise SlcInputError(f"expected to write {nbytes:,} bytes to {path}, got a file size limit of {limit:,} "
                            "(File too large)")


def name_the_output(exc: BaseException, path: str) -> None:
    """Give a write error without a file name (a full disk) the output's, for a useful one-line error."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = path


def fsync_path(path: str) -> None:
    """fsync a file or folder by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str) -> None:
    """Make a rename into ``path``'s folder durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fsync_path(os.path.dirname(os.path.abspath(path)))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block ends: what it writes and what it records about it stay in step."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
