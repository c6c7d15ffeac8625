"""What this machine can do, read once: the one place every hardware-dependent default comes from.

:func:`detect` returns a :class:`Hardware`: the CPU's instruction-set class as this process may use it (the
CPU's own flags, lowered by the switches that cap PyTorch's kernels: ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``
for oneDNN's convolutions, ``ATEN_CPU_CAPABILITY`` for ATen's vectorised element-wise kernels), whether bf16 and
int8 run natively, the cores this process may use (its CPU affinity and the cgroup v1/v2 CPU quota of its
container), the GPUs, and the installed inference runtimes. The defaults derive from it:

- :func:`default_amp`: ``run.amp=auto`` is bf16 autocast only where bf16 is native (CPU: AVX512-BF16 or AMX;
  CUDA: sm80+, else fp16), fp32 elsewhere. bf16 on a CPU without it is emulated by oneDNN and runs 7-8x slower
  than fp32 in training (docs/BENCHMARKS.md, "CPU classes"); ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
  answers True on AVX-512 CPUs without BF16 (Skylake-X, or ``ONEDNN_MAX_CPU_ISA=AVX512_CORE``), so it is not
  enough on its own.
- :func:`default_dtype`: ``optimize(dtype="auto")`` and ``predict --dtype auto``: bf16 where native, else fp32.
- :func:`default_threads`: torch's intra-op threads: the usable cores (torch counts the machine's cores, so a
  container allowed 2 of 64 would run 64 threads on 2 cores).
- :func:`default_workers`: DataLoader worker processes: one per usable core beyond the one that trains, at most 4.
- :func:`check_dtype`: a dtype the device cannot run is refused (one line naming the CPU's limit) or, where it is
  only slower, runs with one warning saying how much and what to use instead.

``res2net env`` prints all of it (``--json`` for bug reports). Imports nothing of the package but its errors.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .errors import ConfigError

__all__ = ["CPU", "Hardware", "ISA_CLASSES", "check_dtype", "default_amp", "default_dtype", "default_threads",
           "default_workers", "detect", "limit_threads", "select_device", "usable_cores"]

# x86 instruction-set classes, lowest first (ARM CPUs are "arm" / "arm_bf16" outside this order)
ISA_CLASSES: Tuple[str, ...] = ("sse", "avx2", "avx512", "avx512_bf16", "amx")
# oneDNN's ONEDNN_MAX_CPU_ISA values (oneDNN's "CPU dispatcher control" page) -> the highest class they allow
_ONEDNN_CAP: Dict[str, str] = {
    "SSE41": "sse", "AVX": "sse", "AVX2": "avx2", "AVX2_VNNI": "avx2", "AVX2_VNNI_2": "avx2",
    "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE_BF16": "avx512_bf16",
    "AVX10_1_512": "avx512_bf16", "AVX512_CORE_FP16": "avx512_bf16", "AVX10_1_512_AMX": "amx",
    "AVX512_CORE_AMX": "amx", "AVX10_1_512_AMX_FP16": "amx", "AVX512_CORE_AMX_FP16": "amx", "AVX10_2_512": "amx",
    "AVX10_2_512_AMX_2": "amx", "ALL": "amx", "DEFAULT": "amx",
}
# ATen's ATEN_CPU_CAPABILITY values -> the highest class they allow (ATen has no bf16 or AMX level of its own)
_ATEN_CAP: Dict[str, str] = {"DEFAULT": "sse", "AVX2": "avx2", "AVX512": "amx"}
# int8 dot-product instructions by the lowest oneDNN level that uses them
_VNNI_CAP = {"avx512_vnni": "AVX512_CORE_VNNI", "avx_vnni": "AVX2_VNNI", "amx_int8": "AVX512_CORE_AMX"}
_ONEDNN_ORDER = list(_ONEDNN_CAP)
# inference runtimes and tools: distribution name -> what it is for
RUNTIMES: Tuple[str, ...] = ("onnxruntime", "openvino", "zentorch", "onnx", "onnxscript", "timm")
# slow-down of bf16 against fp32 without native bf16, measured on Zen 3 and emulated AVX2 on Zen 4
# (docs/BENCHMARKS.md "CPU classes"): training, res2net17_slim batch 128 at 28 px (autocast); inference,
# res2net50_26w_4s batch 1 on the fused eager path
EMULATED_BF16_SLOWDOWN = "7-8x"
EMULATED_BF16_INFER_SLOWDOWN = "about 5x"


@dataclass(frozen=True)
class CPU:
    """The CPU as this process may use it."""

    name: str  # model name as the OS reports it
    arch: str  # platform.machine(): x86_64, aarch64, arm64 ...
    isa: str  # effective class: one of ISA_CLASSES, or "arm" / "arm_bf16"
    native_isa: str  # the class of the CPU's own flags, before any cap
    bf16: bool  # bf16 matrix kernels run natively (AVX512-BF16, AMX-BF16, ARM BF16) and are enabled
    int8_dot: bool  # int8 dot-product instructions (VNNI, AMX-INT8, ARM dotprod/i8mm)
    caps: Dict[str, str] = field(default_factory=dict)  # the env switches that lower the class, as set
    flags: Tuple[str, ...] = ()  # the flags the class was read from (the relevant ones)

    @property
    def emulated(self) -> bool:
        """True where a switch lowers the class below the CPU's own."""
        return self.isa != self.native_isa


