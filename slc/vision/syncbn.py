"""Batch norm over the global batch of a multi-process run, on any device (CPU included).

``torch.nn.SyncBatchNorm`` refuses CPU tensors (torch 2.13: "SyncBatchNorm expected input tensor to
be on GPU or XPU..."), so CPU ranks use :class:`GlobalBatchNorm`: per-rank counts, means and sums of
squared deviations are all-gathered and combined (Chan et al.) in float64, and the backward
all-reduces the two per-channel sums the input gradient needs. Normalisation, gradients and the
running statistics are then those of one process seeing the whole batch, up to rounding.

:func:`synced` swaps a model's batch-norm layers for synced ones in place, sharing their parameters
and buffers (an optimizer made before keeps working, ``state_dict`` keys stay); :func:`unsynced`
puts the original classes back, e.g. before TorchScript export.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_PLAIN = "_slc_plain_class"  # the class a synced layer replaced
PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # subclasses may change forward: left alone


class _GlobalStats(torch.autograd.Function):
    """``(x - mean) * invstd * weight + bias`` with ``mean``/``invstd`` over every rank's ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, momentum: float, group):
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        n = x.numel() // c if c else 0
        local = torch.zeros(2 * c + 1, dtype=torch.float64, device=x.device)
        if n:
            var, mean = torch.var_mean(x, dims, correction=0)
            local[0] = n
            local[1:c + 1] = mean
            local[c + 1:] = var.double() * n
        world = dist.get_world_size(group)
        every = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(every, local, group=group)
        stats = torch.stack(every)
        counts, means, m2s = stats[:, :1], stats[:, 1:c + 1], stats[:, c + 1:]
        total = counts.sum()
        if total <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got {int(total)} over "
                             f"{world} ranks (input size {list(x.shape)} here)")
        mean = (counts * means).sum(0) / total
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        var = m2 / total
        invstd = (var + eps).rsqrt()
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_((momentum * mean).to(running_mean.dtype))
                running_var.mul_(1 - momentum).add_((momentum * m2 / (total - 1)).to(running_var.dtype))
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.to(x.dtype).view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total, ctx.group = total, group
        y = xhat if weight is None else xhat * weight.view(shape)
        return y if bias is None else y + bias.view(shape)

    @staticmethod
    def backward(ctx, grad):
        xhat, weight, invstd = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [0, *range(2, xhat.dim())]
        shape = [1, c] + [1] * (xhat.dim() - 2)
        gw = (grad * xhat).sum(dims) if weight is not None and ctx.needs_input_grad[1] else None
        gb = grad.sum(dims) if ctx.needs_input_grad[2] else None
        gxhat = grad if weight is None else grad * weight.view(shape)
        gx = None
        if ctx.needs_input_grad[0]:  # the same on every rank (the same graph): all or none all-reduce
            sums = torch.cat([gxhat.sum(dims, dtype=torch.float64), (gxhat * xhat).sum(dims, dtype=torch.float64)])
            dist.all_reduce(sums, group=ctx.group)  # every rank's x moved the mean and variance all ranks used
            mean_g, mean_gx = (sums / ctx.total).split(c)
            gx = (gxhat - mean_g.to(xhat.dtype).view(shape) - xhat * mean_gx.to(xhat.dtype).view(shape)) \
                * invstd.to(xhat.dtype).view(shape)
        return gx, gw, gb, None, None, None, None, None


class GlobalBatchNorm(_BatchNorm):
    """A drop-in ``BatchNorm{1,2,3}d`` whose training statistics cover every rank's batch (see the module)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        # only training syncs: evaluation may run on one rank alone
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        tracked = self.track_running_stats
        if tracked:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average, as in _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        return _GlobalStats.apply(input, self.weight, self.bias, self.running_mean if tracked else None,
                                  self.running_var if tracked else None, self.eps, factor, self.process_group)


def synced(model: nn.Module, cls: type = GlobalBatchNorm, process_group=None) -> int:
    """Replace every batch-norm layer of ``model`` by ``cls`` (``GlobalBatchNorm`` or ``nn.SyncBatchNorm``) in
    place, sharing its parameters and buffers; returns how many were replaced."""
    count = 0
    for name, child in list(model.named_children()):
        if type(child) in PLAIN:
            setattr(model, name, _swap(child, cls, process_group=process_group))
            setattr(getattr(model, name), _PLAIN, type(child))
            count += 1
        else:
            count += synced(child, cls, process_group)
    return count


def unsynced(model: nn.Module) -> None:
    """Undo :func:`synced`: the original batch-norm classes, with the (trained) parameters and buffers."""
    for name, child in list(model.named_children()):
        plain = getattr(child, _PLAIN, None)
        if plain is not None:
            setattr(model, name, _swap(child, plain))
        else:
            unsynced(child)


def _swap(bn: _BatchNorm, cls: type, **kw) -> _BatchNorm:
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **kw)
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(new, key, getattr(bn, key))
    return new.train(bn.training)


def unsynced_batch_norms(model: nn.Module) -> int:
    """Batch-norm layers :func:`synced` leaves per rank: inside TorchScript, or of a subclass it cannot vouch for."""
    names = {c.__name__ for c in PLAIN}
    return sum((isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", "") in names)
               or (isinstance(m, _BatchNorm) and type(m) not in PLAIN
                   and not isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)))
               for m in model.modules())
