"""Distributed launch under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``): DDP helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    enabled: bool
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (``RANK`` and ``MASTER_ADDR`` set; with
    ``--nproc_per_node 1`` too, so one GPU exercises DDP and NCCL), else single process.

    ``device`` is ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``); under DDP each process takes
    ``cuda:LOCAL_RANK``. Backend: NCCL on CUDA, gloo on CPU. Returns ``(info, torch.device)``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or (world_size <= 1 and "MASTER_ADDR" not in os.environ):
        return DistInfo(False, 0, 1, 0), torch.device(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    log.info("distributed: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(True, rank, world_size, local_rank), dev


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (one tiny all-reduce under DDP)."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