@dataclass(frozen=True)
class Hardware:
    """Everything :func:`detect` found (see the module docstring)."""

    cpu: CPU
    cores: int  # the cores this process may use
    cores_why: str  # what limits them: "affinity", "cgroup quota ..." or "os"
    logical_cpus: int  # os.cpu_count()
    torch_threads: int  # torch.get_num_threads() as found
    cuda: List[Dict[str, Any]]  # one dict per CUDA device: name, capability, memory_gib, bf16
    mps: bool  # Apple Silicon GPU through torch's MPS backend
    runtimes: Dict[str, Optional[str]]  # installed version (None: not installed)
    compiler: Optional[str]  # the C++ compiler inductor would use
    torch: str
    onednn: bool

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (for ``res2net env --json``)."""
        data = asdict(self)
        data["cpu"]["emulated"] = self.cpu.emulated
        data["cpu"]["flags"] = list(self.cpu.flags)
        return data


# ------------------------------------------------------------------------------------------------- the CPU

def _cpuinfo_text(root: Path) -> str:
    try:
        return (root / "proc" / "cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


# PyTorch's cpuinfo keys that /proc/cpuinfo spells otherwise
_TORCH_FLAG_NAMES = {"avx512_f": "avx512f", "avx512_bw": "avx512bw", "avx512_vl": "avx512vl", "avx512_dq": "avx512dq",
                     "avx512_cd": "avx512cd", "fma3": "fma"}


def _cpu_flags(root: Path) -> Tuple[str, set]:
    """(model name, flags): from /proc/cpuinfo (x86 "flags", ARM "Features"), else torch's cpuinfo reading."""
    text = _cpuinfo_text(root)
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if not flags and root == Path("/"):  # macOS, Windows: PyTorch's own cpuinfo reading
        reader = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
        info = reader() if reader else {}
        name = name or str(info.get("cpu_name", ""))
        flags = {_TORCH_FLAG_NAMES.get(k, k) for k, v in info.items() if v is True}
    return name or platform.processor() or platform.machine(), flags


def _native_class(arch: str, flags: set) -> Tuple[str, bool, bool]:
    """(class, bf16, int8 dot) from the CPU's flags."""
    if arch.lower() in ("aarch64", "arm64"):
        bf16 = "bf16" in flags
        return ("arm_bf16" if bf16 else "arm"), bf16, bool({"asimddp", "i8mm"} & flags)
    has = lambda *names: all(n in flags for n in names)  # noqa: E731
    if has("amx_bf16", "amx_tile"):
        cls = "amx"
    elif has("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"):
        cls = "avx512_bf16"
    elif has("avx512f", "avx512bw", "avx512vl", "avx512dq"):
        cls = "avx512"
    elif has("avx2", "fma"):
        cls = "avx2"
    else:
        cls = "sse"
    int8 = bool(set(_VNNI_CAP) & flags)
    return cls, cls in ("avx512_bf16", "amx"), int8


