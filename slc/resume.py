"""Resumable output: a container grows in ``OUT.partial`` while ``OUT.journal`` records what is safe.

The journal is one JSON line (the run's parameters and the sections written before the
chunks), then one 48-byte chunk index entry per finished chunk. After a crash, ``--resume``
keeps every journaled chunk whose CRC still matches the partial file, cuts the rest, and
continues from there. The fitted codec is read back, not refitted, so the result is
byte-identical to an uninterrupted run. The partial file's preamble stays zero until the
very end, so it never validates as an ``.slc``; it is renamed into place only when complete.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from slc.atomic import check_output, fsync_folder, name_the_output
from slc.format.container import CHUNK, ChunkEntry, ContainerWriter, Section, crc32, parse_index_entry
from slc.errors import SlcInputError

JOURNAL_VERSION = 1
MAX_JOURNAL_HEAD = 1 << 20
SYNC_SECONDS = 10.0  # fsync partial + journal at most this often: a power cut loses at most this much work


def partial_path(out: str) -> str:
    return out + ".partial"


def journal_path(out: str) -> str:
    return out + ".journal"


def state_path(out: str) -> str:
    """Codec arrays the file does not store (a VQAE's encoder), as an ``.npz`` read without pickle."""
    return out + ".journal.npz"


def preflight(out: str, force: bool, resume: bool) -> bool:
    """Fail before any work if ``out`` cannot be written; return whether an interrupted run is there."""
    check_output(out, force)
    leftover = any(os.path.exists(p) for p in (partial_path(out), journal_path(out), state_path(out)))
    if leftover and not resume and not force:
        raise SlcInputError(f"expected no interrupted run at {out}, got {partial_path(out)}; pass `resume=True` to "
                            "continue it or `force=True` to start over")
    return leftover


@dataclass
class Resumed:
    """What survives of an interrupted run."""

    sections: list[Section]  # written before the chunks
    chunks_start: int
    entries: list[ChunkEntry]
    chunks_crc: int
    data: dict[str, bytes]  # bodies of the sections above
    state: dict  # codec arrays kept beside the partial file (see ``state_path``)


class ResumableOutput:
    """Write ``out`` through ``out.partial``; see the module docstring.

    ``request`` identifies the run (every parameter that changes the output); a resume
    with a different request is refused rather than silently mixing two runs.
    """

    def __init__(self, out: str, request: dict, *, force: bool = False, resume: bool = False,
                 log: Callable[[str], None] | None = None):
        self.out, self.request = out, json.loads(json.dumps(request))  # normalise tuples etc.
        self.partial, self.journal, self.state = partial_path(out), journal_path(out), state_path(out)
        self.log = log or (lambda line: None)
        self.resumed: Resumed | None = None
        self.writer: ContainerWriter | None = None
        self._f: BinaryIO | None = None
        self._j: BinaryIO | None = None
        self._last_sync = time.monotonic()
        leftover = preflight(out, force, resume)
        if resume and leftover:
            self.resumed = self._load()
            if self.resumed is None:
                self.log(f"resume: {self.partial} has no finished setup yet; starting over")
        elif resume:
            self.log(f"resume: nothing to resume at {self.partial}; starting a new run")

    # ---------------------------------------------------------------- resuming
    def _load(self) -> Resumed | None:
        try:
            with open(self.journal, "rb") as j:
                head = j.readline(MAX_JOURNAL_HEAD)
                body = j.read()
        except FileNotFoundError:
            return None
        if not head.endswith(b"\n"):
            return None  # killed while writing the journal's first line: nothing finished
        try:
            meta = json.loads(head)
            if meta.get("slc_journal") != JOURNAL_VERSION:
                raise ValueError(f"journal version {meta.get('slc_journal')!r}")
            sections = [Section(str(n), int(o), int(ln), int(c), int(fl)) for n, o, ln, c, fl in meta["sections"]]
            chunks_start = int(meta["chunks_start"])
        except (ValueError, KeyError, TypeError) as e:
            raise SlcInputError(f"expected a readable resume journal, got {self.journal} ({e}); "
                                "pass `force=True` to start over") from None
        self._check_request(meta.get("request", {}))
        data: dict[str, bytes] = {}
        with open(self.partial, "rb") as f:
            for s in sections:
                f.seek(s.offset)
                blob = f.read(s.length)
                if len(blob) != s.length or crc32(blob) != s.crc:
                    raise SlcInputError(f"expected section {s.name!r} of {self.partial} intact to resume, got a "
                                        "damaged file; pass `force=True` to start over")
                data[s.name] = blob
            entries, crc, pos = [], 0, 0
            for i in range(len(body) // CHUNK.size):
                e = parse_index_entry(body[i * CHUNK.size:(i + 1) * CHUNK.size], i)
                if e.offset != pos:
                    break
                f.seek(chunks_start + pos)
                payload = f.read(e.stored_length)
                if len(payload) != e.stored_length or crc32(payload) != e.crc:
                    break  # journaled but never reached the disk: redo from here
                entries.append(e)
                crc = crc32(payload, crc)
                pos += e.stored_length
        state = {}
        if os.path.exists(self.state):
            try:
                with np.load(self.state, allow_pickle=False) as z:
                    state = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise SlcInputError(f"expected a readable {self.state} to resume, got {e}; pass `force=True` to start "
                                    "over") from None
        self.log(f"resume: {len(entries)} finished chunks in {self.partial} ({chunks_start + pos:,} bytes)")
        return Resumed(sections, chunks_start, entries, crc, data, state)

    def _check_request(self, old: dict) -> None:
        then, now = _flat(old), _flat(self.request)
        diff = [f"{k} ({then.get(k)!r} then, {now.get(k)!r} now)"
                for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
        if diff:
            raise SlcInputError(f"expected the parameters of the interrupted run to resume, got a different "
                                f"{'; '.join(diff[:4])}; rerun with the original ones or pass `force=True` to start over")

    # ---------------------------------------------------------------- writing
    def open(self) -> ContainerWriter:
        """A writer positioned after the last safe chunk (resumed) or at the start (fresh)."""
        r = self.resumed
        self._f = open(self.partial, "r+b" if r else "w+b")
        self._lock(self._f)
        if r:
            self.writer = ContainerWriter.reopen(self._f, r.sections, r.chunks_start, r.entries, r.chunks_crc)
            self._j = open(self.journal, "r+b")
            head_len = len(self._j.readline(MAX_JOURNAL_HEAD))
            self._j.seek(head_len + CHUNK.size * len(r.entries))
            self._j.truncate()
        else:
            for p in (self.journal, self.state):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            self.writer = ContainerWriter(self._f)
        return self.writer

    def _lock(self, f: BinaryIO) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory lock
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise SlcInputError(f"expected no other slc writing {self.partial}, got it locked by another process") \
                from None

    def chunks_begun(self, state: dict | None = None) -> None:
        """Call after the sections before the chunks and ``begin_chunks``: the setup is now durable.

        ``state``: arrays the codec needs to go on encoding that the file does not hold.
        """
        w = self.writer
        assert w is not None and w.chunks_start is not None and self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())
        if state:
            tmp = self.state + ".tmp.npz"
            np.savez(tmp, **state)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.state)
        head = {"slc_journal": JOURNAL_VERSION, "request": self.request, "chunks_start": w.chunks_start,
                "sections": [[s.name, s.offset, s.length, s.crc, s.flags] for s in w.sections]}
        tmp = self.journal + ".tmp"
        with open(tmp, "wb") as j:
            j.write(json.dumps(head, sort_keys=True).encode() + b"\n")
            j.flush()
            os.fsync(j.fileno())
        os.replace(tmp, self.journal)
        self._j = open(self.journal, "r+b")
        self._j.seek(0, os.SEEK_END)

    def chunk_done(self, entry: ChunkEntry) -> None:
        assert self._j is not None and self._f is not None
        self._f.flush()  # payload before its journal entry (a resume re-checks CRCs anyway)
        self._j.write(entry.pack())
        self._j.flush()
        if time.monotonic() - self._last_sync > SYNC_SECONDS:
            os.fsync(self._f.fileno())
            os.fsync(self._j.fileno())
            self._last_sync = time.monotonic()

    def commit(self, force: bool) -> None:
        """Make the finished file durable and move it into place."""
        assert self._f is not None
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if os.path.exists(self.out) and not force:  # appeared while we worked
            raise SlcInputError(f"output exists: {self.out} (use `force=True` to overwrite)")
        os.replace(self.partial, self.out)
        self._close_journal()
        for p in (self.journal, self.state):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        fsync_folder(self.out)

    def _close_journal(self) -> None:
        if self._j is not None:
            with contextlib.suppress(OSError):
                self._j.close()
            self._j = None

    def abort(self, keep: bool) -> None:
        """Close; keep the partial run for ``--resume`` (interrupted) or delete it (failed)."""
        if self._f is not None and not self._f.closed:
            if keep:
                with contextlib.suppress(OSError):
                    self._f.flush()
                    os.fsync(self._f.fileno())
            with contextlib.suppress(OSError):  # a full disk fails the final flush too
                self._f.close()
        if keep and self._j is not None:
            with contextlib.suppress(OSError):
                self._j.flush()
                os.fsync(self._j.fileno())
        self._close_journal()
        if not keep:
            for p in (self.partial, self.journal, self.journal + ".tmp", self.state, self.state + ".tmp.npz"):
                with contextlib.suppress(OSError):
                    os.unlink(p)

    def __enter__(self) -> "ResumableOutput":
        return self

    def __exit__(self, typ, exc, tb) -> None:
        if typ is None:
            return
        interrupted = issubclass(typ, KeyboardInterrupt)
        full = issubclass(typ, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # resumable with room
        keep = (interrupted or full) and self._j is not None  # only a run with a durable setup can resume
        self.abort(keep)
        name_the_output(exc, self.out)
        if full and keep:
            exc.strerror = (f"{exc.strerror}; {len(self.writer.index)} finished chunks are kept in {self.partial}: free "
                            "space and rerun the same command with `resume=True`")
        if interrupted:
            exc.slc_hint = (f"{len(self.writer.index)} finished chunks are kept in {self.partial}; rerun the "
                            "same command with `resume=True` to continue" if keep and self.writer is not None
                            else "no output was written")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


__all__ = ["ResumableOutput", "Resumed", "partial_path", "journal_path"]
