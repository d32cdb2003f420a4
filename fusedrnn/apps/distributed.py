"""Data-parallel training under ``torchrun``: launch detection, process-group set-up and
tear-down, deterministic per-rank sharding of batches, and small collectives.

A run is distributed when ``torchrun`` (or anything else) set ``WORLD_SIZE`` above 1 in the
environment, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The backend
is NCCL on CUDA and gloo on the CPU. A plain run (no ``WORLD_SIZE``) touches none of this.
"""

import contextlib
import os

import torch

__all__ = ["launched_world_size", "is_main_process", "launch", "active", "rank",
           "world_size", "shard", "all_reduce_sum", "broadcast_object", "barrier"]


def launched_world_size():
    """``WORLD_SIZE`` from the environment (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process():
    """True unless this process is a rank other than 0 of a distributed launch (read from the
    environment, so it also holds before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def launch(device):
    """Join the process group of a distributed launch for the ``with`` block and leave it
    afterwards; yields the device this rank uses (``cuda:LOCAL_RANK`` for a CUDA device).
    Without a distributed launch, yields ``device`` unchanged and does nothing."""
    if launched_world_size() <= 1 or torch.distributed.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        torch.distributed.destroy_process_group()


def active():
    """True inside an initialised process group of more than one process."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def rank():
    return torch.distributed.get_rank() if active() else 0


def world_size():
    return torch.distributed.get_world_size() if active() else 1


def shard(batches, rank_, world_size_):
    """This rank's share of ``batches`` (the same list on every rank): batch ``i`` goes to
    rank ``i % world_size_``, and the list is first padded by wrapping around to a multiple of
    ``world_size_`` (as ``DistributedSampler`` does), so every rank takes the same number of
    steps."""
    if world_size_ <= 1:
        return batches
    total = -(-len(batches) // world_size_) * world_size_
    return [batches[i % len(batches)] for i in range(rank_, total, world_size_)]


def all_reduce_sum(values, device):
    """The sums over ranks of a list of numbers (float64), the same on every rank."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def broadcast_object(value, source=0):
    """``value`` of rank ``source`` on every rank (any picklable object)."""
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=source)
    return holder[0]


def barrier():
    if active():
        torch.distributed.barrier()
