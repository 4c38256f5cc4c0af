"""Process-group helpers that degrade to a single process: rank, world size, gathers.

The pure library never *needs* ``torch.distributed``: a notebook, a unit test and a CPU-only box
have no process group, and then :func:`rank` is 0, :func:`world_size` is 1 and the gathers are the
identity. Under Ray Train (which initialises the group before the training function runs) the same
calls see every worker.

Who calls what: the Ray Train layer (``training/``) gathers the projections of its worker with
:func:`gather_with_grad` and hands them to the loss as ``gathered=(Z1_all, Z2_all[, labels_all])``
together with :func:`rank`. The losses in :mod:`regionmir.contrastive_losses` never call
``torch.distributed`` themselves, so they run, and are tested, on one CPU process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is available and initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns to each rank the summed gradient of its own slice.

    Forward: every rank contributes ``t`` of shape (B, ...) and receives all W slices.
    Backward: rank r's loss depends on every rank's slice, and every rank's loss depends on rank
    r's slice, so the gradient of slice r is the *sum over ranks* of the gradients they computed
    for it. Summing here and letting DDP average parameter gradients afterwards gives exactly the
    gradient of the mean of the per-rank losses, i.e. of the loss on the global batch.
    (An all-reduce rather than a reduce-scatter, because gloo has no reduce-scatter.)
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> tuple[Tensor, ...]:  # noqa: D102 - documented on the class
        t = t.contiguous()
        slices = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(slices, t)
        return tuple(slices)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # noqa: D102
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, keeping the gradient of the local slice.

    Args:
        t: (B, ...) local tensor. Every rank must pass the same shape (use ``drop_last=True`` or
            equal shards), because ``all_gather`` cannot carry ragged slices.

    Returns:
        (W*B, ...) tensor whose rows ``rank*B:(rank+1)*B`` are this rank's ``t``. Gradients that
        reach any slice flow back to the rank that owns it (see :class:`_AllGatherWithGrad`).
        Without a process group, or with a world of one, ``t`` itself.
    """
    if world_size() == 1:
        return t
    return torch.cat(_AllGatherWithGrad.apply(t), dim=0)


def gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0 without gradient (labels, ids, metrics).

    Args:
        t: (B, ...) local tensor, the same shape on every rank.

    Returns:
        (W*B, ...) tensor, detached; ``t`` itself without a process group.
    """
    if world_size() == 1:
        return t
    t = t.detach().contiguous()
    slices = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(slices, t)
    return torch.cat(slices, dim=0)
