"""Data-parallel training under torchrun: who am I, join the group, share each batch, add up the logs.

``fit`` uses these so the same notebook code trains on one device or, launched by
``torchrun --nproc_per_node=N``, on N processes (nccl with one GPU each, gloo on the CPU). Outside
torchrun every function is a cheap no-op and the world has one process.
"""

from __future__ import annotations

import atexit
import os

import torch
from torch import nn

from tlutils.config import get_device


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless a torch.distributed process group is running (torchrun)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and always without torch.distributed): log, draw and save only there."""
    return dist_info()[0] == 0


def _leave_group() -> None:
    # a process that exits with the group still open aborts in gloo's destructor ("terminate called
    # without an active exception", SIGABRT), so every rank leaves it explicitly at exit
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group torchrun set up (env ``RANK``/``WORLD_SIZE``); return this rank's device.

    nccl with one GPU per rank when CUDA is present, gloo on CPU; the group is left at interpreter exit.
    Outside torchrun: the configured device (``tlutils.config.get_device``).
    """
    if "RANK" not in os.environ or torch.distributed.is_initialized():
        return get_device()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    atexit.register(_leave_group)
    return device


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model DDP-wrapped when several processes train it (DDP averages gradients), else itself."""
    if dist_info()[1] == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(batch):
    """This rank's share of a global batch (every rank cut the same batch from the same permutation): every
    ``world``-th row of each tensor of a tuple of any arity (or of one tensor), as ``DistributedSampler`` does."""
    rank, world = dist_info()
    if world == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch[rank::world]
    return tuple(t[rank::world] for t in batch)


def all_reduce_sums(sums: dict[str, torch.Tensor], seen: int, device: torch.device) -> tuple[dict, int]:
    """Add the per-rank sums of logged values (and example counts) over all ranks."""
    if dist_info()[1] == 1 or not sums:
        return sums, seen
    keys = sorted(sums)
    packed = torch.stack([sums[k].float().to(device) for k in keys] + [torch.tensor(float(seen), device=device)])
    torch.distributed.all_reduce(packed)
    return {k: packed[i] for i, k in enumerate(keys)}, int(packed[-1].item())
