"""One student trained by several processes (``torchrun``): what each rank does differently.

Every step trains on one global batch, the one a single process would (``--batch-size`` is the
global batch): rank ``r`` takes its slice of it (:class:`~slc.vision.dataset.DistributedEpochSampler`),
scales its loss by ``world / global batch length`` so that DDP's gradient average is the whole
batch's mean loss gradient, and normalises batch-norm layers over the whole batch
(:mod:`slc.vision.syncbn`). The update, and so the trained weights, are those of one process up to
float rounding.

Before each step the ranks agree that every one has its share: a rank that cannot read it (an
image changed on disk, a damaged label chunk) stops all of them, each with one error line (its
own, or one naming it), instead of leaving the others waiting in a collective. With one process
(``group`` None) every method reduces to what a plain loop does.
"""
from __future__ import annotations

import torch

from slc.distributed import Group, check_all, message, timeout
from slc.errors import SlcInputError


def settle(group: Group | None, error: Exception | None, what: str, fact=None) -> list:
    """End a phase every rank ran: if any rank failed, every rank raises (its own error, or one naming the
    first rank that failed). Returns every rank's ``fact``, in rank order."""
    if group is None:
        if error is not None:
            raise error
        return [fact]
    got = group.gather((None if error is None else message(error), fact))
    if error is not None:
        raise error
    check_all([err for err, _ in got], what)
    return [f for _, f in got]


def lost_peer(e: BaseException) -> bool:
    """A collective that failed because another rank is gone (it exited: its own error says why) or never came
    (``SLC_DIST_TIMEOUT_S``)."""
    import torch.distributed as dist

    text = str(e)
    return isinstance(e, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out"))


class Ranks:
    """This process's part in training: the only one (``group`` None), or rank ``group.rank`` of ``group.world``.

    Made once every rank has its device: it opens the groups that carry tensors (gloo on CPU,
    NCCL on CUDA), a collective step all ranks take together.
    """

    def __init__(self, group: Group | None, device: torch.device):
        self.group, self.device = group, device
        self.rank, self.world = (group.rank, group.world) if group else (0, 1)
        self._pg = self._bn_pg = None
        self._ddp = None
        if group is None:
            return
        import torch.distributed as dist

        if device.type not in ("cpu", "cuda"):
            raise SlcInputError(f"expected device cpu or cuda to train on several processes, got {device}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        # the default group is gloo when slc made it; a caller's own may be anything
        self._pg = None if backend in str(dist.get_backend()) else dist.new_group(backend=backend, timeout=timeout())
        if device.type == "cpu":  # GlobalBatchNorm's collectives apart from DDP's bucketed all-reduces
            self._bn_pg = dist.new_group(backend="gloo", timeout=timeout())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, log) -> torch.nn.Module:
        """``model`` to train: as it is, or with synced batch norm inside DistributedDataParallel."""
        if self.group is None:
            return model
        from torch.nn.parallel import DistributedDataParallel

        from slc.vision.syncbn import GlobalBatchNorm, synced, unsynced_batch_norms

        if self.device.type == "cuda":
            synced(model, torch.nn.SyncBatchNorm, self._pg)
            where = {"device_ids": [self.device.index], "output_device": self.device.index}
        else:
            synced(model, GlobalBatchNorm, self._bn_pg)
            where = {}
        left = unsynced_batch_norms(model)
        if left:
            log(f"{left} batch-norm layer(s) of the student are TorchScript or a subclass slc cannot swap: they "
                f"normalise each rank's share of a batch, so training differs from one process")
        self._ddp = DistributedDataParallel(model, process_group=self._pg, **where)
        return self._ddp

    def unwrap(self, model: torch.nn.Module) -> None:
        """Undo :meth:`wrap`: plain batch-norm layers again (TorchScript-exportable)."""
        if self.group is not None:
            from slc.vision.syncbn import unsynced

            self._ddp = None
            unsynced(model)

    def agree(self, error: Exception | None, n: int, what: str) -> int:
        """Before a step: stop every rank if any could not get its share; else the global batch's length."""
        if self.group is None:
            if error is not None:
                raise error
            return n
        import torch.distributed as dist

        votes = torch.tensor([float(error is not None), float(n)], dtype=torch.float64, device=self.device)
        dist.all_reduce(votes, group=self._pg)
        if votes[0] > 0:
            settle(self.group, error, what)
        return int(votes[1])

    def total(self, value: torch.Tensor) -> float:
        """The sum of a scalar over the ranks."""
        if self.group is None:
            return float(value)
        import torch.distributed as dist

        value = value.detach().to(torch.float64).reshape(1).clone()
        dist.all_reduce(value, group=self._pg)
        return float(value)

    def decide(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a choice made on rank 0's clock)."""
        return flag if self.group is None else bool(self.group.broadcast(flag))

    def share(self, result, error: Exception | None, what: str):
        """Rank 0's ``result`` on every rank, or its error raised on every rank."""
        if self.group is None:
            if error is not None:
                raise error
            return result
        result, err = self.group.broadcast((result, None if error is None else message(error)))
        if error is not None:
            raise error
        check_all([err], what)
        return result
