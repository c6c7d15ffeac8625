"""Process-group set-up for ``torchrun`` (gloo on CPU, nccl on CUDA) and device/precision selection."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that writes files or prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the local rank's CUDA device when CUDA is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={name!r} but CUDA is not available; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ConfigError(f"run.device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def select_amp(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: ``auto`` is bf16 on CPU, bf16 on CUDA where supported else fp16; ``off`` is None."""
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name not in choices:
        raise ConfigError(f"run.amp must be one of auto, bf16, fp16, off; got {name!r}")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("run.amp=fp16 needs CUDA; use bf16 or off on the CPU")
    return choices[name]


def dist_info_from_env() -> DistInfo:
    """This process's rank and world size as ``torchrun`` describes them (RANK, WORLD_SIZE, LOCAL_RANK);
    rank 0 of 1 without them. Joins no group."""
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, ...).
    A single process (no WORLD_SIZE or WORLD_SIZE=1) needs no group."""
    info = dist_info_from_env()
    world = info.world_size
    if world > 1 and not dist.is_initialized():
        device = select_device(device_name, info.local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over the ranks (itself in a single process)."""
    if info.enabled and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def cleanup(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all ranks hold one model."""
    if info.enabled and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
