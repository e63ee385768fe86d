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

Evaluation: metrics that need many samples cut their work into chunks of a fixed size that does not
depend on the number of processes (:func:`chunk_slices`); chunk ``i`` draws its random numbers from
a seed made of (evaluation seed, stream, ``i``) (:func:`chunk_seed`); each rank computes a contiguous
run of whole chunks (:meth:`Ranks.owned_chunks`) and the results are gathered in chunk order
(:meth:`Ranks.gather_rows`). A chunk's arithmetic is the same whichever rank computes it, so one
process and N processes get the same per-example values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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

    def owned_chunks(self, num_chunks: int, costs: Sequence[float] | None = None) -> range:
        """This rank's chunks of ``num_chunks``: a contiguous run; the runs of ranks ``0..W-1`` follow
        each other and cover every chunk exactly once (a rank may get none when chunks are fewer
        than ranks).

        Without ``costs`` the runs differ in length by at most one. With ``costs`` (one number per
        chunk, e.g. the kernel blocks of a row of MMD's upper triangle) each run ends at the chunk
        whose cumulative cost midpoint crosses ``r / W`` of the total, so the runs' costs balance.
        """
        if not self.distributed:
            return range(num_chunks)
        return range(_boundary(num_chunks, costs, self.rank, self.world_size),
                     _boundary(num_chunks, costs, self.rank + 1, self.world_size))

    def gather_rows(self, local: torch.Tensor | None) -> torch.Tensor:
        """Every rank's ``local [n_r, ...]`` concatenated in rank order, ``[sum n_r, ...]``, on
        every rank, on ``local``'s device. ``n_r`` may differ between ranks and be 0; a rank
        without rows may pass ``None`` (the others give the dtype and trailing shape). All ranks
        must call it. One process: ``local`` itself."""
        if not self.distributed:
            return local
        meta = gather_objects(None if local is None else
                              (local.shape[0], tuple(local.shape[1:]), local.dtype, str(local.device)),
                              self)
        shapes = [m for m in meta if m is not None]
        if not shapes:
            raise ValueError("gather_rows: no rank gave a tensor")
        _, trailing, dtype, device = shapes[0]
        counts = [0 if m is None else m[0] for m in meta]
        wire = _wire_device()
        padded = torch.zeros((max(max(counts), 1), *trailing), dtype=dtype, device=wire)
        if local is not None and local.shape[0]:
            padded[: local.shape[0]] = local.to(wire)
        received = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(received, padded)
        home = local.device if local is not None else torch.device(device)
        return torch.cat([r[:c] for r, c in zip(received, counts)]).to(home)

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        return gather_objects(obj, self)


SINGLE = Ranks()


def _boundary(num_chunks: int, costs: Sequence[float] | None, rank: int, world: int) -> int:
    """First chunk of ``rank`` (``rank == world``: ``num_chunks``), see :meth:`Ranks.owned_chunks`."""
    if costs is None:
        return num_chunks * rank // world
    if len(costs) != num_chunks:
        raise ValueError(f"{len(costs)} costs for {num_chunks} chunks")
    if rank in (0, world):  # the ends, whatever the costs (zero costs included)
        return 0 if rank == 0 else num_chunks
    weights = np.asarray(costs, dtype=np.float64)
    midpoints = np.cumsum(weights) - weights / 2
    return int(np.searchsorted(midpoints, weights.sum() * rank / world, side="left"))


def chunk_slices(total: int, chunk_size: int) -> list[slice]:
    """``[0, total)`` cut into consecutive chunks of ``chunk_size`` rows; the last may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]


def chunk_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys, e.g. (evaluation seed, stream, chunk index).

    The same keys give the same seed in every process, so a chunk draws the same random numbers
    whichever rank computes it and whatever came before it. numpy's ``SeedSequence`` hashes the
    keys, so neighbouring keys (chunk 3 and 4, seed 0 and 1) give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _wire_device() -> torch.device:
    """Where collectives move tensors: the current CUDA device under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


def join_for_evaluation(device: torch.device) -> tuple[Ranks, torch.device]:
    """The ranks that share an evaluation, and this rank's device: the process group of a
    torchrun launch (joined here when no training joined it before, e.g. ``torchrun
    --nproc-per-node N -m genbench evaluate RUN``; each rank on its own GPU), or one process."""
    ranks = ranks_from_environment()
    if not ranks.distributed:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    init_process_group(ranks, device)
    return ranks, device


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
