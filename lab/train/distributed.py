"""Distributed data parallel helpers: one process per device, launched by ``torchrun``
(``torchrun --nproc_per_node N -m lab.train ...``) or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The backend is NCCL on
GPUs and gloo on CPUs. Without those variables everything is a single-process no-op."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    # global rank (0 writes checkpoints and logs)
    rank: int
    # number of processes
    world: int
    # rank on this machine (selects the GPU)
    local_rank: int
    # the device this process trains on
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``pref`` "auto" | "cpu" | "cuda" → a device (auto: CUDA when available)."""
    if pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {pref!r}")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(pref: str = "auto") -> DistInfo:
    """Join the process group described by the environment (if any) → :class:`DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(pref, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, device)


def broadcast_float(value: float, info: DistInfo) -> float:
    """Rank 0's ``value`` on every rank (keeps time-based schedules in lock-step)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.broadcast(t, 0)
    return float(t.item())


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """All-reduce (mean) the gradients of a module that is not wrapped in DDP."""
    if not info.active:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(info.world)


def cleanup(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
