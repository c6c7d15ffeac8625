"""Process-group set-up for ``torchrun`` (gloo on CPU, nccl on CUDA) and device/precision selection."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..errors import ConfigError, Res2NetError
from ..hardware import check_dtype, default_amp, select_device


class DistributedSetupError(Res2NetError):
    """The process group could not be formed (store unreachable, a peer missing, a timeout)."""


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


def select_amp(name: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype: ``auto`` follows :func:`res2net.hardware.default_amp` (bf16 only where it is native:
    AVX512-BF16/AMX CPUs, sm80+ GPUs; fp16 on older GPUs; fp32 elsewhere); ``off`` is None; ``bf16`` on a CPU
    without native bf16 runs with one warning saying how much slower it is."""
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        return default_amp(device)[0]
    if name not in choices:
        raise ConfigError(f"run.amp must be one of auto, bf16, fp16, off; got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.amp=fp16 needs CUDA; use bf16 or off on {device.type}")
    if name == "bf16":
        check_dtype("bf16", device, "run.amp")
    return choices[name]


def dist_info_from_env() -> DistInfo:
    """This process's rank and world size as ``torchrun`` describes them (RANK, WORLD_SIZE, LOCAL_RANK);
    rank 0 of 1 without them. Joins no group."""
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def under_torchrun() -> bool:
    """True in a process started by ``torchrun``'s elastic agent (it sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def restart_count() -> int:
    """How often ``torchrun`` has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


# Seconds a process waits for the process group to form (store connection + every peer connected) before it
# gives up with a message; and the timeout of each collective afterwards (torch's default: 30 minutes).
INIT_TIMEOUT_S = float(os.environ.get("RES2NET_DIST_INIT_TIMEOUT", "300"))
COLLECTIVE_TIMEOUT_S = float(os.environ.get("RES2NET_DIST_TIMEOUT", "1800"))


def _group_store(info: DistInfo, timeout: timedelta) -> Optional[dist.Store]:
    """The store the process group forms through, or None to let torch read ``env://``.

    Under ``torchrun`` the workers share the elastic agent's TCPStore, and the agent keeps that store across
    restarts of the worker group. torch's ``env://`` handler adds no per-attempt prefix to it (it assumes a new
    store per restart), so a restarted group finds the previous attempt's gloo addresses under the same keys,
    connects to ports of dead processes and waits inside ``init_process_group`` until the collective timeout
    (30 minutes). The keys of each attempt get their own prefix here."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(addr, port, info.world_size, is_master=False, timeout=timeout)
    prefix = f"res2net/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/attempt_{restart_count()}/"
    return dist.PrefixStore(prefix, store)


def _give_up(message: str) -> None:
    """Called by the set-up watchdog: the main thread is blocked inside C++ and cannot take an exception."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(1)


def init_distributed(device_name: str = "auto", init_timeout: Optional[float] = None,
                     timeout: Optional[float] = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK, ...).
    A single process (no WORLD_SIZE or WORLD_SIZE=1) needs no group.

    Forming the group is bounded by ``init_timeout`` seconds (default :data:`INIT_TIMEOUT_S`, env
    RES2NET_DIST_INIT_TIMEOUT): past it the process prints one line naming the rank, the store address and
    what was waited for, and exits with 1 (a ``torchrun --max-restarts`` agent then restarts the group).
    ``timeout`` (default :data:`COLLECTIVE_TIMEOUT_S`, env RES2NET_DIST_TIMEOUT) bounds each collective."""
    info = dist_info_from_env()
    world = info.world_size
    if world > 1 and not dist.is_initialized():
        device = select_device(device_name, info.local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        wait = init_timeout if init_timeout is not None else INIT_TIMEOUT_S
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        watchdog = threading.Timer(wait, _give_up, args=(
            f"res2net: error: rank {info.rank} of {world} could not form the {backend} process group within "
            f"{wait:.0f} s (store {where}, restart {restart_count()}): a peer did not start or cannot reach this "
            "node; check that every node runs the same command and that the rendezvous address is reachable "
            "(RES2NET_DIST_INIT_TIMEOUT sets the limit)",))
        watchdog.daemon = True
        watchdog.start()
        try:
            store = _group_store(info, timedelta(seconds=wait))
            kwargs = {"store": store, "rank": info.rank, "world_size": world} if store is not None else {}
            dist.init_process_group(backend=backend, timeout=timedelta(
                seconds=timeout if timeout is not None else COLLECTIVE_TIMEOUT_S), **kwargs)
        except (RuntimeError, ValueError, OSError) as exc:  # store unreachable, refused, timed out
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DistributedSetupError(f"rank {info.rank} of {world} could not join the {backend} process group "
                                        f"at {where}: {first}") from None
        finally:
            watchdog.cancel()
    return info


def agree(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank (a MAX all-reduce; the flag itself alone)."""
    if info.enabled and dist.is_initialized():
        value = torch.tensor([int(flag)], dtype=torch.int32)
        if dist.get_backend() == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())
    return flag


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


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (itself in a single process). Between the job's own processes only: the
    object travels pickled, as torch's ``broadcast_object_list`` sends it."""
    if info.enabled and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def cleanup(info: Optional[DistInfo] = None) -> None:
    """Leave (destroy) the process group, if one is formed; safe to call more than once."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all ranks hold one model."""
    if info.enabled and dist.is_initialized():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