def _lower(a: str, b: str) -> str:
    return a if ISA_CLASSES.index(a) <= ISA_CLASSES.index(b) else b


def _env_caps(env: Mapping[str, str]) -> Dict[str, str]:
    return {k: env[k] for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if env.get(k)}


def read_cpu(root: Path = Path("/"), env: Optional[Mapping[str, str]] = None, aten_capability: Optional[str] = None) -> CPU:
    """The :class:`CPU` from ``root``/proc/cpuinfo and the capping switches in ``env`` (default: this process).

    ``aten_capability``: ATen's dispatch level as ``torch.backends.cpu.get_cpu_capability()`` reports it (default:
    asked of torch when ``root`` is ``/``; it already reflects ``ATEN_CPU_CAPABILITY``)."""
    env = os.environ if env is None else env
    arch = platform.machine() if root == Path("/") else ("aarch64" if "Features" in _cpuinfo_text(root) else "x86_64")
    name, flags = _cpu_flags(root)
    native, bf16, int8 = _native_class(arch, flags)
    caps = _env_caps(env)
    isa = native
    if native in ISA_CLASSES:
        onednn = (caps.get("ONEDNN_MAX_CPU_ISA") or caps.get("DNNL_MAX_CPU_ISA") or "").upper()
        if onednn:
            if onednn not in _ONEDNN_CAP:
                raise ConfigError(f"ONEDNN_MAX_CPU_ISA={onednn!r} is not a oneDNN ISA name; one of "
                                  f"{', '.join(_ONEDNN_ORDER)}")
            isa = _lower(isa, _ONEDNN_CAP[onednn])
            int8 = int8 and any(f in flags and _ONEDNN_ORDER.index(onednn) >= _ONEDNN_ORDER.index(level)
                                for f, level in _VNNI_CAP.items())
        if aten_capability is None and root == Path("/"):
            aten_capability = torch.backends.cpu.get_cpu_capability()
        elif aten_capability is None:
            aten_capability = caps.get("ATEN_CPU_CAPABILITY")
        aten = (aten_capability or "").upper()
        if aten in _ATEN_CAP:
            isa = _lower(isa, _ATEN_CAP[aten])
        bf16 = bf16 and isa in ("avx512_bf16", "amx")
    relevant = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "bf16", "i8mm", "asimddp", "sve")))
    return CPU(name=name, arch=arch, isa=isa, native_isa=native, bf16=bf16, int8_dot=int8, caps=caps,
               flags=tuple(relevant))


# ----------------------------------------------------------------------------------------------- the cores

