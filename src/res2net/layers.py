"""Building blocks: the Res2Net split-conv block (Eq. 1 of the paper), squeeze-excitation, drop-path.

Every model of the package (Res2Net, Res2NeXt, SE-Res2Net, v1b, CIFAR Res2NeXt-29, DLA variants and the
ResNet/ResNeXt/SE-ResNet/DLA baselines with ``scale=1``) is built from :class:`Res2NetBlock`.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch
import torch.fx
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def split_width(planes: int, base_width: int, cardinality: int = 1) -> int:
    """Channels of one split: ``floor(planes * base_width / 64) * cardinality`` (official formula)."""
    return int(math.floor(planes * (base_width / 64.0))) * cardinality


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth on a residual branch ``x``: in training, zero whole samples with probability ``p`` and
    scale the kept ones by ``1 / (1 - p)``. A leaf of torch.fx traces (``torch.fx.wrap``): the mask's shape
    depends on ``x.ndim``, which a symbolic trace cannot see."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


torch.fx.wrap("drop_path")


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): global pool, 1x1 reduce (ratio 16), ReLU, 1x1 expand, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(torch.relu(self.fc1(s)))
        return x * torch.sigmoid(s)


class Res2NetBlock(nn.Module):
    """The Res2Net bottleneck block (paper Eq. 1), with the official stage-block behaviour.

    1x1 conv -> split into ``scale`` groups of ``width`` channels -> y1 = x1 (kept), y_i = K_i(x_i + y_{i-1})
    -> concat -> 1x1 conv (-> SE) -> (drop-path) -> + shortcut -> ReLU.

    ``stage_block=True`` is the first block of a stage in the official code: the splits do not add into each
    other, every 3x3 conv carries the stride, and the untouched last split goes through
    ``AvgPool2d(3, stride, padding=1)``. ``scale=1`` is the plain ResNet/ResNeXt bottleneck.

    ``forward(x, shortcut)`` takes an optional precomputed shortcut (used by the DLA trunk).

    Args:
        in_channels: input channels.
        planes: bottleneck planes; the block outputs ``planes * expansion`` channels.
        width: channels of one split (``scale`` splits of ``width`` channels after the first 1x1 conv).
        scale: the number of splits s (the paper's scale dimension); 1 is the plain bottleneck.
        cardinality: groups of each 3x3 conv (ResNeXt; it must divide ``width``).
        expansion: output channels per plane.
        stride, dilation: of the 3x3 convs.
        stage_block: the first block of a stage (official behaviour, above).
        downsample: the shortcut's module (None: identity).
        se_reduction: squeeze-excitation ratio (0: none).
        norm_layer: the normalisation (default BatchNorm2d).
        drop_path: stochastic-depth probability of the residual branch.

    >>> block = Res2NetBlock(256, 64, width=26, scale=4)  # 256 in, 256 out: the identity shortcut
    >>> block(torch.randn(1, 256, 8, 8)).shape
    torch.Size([1, 256, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        planes: int,
        *,
        width: int,
        scale: int = 4,
        cardinality: int = 1,
        expansion: int = 4,
        stride: int = 1,
        dilation: int = 1,
        stage_block: bool = False,
        downsample: Optional[nn.Module] = None,
        se_reduction: int = 0,
        norm_layer: Optional[NormLayer] = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if cardinality < 1 or width % cardinality != 0:
            raise ValueError(f"cardinality must be >= 1 and divide the split width {width}, got {cardinality}")
        norm_layer = norm_layer or nn.BatchNorm2d
        out_channels = planes * expansion
        self.width = width
        self.scale = scale
        self.stage_block = stage_block
        self.out_channels = out_channels
        num_convs = max(1, scale - 1)
        self.conv1 = nn.Conv2d(in_channels, width * scale, kernel_size=1, bias=False)
        self.bn1 = norm_layer(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation,
                      groups=cardinality, bias=False)
            for _ in range(num_convs)
        )
        self.bns = nn.ModuleList(norm_layer(width) for _ in range(num_convs))
        self.conv3 = nn.Conv2d(width * scale, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.se = SqueezeExcite(out_channels, se_reduction) if se_reduction > 0 else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        # The untouched split of a stage block is average-pooled so it matches the strided convs.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if (stage_block and scale > 1) else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x: Tensor, shortcut: Optional[Tensor] = None) -> Tensor:
        if shortcut is None:
            shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.multi_scale(out)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return self.relu(out + shortcut)

    def multi_scale(self, out: Tensor) -> Tensor:
        """The hierarchical split 3x3 convolutions (the Res2Net module proper)."""
        if self.scale == 1:
            return self.relu(self.bns[0](self.convs[0](out)))
        splits = torch.split(out, self.width, 1)
        outs: List[Tensor] = []
        sp = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            sp = splits[i] if (i == 0 or self.stage_block) else sp + splits[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        last = splits[self.scale - 1]
        outs.append(self.pool(last) if self.pool is not None else last)
        return torch.cat(outs, 1)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 norm_layer: Optional[NormLayer] = None, relu: bool = True, dilation: int = 1) -> nn.Sequential:
    """A conv (no bias) + norm (+ ReLU) as an ``nn.Sequential`` (keys ``0``, ``1``); splice it into another
    Sequential with ``*conv_bn_relu(...)`` where the official key layout wants the layers flat."""
    norm_layer = norm_layer or nn.BatchNorm2d
    layers: List[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=dilation * (kernel_size // 2), dilation=dilation, bias=False),
        norm_layer(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module, zero_init_last: bool = False) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero norms, as the official code; optional zero-init of bn3."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    if zero_init_last:
        for m in model.modules():
            if isinstance(m, Res2NetBlock) and isinstance(m.bn3, nn.BatchNorm2d):
                nn.init.zeros_(m.bn3.weight)
