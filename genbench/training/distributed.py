"""Data-parallel training over ``torch.distributed``: NCCL on GPUs, gloo on CPU.

Launched by ``torchrun --nproc-per-node N -m genbench run ...`` or by ``genbench run --nproc N``
(which starts torchrun for you). Every rank builds the same model from the run seed, takes its
slice of each global batch (``batch_size`` is the global batch), and before every optimizer step
the gradients of that optimizer's parameters are averaged over the ranks in one flattened
all-reduce. The averaged gradient of per-batch mean losses is the gradient of the global batch's
mean loss, so N processes train like one process with the same global batch (up to the random
numbers each rank draws and the float summation order).

Why not wrap each network in ``DistributedDataParallel``: its reducer expects one forward pass per
backward pass over all of a module's parameters, while GAN steps call the discriminator three times
and back-propagate the generator loss into the generator only (``inputs=``). An all-reduce at each
optimizer step has the same semantics for every model the harness trains, with one bucket per
optimizer step instead of DDP's overlap of communication with the backward pass.

Batch norm: on CUDA the networks' ``BatchNorm`` layers become ``SyncBatchNorm`` (statistics over the
global batch); gloo on CPU cannot run ``SyncBatchNorm``, so each rank normalises with its own slice's
statistics there (the run's ``config.json`` says so).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from genbench.core.errors import GenbenchError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0


SINGLE = Ranks()


def ranks_from_environment() -> Ranks:
    """The ranks torchrun (or another launcher) put in the environment; one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join the process group once (a second call is a no-op)."""
    if not ranks.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    try:
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world_size)
    except (RuntimeError, ValueError) as error:
        raise GenbenchError(f"cannot join the {backend} process group of {ranks.world_size} "
                            f"processes: {error}") from None


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the run seed (one process trains exactly as before); other ranks get seeds
    derived from it, distinct for every (seed, rank)."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 7919) % 2**63


def shard(batch: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's contiguous slice of a global batch ``[B, ...]`` (B divisible by world size)."""
    if not ranks.distributed:
        return batch
    per_rank = batch.shape[0] // ranks.world_size
    return batch[ranks.rank * per_rank:(ranks.rank + 1) * per_rank]


def check_batch_size(batch_size: int, ranks: Ranks) -> None:
    if batch_size % ranks.world_size:
        from genbench.core.errors import UsageError

        raise UsageError(f"batch_size {batch_size} is the global batch: it must divide evenly over "
                         f"{ranks.world_size} processes")


def average_gradients(parameters, ranks: Ranks) -> None:
    """Average the ``.grad`` of ``parameters`` over the ranks in one flattened all-reduce."""
    if not ranks.distributed:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= ranks.world_size
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def average_losses(losses: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """The mean of each loss over the ranks: the global batch's loss, the same on every rank (so
    every rank agrees when a loss turns NaN)."""
    if not ranks.distributed or not losses:
        return losses
    names = sorted(losses)
    values = torch.tensor([losses[n] for n in names], dtype=torch.float64)
    dist.all_reduce(values)
    values /= ranks.world_size
    return dict(zip(names, values.tolist()))


def gather_objects(obj, ranks: Ranks) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, ranks: Ranks):
    """Rank 0's ``obj`` on every rank."""
    if not ranks.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def sync_batch_norm(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> bool:
    """Turn batch norm into ``SyncBatchNorm`` on CUDA; True when the model has batch norm that
    stays per-rank (CPU)."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not ranks.distributed or not has_bn:
        return False
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return False
    return True
