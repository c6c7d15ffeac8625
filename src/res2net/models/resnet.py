"""One ResNet-style trunk for Res2Net, Res2NeXt, SE-Res2Net, v1b, the CIFAR Res2NeXt-29 family and the
ResNet/ResNeXt/SE-ResNet baselines (``scale=1``). The state_dict layout equals the official checkpoints'."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..layers import NormLayer, Res2NetBlock, conv_bn_relu, init_weights, split_width
from .common import FeatureInfo, Trunk, check_block_args

STEMS = ("default", "deep", "cifar")


@dataclass(frozen=True)
class ResNetArch:
    """The architecture of one ResNet-trunk model of the zoo: the arguments of :class:`ResNet` that a
    registry row fixes (``planes`` per stage; the split width is ``floor(planes * base_width / 64)``).

    >>> arch = ResNetArch(layers=(3, 4, 6, 3), base_width=26, scale=4)
    >>> arch.total_stride, arch.build(num_classes=0).num_features
    (32, 2048)
    """

    family: ClassVar[str] = "resnet"

    layers: Tuple[int, ...]
    planes: Tuple[int, ...] = (64, 128, 256, 512)
    base_width: int = 26
    scale: int = 4
    cardinality: int = 1
    stem: str = "default"
    stem_width: int = 64
    avg_down: bool = False
    se_reduction: int = 0

    @property
    def total_stride(self) -> int:
        """Reduction of the last map without dilation (the stem's, times 2 per later stage)."""
        return (1 if self.stem == "cifar" else 4) * 2 ** (len(self.layers) - 1)

    @property
    def first_conv(self) -> str:
        """Name of the first convolution (timm's ``first_conv``)."""
        return "conv1.0" if self.stem == "deep" else "conv1"

    def build(self, **kwargs: Any) -> "ResNet":
        """The trunk; ``kwargs`` are the per-instance arguments of :class:`ResNet` (classes, channels...)."""
        return ResNet(**asdict(self), **kwargs)


class ResNet(Trunk):
    """Res2Net/ResNet trunk: stem -> stages of :class:`Res2NetBlock` -> global pool -> fc.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for 50 layers, ``(3, 3, 3)`` for CIFAR-29.
        planes: bottleneck planes per stage (output channels are ``planes * expansion``).
        scale, base_width, cardinality: the Res2Net/ResNeXt dimensions (``scale=1`` is a plain bottleneck).
        stem: ``"default"`` (7x7 conv + max-pool), ``"deep"`` (v1b: three 3x3 convs + max-pool) or
            ``"cifar"`` (one 3x3 conv, stride 1).
        avg_down: v1b shortcut (average pool, then a stride-1 1x1 conv).
        se_reduction: squeeze-excitation ratio in every block (0: none).
        output_stride: 32, 16 or 8 (ImageNet stems; None = native); later stages dilate instead of striding.
        global_pool: ``"avg"``, ``"max"`` or ``""`` (no pooling: logits at every position).

    Modules are registered in the order they run (``conv1, bn1, relu, maxpool, layer1..``, then the head
    ``global_pool, fc``); the stem output C1 is ``relu``'s.

    >>> m = ResNet((1, 1, 1, 1), scale=4, base_width=26, num_classes=10)
    >>> [tuple(f.shape[1:]) for f in m.forward_stages(torch.randn(1, 3, 64, 64))]
    [(64, 32, 32), (256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        planes: Sequence[int] = (64, 128, 256, 512),
        scale: int = 4,
        base_width: int = 26,
        cardinality: int = 1,
        expansion: int = 4,
        stem: str = "default",
        stem_width: int = 64,
        avg_down: bool = False,
        se_reduction: int = 0,
        num_classes: int = 1000,
        in_chans: int = 3,
        output_stride: Optional[int] = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        norm_layer: Optional[NormLayer] = None,
        zero_init_last: bool = False,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(layers) != len(planes) or not all(n >= 1 for n in layers) or not all(p >= 1 for p in planes):
            raise ValueError(f"layers {tuple(layers)} must give >= 1 block for each of the {len(planes)} stages")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        check_block_args(scale, base_width, cardinality, min(planes))
        norm_layer = norm_layer or nn.BatchNorm2d
        self.in_chans = in_chans
        self.grad_checkpointing = False

        stem_stride = 1 if stem == "cifar" else 4
        stage_strides = [1] + [2] * (len(layers) - 1)
        native_stride = stem_stride * 2 ** (len(layers) - 1)
        allowed = (native_stride,) if stem == "cifar" else (8, 16, 32)
        output_stride = output_stride or native_stride
        if output_stride not in allowed:
            raise ValueError(f"output_stride {output_stride} is not possible: this model's features have stride "
                             f"{' or '.join(map(str, allowed))}")
        self.min_input_size = native_stride

        # stem: keys conv1 (conv or the deep Sequential), bn1
        if stem == "deep":
            half = stem_width // 2
            self.conv1: nn.Module = nn.Sequential(
                *conv_bn_relu(in_chans, half, 3, stride=2, norm_layer=norm_layer),
                *conv_bn_relu(half, half, 3, norm_layer=norm_layer),
                nn.Conv2d(half, stem_width, 3, padding=1, bias=False),
            )
        else:
            k = 3 if stem == "cifar" else 7
            self.conv1 = nn.Conv2d(in_chans, stem_width, k, stride=1 if stem == "cifar" else 2,
                                   padding=k // 2, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)

        info = FeatureInfo([{"num_chs": stem_width, "reduction": 1 if stem == "cifar" else 2, "module": "relu"}])
        total_blocks = sum(layers)
        block_idx = 0
        in_channels = stem_width
        reduction, dilation = stem_stride, 1
        stage_names: List[str] = []
        for i, (n_blocks, p, s) in enumerate(zip(layers, planes, stage_strides)):
            first_dilation = dilation
            if reduction * s > output_stride:
                dilation *= s
                s = 1
            reduction *= s
            out_channels = p * expansion
            downsample: Optional[nn.Module] = None
            if s != 1 or in_channels != out_channels:
                shortcut: List[nn.Module] = []
                if avg_down:
                    shortcut.append(nn.AvgPool2d(s, s, ceil_mode=True, count_include_pad=False) if s > 1
                                    else nn.Identity())
                shortcut += conv_bn_relu(in_channels, out_channels, 1, stride=1 if avg_down else s,
                                         norm_layer=norm_layer, relu=False)
                downsample = nn.Sequential(*shortcut)
            blocks: List[nn.Module] = []
            for j in range(n_blocks):
                blocks.append(Res2NetBlock(
                    in_channels if j == 0 else out_channels, p,
                    width=split_width(p, base_width, cardinality), scale=scale, cardinality=cardinality,
                    expansion=expansion, stride=s if j == 0 else 1,
                    dilation=first_dilation if j == 0 else dilation, stage_block=(j == 0),
                    downsample=downsample if j == 0 else None, se_reduction=se_reduction,
                    norm_layer=norm_layer, drop_path=drop_path_rate * block_idx / max(1, total_blocks - 1),
                ))
                block_idx += 1
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            stage_names.append(name)
            in_channels = out_channels
            info.append({"num_chs": out_channels, "reduction": reduction, "module": name})
        self.feature_info = info
        self.stem_names = ["conv1", "bn1"]
        self.stage_names = stage_names
        self.init_head(in_channels, num_classes, global_pool, drop_rate=drop_rate)
        init_weights(self, zero_init_last=zero_init_last)

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (layer-wise lr decay): the stem, then the stages (or their blocks)."""
        return {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}