def _cgroup_quota(root: Path) -> Optional[Tuple[float, str]]:
    """(cores, where) of the tightest CPU quota on this process's cgroup path (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), walking up to the hierarchy's root; None without a quota."""
    try:
        lines = (root / "proc" / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    best: Optional[Tuple[float, str]] = None

    def consider(cores: float, where: str) -> None:
        nonlocal best
        if cores > 0 and (best is None or cores < best[0]):
            best = (cores, where)

    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = Path(path.lstrip("/"))
        if controllers == "":  # cgroup v2
            bases = [root / "sys" / "fs" / "cgroup"]
            files = ("cpu.max",)
        elif "cpu" in controllers.split(","):
            bases = [root / "sys" / "fs" / "cgroup" / d for d in (controllers, "cpu", "cpu,cpuacct")]
            files = ("cpu.cfs_quota_us",)
        else:
            continue
        for base in bases:
            node = base / rel
            while True:
                try:
                    if files[0] == "cpu.max":
                        quota, _, period = (node / "cpu.max").read_text().split()[:2] + [""]
                        if quota != "max":
                            consider(float(quota) / float(period or 100000), f"cgroup v2 cpu.max {node}")
                    else:
                        quota = float((node / "cpu.cfs_quota_us").read_text())
                        period = float((node / "cpu.cfs_period_us").read_text())
                        if quota > 0:
                            consider(quota / period, f"cgroup v1 cpu.cfs_quota_us {node}")
                except (OSError, ValueError):
                    pass
                if node == base or node.parent == node:
                    break
                node = node.parent
    return best


def usable_cores(root: Path = Path("/")) -> Tuple[int, str]:
    """(cores, why): the CPUs this process may run on (affinity), lowered to the cgroup CPU quota rounded up."""
    try:
        affinity = len(os.sched_getaffinity(0)) if root == Path("/") else (os.cpu_count() or 1)
        why = "affinity" if affinity < (os.cpu_count() or affinity) else "os"
    except AttributeError:  # macOS, Windows
        affinity, why = os.cpu_count() or 1, "os"
    quota = _cgroup_quota(root)
    if quota is not None and math.ceil(quota[0]) < affinity:
        return max(1, math.ceil(quota[0])), f"{quota[1]} ({quota[0]:g} cores)"
    return max(1, affinity), why


# ------------------------------------------------------------------------------------------------ the rest

def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_devices() -> List[Dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "bf16": props.major >= 8})
    return found


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    """This machine, read once per process (cached)."""
    cores, why = usable_cores()
    return Hardware(cpu=read_cpu(), cores=cores, cores_why=why, logical_cpus=os.cpu_count() or 1,
                    torch_threads=torch.get_num_threads(), cuda=_cuda_devices(), mps=_mps(),
                    runtimes={name: _version(name) for name in RUNTIMES},
                    compiler=shutil.which("c++") or shutil.which("g++") or shutil.which("cc"),
                    torch=torch.__version__, onednn=bool(torch.backends.mkldnn.is_available()))


