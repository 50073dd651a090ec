"""Ranks of a ``torchrun`` launch: which process this is, and the few exchanges the suite needs.

    torchrun --standalone --nproc_per_node 2 probes/part_retrieval.py --model dino ...

Nothing here does anything in a plain run (``world() == (0, 1)``). Under torchrun (``WORLD_SIZE`` > 1 in
the environment) the process group is initialised on first use: NCCL when CUDA is available, each rank on
``cuda:LOCAL_RANK``, gloo otherwise. Features and metrics are exchanged as CPU tensors through a gloo group
in both cases (they are on the CPU already: ``Encoder.extract`` returns CPU tensors), so the same code runs on
a laptop and on a cluster. ``probes.features`` shares the extraction out, ``probes.metrics`` the queries of
exact AP; rank 0 alone writes records (``probes.experiment.Run.finish``).
"""
from __future__ import annotations

import atexit
import os

import torch

_CPU_GROUP = None


def launched() -> bool:
    """True under torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun. Initialises the process group on first use."""
    if not launched():
        return 0, 1
    import torch.distributed as dist

    global _CPU_GROUP
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
            _CPU_GROUP = dist.new_group(backend="gloo")
        else:
            dist.init_process_group("gloo")
            _CPU_GROUP = dist.group.WORLD
        atexit.register(_close)
    elif _CPU_GROUP is None:  # initialised by the caller: add the CPU group beside it
        _CPU_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def device_for_rank(device: str | None) -> str | None:
    """The device a rank runs on: ``cuda`` (or the default on a GPU machine) becomes ``cuda:LOCAL_RANK``."""
    if not launched():
        return device
    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank()}"
    return device


def _close() -> None:
    """Leave together, then destroy the group. A rank that tears gloo down while another is still exiting can
    abort the other ("terminate called without an active exception"); a rank that failed never reaches the
    barrier, so after a minute the others exit without destroying (destroying then can deadlock)."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.monitored_barrier(_CPU_GROUP, timeout=datetime.timedelta(seconds=60))
    except RuntimeError:
        return
    dist.destroy_process_group()


def gather_objects(obj) -> list:
    """``obj`` of every rank, in rank order (small metadata only: it is pickled)."""
    import torch.distributed as dist

    out = [None] * world()[1]
    dist.all_gather_object(out, obj, group=_CPU_GROUP)
    return out


def broadcast_object(obj, src: int = 0):
    import torch.distributed as dist

    box = [obj if world()[0] == src else None]
    dist.broadcast_object_list(box, src=src, group=_CPU_GROUP)
    return box[0]


def broadcast(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """``tensor`` of rank ``src`` on every rank (the others pass a buffer of the same shape and dtype)."""
    import torch.distributed as dist

    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=src, group=_CPU_GROUP)
    return tensor


def sum_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a CPU tensor in which each rank filled only its own rows (zeros
    elsewhere): every rank gets every row, exactly (x + 0 = x)."""
    import torch.distributed as dist

    tensor = tensor.contiguous()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_CPU_GROUP)
    return tensor
