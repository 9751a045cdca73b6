"""Running under ``torchrun``: who this process is, and the few messages ranks exchange.

slc scales out on ``torch.distributed``, the engine its users already launch with. A command run under
``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) finds its rank here; no flag is needed. Control messages (a fitted codec's file name, a
rank's error, a result) travel over a gloo group, whatever backend the caller's own training uses, so
they work on CPUs and across nodes alike. Bulk data never goes through the group: ranks write their
own part files and rank 0 joins them (:mod:`slc.format.parts`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

from slc.errors import SlcError, SlcInputError

# How long a rank waits for the others at a meeting point (rank 0's fit, the last part). A rank that
# dies is noticed sooner: torchrun stops the survivors as soon as one worker exits non-zero.
TIMEOUT_ENV = "SLC_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass
class Group:
    """This process's place in a multi-process run."""

    rank: int
    world: int
    local_rank: int
    _pg: object = None  # the gloo process group the messages below go through
    _owned: bool = False  # we initialised torch.distributed (and tear it down in close())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (small, picklable: our own messages, never a file's bytes)."""
        import torch.distributed as dist

        box = [obj]
        with self._peers():
            dist.broadcast_object_list(box, src=0, group=self._pg)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        import torch.distributed as dist

        out = [None] * self.world
        with self._peers():
            dist.all_gather_object(out, obj, group=self._pg)
        return out

    @contextlib.contextmanager
    def _peers(self):
        """A peer that exits (its own error said, or killed) breaks the connection: one line, not gloo's traceback."""
        try:
            yield
        except (RuntimeError, ValueError) as e:
            raise SlcError(f"expected every rank to reach the next step, got rank {self.rank} cut off from the "
                           f"others (a rank stopped: see its error; {' '.join(str(e).split())[:160]})") from None

    def barrier(self) -> None:
        self.gather(None)

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owned = False


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` from a launcher's environment, or ``None`` for one process."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return None
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SlcInputError(f"expected integer RANK, WORLD_SIZE and LOCAL_RANK, got RANK={os.environ.get('RANK')!r} "
                            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise SlcInputError(f"expected 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


def timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise SlcInputError(f"expected seconds in {TIMEOUT_ENV}, got {raw!r}") from None
    return datetime.timedelta(seconds=seconds)


def group() -> Group | None:
    """This process's :class:`Group` when a launcher started several; ``None`` for a single process.

    Joins the caller's process group if it already made one (a gloo side group when it is not gloo),
    else initialises one from the environment (``env://``).
    """
    w = env_world()
    if w is None or w[1] == 1:
        return None
    rank, world, local = w
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise SlcInputError(f"expected {var} in the environment of a run with WORLD_SIZE={world} "
                                    "(start it with torchrun), got none")
        try:
            dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout())
        except (RuntimeError, ValueError) as e:
            raise SlcInputError(f"expected to join the other {world - 1} ranks, got {' '.join(str(e).split())}") \
                from None
        owned = True
    pg = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout())
    return Group(dist.get_rank(), dist.get_world_size(), local, pg, owned)


def local_device(device):
    """``cuda`` means this rank's GPU (``cuda:LOCAL_RANK``) under a launcher; anything else is kept."""
    import torch

    w = env_world()
    if w is None or device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", w[2] % max(1, torch.cuda.device_count()))


def split(total: int, world: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[first, stop)`` of ``total`` items (shares differ by at most one)."""
    return total * rank // world, total * (rank + 1) // world


def message(e: BaseException) -> str:
    """An exception as the one line the CLI would print, to tell the other ranks why this one stopped."""
    if isinstance(e, SlcError):
        text = str(e)
    elif isinstance(e, OSError):
        text = f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def check_all(results: list, what: str) -> None:
    """Raise one line naming the first rank that failed (``results[r]``: ``None`` or its error message)."""
    for r, err in enumerate(results):
        if err is not None:
            raise SlcError(f"rank {r} failed {what}: {err}")


__all__ = ["Group", "group", "env_world", "local_device", "split", "message", "check_all"]