def select_device(name: str = "auto", local_rank: int = 0, what: str = "run.device") -> torch.device:
    """``auto``: the local rank's CUDA device when CUDA is present, else Apple's GPU (MPS) when present, else the
    CPU. ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` must exist here, or a one-line ConfigError naming ``what``
    (the option) says so."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps") if detect().mps else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what} must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={name!r} but CUDA is not available; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={name!r} but this machine has {torch.cuda.device_count()} CUDA "
                              "device(s)")
    elif device.type == "mps":
        if not detect().mps:
            raise ConfigError(f"{what}={name!r} but this machine has no MPS device (Apple Silicon with a "
                              "torch built for it); use auto or cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{what} must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


# ---------------------------------------------------------------------------------------------- defaults

def bf16_native(device: Union[str, torch.device] = "cpu", hw: Optional[Hardware] = None) -> bool:
    """Whether ``device`` runs bf16 matrix kernels natively (CPU: AVX512-BF16/AMX and oneDNN allowed to use them;
    CUDA: sm80+; MPS: no)."""
    device = torch.device(device)
    hw = hw or detect()
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return hw.cpu.bf16 and hw.onednn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def default_amp(device: torch.device, hw: Optional[Hardware] = None) -> Tuple[Optional[torch.dtype], str]:
    """(autocast dtype or None, why) for ``run.amp=auto`` on ``device``."""
    hw = hw or detect()
    if device.type == "cuda":
        if bf16_native(device, hw):
            return torch.bfloat16, "CUDA with bf16 (sm80+)"
        return torch.float16, "CUDA without bf16: fp16 with a GradScaler"
    if device.type == "mps":
        return None, "MPS: fp32 (autocast on MPS is not verified here)"
    if bf16_native(device, hw):
        return torch.bfloat16, f"CPU class {hw.cpu.isa}: native bf16"
    return None, (f"CPU class {hw.cpu.isa}: no native bf16 (AVX512-BF16 or AMX), bf16 would be "
                  f"{EMULATED_BF16_SLOWDOWN} slower than fp32")


def default_dtype(device: Union[str, torch.device] = "cpu", hw: Optional[Hardware] = None) -> Tuple[str, str]:
    """('bf16' | 'fp32', why) for inference with ``dtype="auto"`` on ``device``."""
    hw = hw or detect()
    device = torch.device(device)
    native = bf16_native(device, hw)
    where = f"{device.type} {'with' if native else 'without'} native bf16" + \
        (f" (CPU class {hw.cpu.isa})" if device.type == "cpu" else "")
    return ("bf16" if native else "fp32"), where


def check_dtype(dtype: str, device: Union[str, torch.device] = "cpu", what: str = "dtype",
                hw: Optional[Hardware] = None) -> None:
    """Refuse (ConfigError, one line) a precision ``device`` cannot run; warn once where it only runs slower.

    bf16 on a CPU without native bf16 computes correct results (oneDNN emulates it with AVX-512, the plain
    convolution does below that) but slower than fp32: a warning says how much and what to use instead. fp16 is
    a CUDA precision."""
    hw = hw or detect()
    device = torch.device(device)
    if dtype == "fp16" and device.type != "cuda":
        raise ConfigError(f"{what}=fp16 needs CUDA; use bf16 or fp32 on {device.type}")
    if dtype != "bf16" or device.type != "cpu" or bf16_native(device, hw):
        return
    warnings.warn(f"{what}=bf16: this CPU ({hw.cpu.name}, class {hw.cpu.isa}) has no native bf16 (AVX512-BF16 or "
                  f"AMX); it is emulated, {EMULATED_BF16_SLOWDOWN} slower than fp32 in training and "
                  f"{EMULATED_BF16_INFER_SLOWDOWN} in inference: use fp32 (auto picks it)", RuntimeWarning,
                  stacklevel=3)


def _local_processes() -> int:
    """Processes of this job on this machine (``torchrun``'s LOCAL_WORLD_SIZE; 1 outside it)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def default_threads(hw: Optional[Hardware] = None) -> int:
    """torch's intra-op threads for one process: its share of the usable cores (see :func:`usable_cores`)
    among the job's processes on this machine; ``OMP_NUM_THREADS``, where set, wins (torchrun sets it to 1)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (hw or detect()).cores // _local_processes())


def limit_threads(hw: Optional[Hardware] = None) -> int:
    """Lower torch's intra-op threads to :func:`default_threads` where torch counted more (a container allowed
    fewer cores than the machine has); a lower count set by the caller stays. Returns the count in use."""
    limit = default_threads(hw)
    if torch.get_num_threads() > limit:
        torch.set_num_threads(limit)
    return torch.get_num_threads()


def default_workers(hw: Optional[Hardware] = None, cap: int = 8) -> int:
    """DataLoader worker processes for one process: its share of the usable cores beyond the one that trains, at
    most ``cap``."""
    return max(0, min(cap, (hw or detect()).cores // _local_processes() - 1))


def describe(hw: Optional[Hardware] = None) -> List[str]:
    """Lines for ``res2net env``: what :func:`detect` sees."""
    hw = hw or detect()
    cpu = hw.cpu
    lines = [f"cpu: {cpu.name} ({cpu.arch})",
             f"cpu class: {cpu.isa}" + (f" (emulated; the CPU itself is {cpu.native_isa}: "
                                        + ", ".join(f"{k}={v}" for k, v in cpu.caps.items()) + ")"
                                        if cpu.emulated else ""),
             f"native bf16: {'yes' if cpu.bf16 else 'no'}; int8 dot product (VNNI/AMX/dotprod): "
             f"{'yes' if cpu.int8_dot else 'no'}",
             f"cores usable: {hw.cores} ({hw.cores_why}); logical CPUs: {hw.logical_cpus}; torch threads found: "
             f"{hw.torch_threads}",
             "cuda: " + (", ".join(f"{d['index']}: {d['name']} (sm{d['capability']}, {d['memory_gib']} GiB)"
                                   for d in hw.cuda) or "none"),
             f"mps: {'yes' if hw.mps else 'no'}",
             f"torch {hw.torch}, oneDNN {'yes' if hw.onednn else 'no'}, C++ compiler (inductor): "
             f"{hw.compiler or 'none'}",
             "runtimes: " + ", ".join(f"{k} {v or '-'}" for k, v in hw.runtimes.items())]
    return lines
