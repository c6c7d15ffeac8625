"""The attainable rate of this machine for a given network, measured in the same run as the network:
convolutions at the network's own layer shapes, per stage (every output resolution), fp32 and bf16 in PyTorch
(oneDNN) and int8 in the installed runtimes. A large matmul is not a CNN's limit (on a Zen 5 machine a
256-channel 3x3 convolution ran at 417 GFLOP/s fp32 while a 4096² matmul read 195), so the matmul probe is
kept only as a column.

For each output resolution of the network (stem, stage 1..4) the probe is a dense 3x3 convolution, stride 1,
with the widest channel count of that resolution's convolutions (Res2Net-50 26w4s: 64 at 112², 256 at 56², 512
at 28², 1024 at 14², 2048 at 7²), channels_last, at the row's batch size. A row's attainable time is
``sum over stages of (its FLOPs at that stage / the stage probe's rate)``; its "share of the roofline" is the
attainable time over the measured time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..inference.fused import PackedConv2d

__all__ = ["ConvShape", "StageProbe", "attainable_seconds", "conv_shapes", "stage_probes"]


@dataclass(frozen=True)
class ConvShape:
    """One convolution of a network as it runs: channels, kernel, groups, input and output sizes, FLOPs/image."""

    in_channels: int
    out_channels: int
    kernel: Tuple[int, int]
    groups: int
    in_hw: Tuple[int, int]
    out_hw: Tuple[int, int]
    flops: float  # per image, 2 per MAC


@dataclass
class StageProbe:
    """The roofline probe of one output resolution: a dense 3x3 conv of ``channels`` at ``hw``."""

    hw: Tuple[int, int]
    channels: int
    flops_share: float  # share of the network's conv FLOPs computed at this resolution
    network_flops: float  # the network's FLOPs per image at this resolution


def conv_shapes(model: nn.Module, input_shape: Tuple[int, int, int]) -> List[ConvShape]:
    """Every Conv2d call of one forward of ``model`` on a (1, *input_shape) input (on the meta device: free)."""
    import copy

    shapes: List[ConvShape] = []

    def hook(mod: nn.Module, inputs: Tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(mod, nn.Conv2d)
        kh, kw = mod.kernel_size
        macs = out.shape[1] * out.shape[2] * out.shape[3] * (mod.in_channels // mod.groups) * kh * kw
        shapes.append(ConvShape(mod.in_channels, mod.out_channels, (kh, kw), mod.groups,
                                tuple(inputs[0].shape[2:]), tuple(out.shape[2:]), 2.0 * macs))  # type: ignore[arg-type]

    meta = copy.deepcopy(model).to("meta").eval()
    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.zeros(1, *input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return shapes


def stage_probes(shapes: Sequence[ConvShape]) -> List[StageProbe]:
    """One probe per output resolution, widest channel count there, with that resolution's FLOP share."""
    by_hw: Dict[Tuple[int, int], List[ConvShape]] = {}
    for s in shapes:
        by_hw.setdefault(s.out_hw, []).append(s)
    total = sum(s.flops for s in shapes) or 1.0
    probes = []
    for hw, group in sorted(by_hw.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        flops = sum(s.flops for s in group)
        channels = max(max(s.in_channels, s.out_channels) for s in group)
        probes.append(StageProbe(hw, channels, flops / total, flops))
    return probes


def probe_module(probe: StageProbe) -> nn.Conv2d:
    """The probe's convolution (dense 3x3, stride 1, padding 1, with bias, like a folded conv)."""
    torch.manual_seed(0)
    return nn.Conv2d(probe.channels, probe.channels, 3, padding=1, bias=True).eval().requires_grad_(False)


def probe_flops(probe: StageProbe, batch: int) -> float:
    """FLOPs of one probe call at ``batch``."""
    return 2.0 * batch * probe.hw[0] * probe.hw[1] * probe.channels * probe.channels * 9


def attainable_seconds(probes: Sequence[StageProbe], rates: Sequence[float], flops_per_image: float,
                       batch: int) -> float:
    """Time the row's FLOPs need at the probes' rates (GFLOP/s): each stage's share of ``flops_per_image`` at
    its own probe's rate. NaN when a rate is missing."""
    if not probes or any(not r or math.isnan(r) for r in rates):
        return math.nan
    return sum(p.flops_share * flops_per_image * batch / (r * 1e9) for p, r in zip(probes, rates))


def eager_probe_step(probe: StageProbe, batch: int, dtype: torch.dtype,
                     device: torch.device) -> Callable[[], None]:
    """One call of the probe conv in PyTorch (channels_last, weights in ``dtype``; on the CPU with its weight packed
    once, as the eager fast path runs its convolutions)."""
    conv: nn.Module = probe_module(probe).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    if device.type == "cpu":
        conv = PackedConv2d(conv)  # type: ignore[arg-type]
    x = torch.randn(batch, probe.channels, *probe.hw, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)

    def step() -> None:
        with torch.no_grad():
            conv(x)

    return step


def runtime_probe_step(probe: StageProbe, batch: int, backend: str, dtype: str) -> Optional[Callable[[], None]]:
    """One call of the probe conv in an installed runtime (int8: quantized on random calibration data, which
    is enough for timing); None when the runtime is missing."""
    from ..inference import available_backends, build_backend

    if backend not in available_backends(dtype):
        return None
    conv = probe_module(probe)
    x = torch.randn(batch, probe.channels, *probe.hw)
    built = build_backend(conv, backend, dtype, calibration=[x[:2]] if dtype == "int8" else None,
                          input_size=probe.hw[0], verify=False)
    return lambda: built(x)
