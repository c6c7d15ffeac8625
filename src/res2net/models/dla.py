"""Deep Layer Aggregation trunk (Yu et al.) built from :class:`Res2NetBlock` (expansion 2): Res2Net-DLA,
Res2NeXt-DLA and the DLA-60 / DLA-X-60 baselines (``scale=1``). Key layout equals the official checkpoints'
(``base_layer, level0..5`` with ``tree1/tree2/root/project``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers import NormLayer, Res2NetBlock, conv_bn_relu, init_weights, split_width
from .common import FeatureInfo, Trunk, UnusedWeights, check_block_args


@dataclass(frozen=True)
class DLAArch:
    """The architecture of one DLA-trunk model of the zoo: the arguments of :class:`DLA` that a registry row
    fixes (DLA-60's levels and channels by default).

    >>> DLAArch(base_width=28, scale=4).build(num_classes=0).num_features
    1024
    """

    family: ClassVar[str] = "dla"
    total_stride: ClassVar[int] = 32
    first_conv: ClassVar[str] = "base_layer.0"

    levels: Tuple[int, ...] = (1, 1, 1, 2, 3, 1)
    channels: Tuple[int, ...] = (16, 32, 128, 256, 512, 1024)
    base_width: int = 28
    scale: int = 4
    cardinality: int = 1
    se_reduction: int = 0

    def build(self, **kwargs: Any) -> "DLA":
        """The trunk; ``kwargs`` are the per-instance arguments of :class:`DLA` (classes, channels...)."""
        return DLA(**asdict(self), **kwargs)


class Root(nn.Module):
    """Aggregation node: concat children -> 1x1 conv -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, children: List[Tensor]) -> Tensor:
        return self.relu(self.bn(self.conv(torch.cat(children, 1))))


class Tree(nn.Module):
    """A DLA aggregation tree of ``2 ** levels`` blocks.

    The official trees with ``levels > 1`` hold a ``project`` shortcut that their forward never uses (the
    sub-tree computes its own); ``keep_unused_project`` keeps its tensors as :class:`UnusedWeights` buffers
    (same state_dict keys, no parameters), so the official checkpoints load strictly, the parameter count
    matches the official one and every parameter of the model receives a gradient.
    """

    def __init__(self, levels: int, block_args: Dict[str, Any], in_channels: int, out_channels: int,
                 stride: int = 1, level_root: bool = False, root_dim: int = 0,
                 norm_layer: Optional[NormLayer] = None, drop_path: Sequence[float] = (0.0,),
                 keep_unused_project: bool = True) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        self.levels = levels
        self.level_root = level_root
        half = len(drop_path) // 2
        if levels == 1:
            self.tree1: nn.Module = make_dla_block(block_args, in_channels, out_channels, stride, norm_layer,
                                                   drop_path[0])
            self.tree2: nn.Module = make_dla_block(block_args, out_channels, out_channels, 1, norm_layer,
                                                   drop_path[-1])
            self.root: Optional[Root] = Root(root_dim, out_channels, norm_layer)
        else:
            self.tree1 = Tree(levels - 1, block_args, in_channels, out_channels, stride, root_dim=0,
                              norm_layer=norm_layer, drop_path=drop_path[:half],
                              keep_unused_project=keep_unused_project)
            self.tree2 = Tree(levels - 1, block_args, out_channels, out_channels, root_dim=root_dim + out_channels,
                              norm_layer=norm_layer, drop_path=drop_path[half:],
                              keep_unused_project=keep_unused_project)
            self.root = None
        self.downsample: Optional[nn.Module] = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
        self.project: Optional[nn.Module] = None
        if in_channels != out_channels and (levels == 1 or keep_unused_project):
            project = nn.Sequential(*conv_bn_relu(in_channels, out_channels, 1, norm_layer=norm_layer, relu=False))
            self.project = project if levels == 1 else UnusedWeights(project)

    def forward(self, x: Tensor, children: Optional[List[Tensor]] = None) -> Tensor:
        kids: List[Tensor] = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        if self.level_root:
            kids.append(bottom)
        if self.root is not None:  # levels == 1: two blocks and the aggregation node
            shortcut = self.project(bottom) if self.project is not None else bottom
            x1 = self.tree1(x, shortcut)
            x2 = self.tree2(x1)
            return self.root([x2, x1] + kids)
        x1 = self.tree1(x)
        kids.append(x1)
        return self.tree2(x1, kids)


def make_dla_block(block_args: Dict[str, Any], in_channels: int, out_channels: int, stride: int,
                   norm_layer: NormLayer, drop_path: float) -> Res2NetBlock:
    """A DLA block: the Res2Net block with expansion 2; the stage-block behaviour where it strides."""
    planes = out_channels // 2
    return Res2NetBlock(
        in_channels, planes, width=split_width(planes, block_args["base_width"], block_args["cardinality"]),
        scale=block_args["scale"], cardinality=block_args["cardinality"], expansion=2, stride=stride,
        stage_block=stride > 1, se_reduction=block_args.get("se_reduction", 0), norm_layer=norm_layer,
        drop_path=drop_path,
    )


class DLA(Trunk):
    """DLA trunk: ``base_layer``, conv levels 0-1, aggregation trees 2-5, global pool, 1x1-conv ``fc``.
    The maps C1..C5 are the outputs of ``level1``..``level5`` (strides 2..32).

    >>> m = DLA(scale=4, base_width=28, num_classes=10)
    >>> [tuple(f.shape[1:]) for f in m.forward_stages(torch.randn(1, 3, 64, 64))]
    [(32, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1024, 2, 2)]
    """

    def __init__(
        self,
        levels: Sequence[int] = (1, 1, 1, 2, 3, 1),
        channels: Sequence[int] = (16, 32, 128, 256, 512, 1024),
        *,
        scale: int = 4,
        base_width: int = 28,
        cardinality: int = 1,
        se_reduction: int = 0,
        num_classes: int = 1000,
        in_chans: int = 3,
        output_stride: Optional[int] = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        norm_layer: Optional[NormLayer] = None,
        zero_init_last: bool = False,
        keep_unused_project: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if len(levels) != 6 or len(channels) != 6:
            raise ValueError(f"levels and channels must have 6 entries, got {tuple(levels)}, {tuple(channels)}")
        if output_stride not in (None, 32):
            raise ValueError(f"output_stride must be one of (32,) for DLA models, got {output_stride}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        check_block_args(scale, base_width, cardinality, min(channels[2:]) // 2)
        norm_layer = norm_layer or nn.BatchNorm2d
        self.in_chans = in_chans
        self.min_input_size = 32
        self.grad_checkpointing = False
        block_args = dict(scale=scale, base_width=base_width, cardinality=cardinality, se_reduction=se_reduction)
        self.base_layer = nn.Sequential(*conv_bn_relu(in_chans, channels[0], 7, norm_layer=norm_layer))
        self.level0 = nn.Sequential(*conv_bn_relu(channels[0], channels[0], 3, norm_layer=norm_layer))
        self.level1 = nn.Sequential(*conv_bn_relu(channels[0], channels[1], 3, stride=2, norm_layer=norm_layer))
        n_blocks = [2 ** lv for lv in levels[2:]]
        rates = [drop_path_rate * i / max(1, sum(n_blocks) - 1) for i in range(sum(n_blocks))]
        start = 0
        for i in range(2, 6):
            n = n_blocks[i - 2]
            self.add_module(f"level{i}", Tree(
                levels[i], block_args, channels[i - 1], channels[i], 2, level_root=i > 2, norm_layer=norm_layer,
                drop_path=rates[start:start + n], keep_unused_project=keep_unused_project))
            start += n
        self.feature_info = FeatureInfo(
            {"num_chs": channels[i], "reduction": 2 ** i, "module": f"level{i}"} for i in range(1, 6))
        self.stem_names = ["base_layer", "level0"]
        self.stage_names = [f"level{i}" for i in range(1, 6)]
        self.init_head(channels[-1], num_classes, global_pool, conv_classifier=True, drop_rate=drop_rate)
        init_weights(self, zero_init_last=zero_init_last)

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (layer-wise lr decay): the stem, then the levels (or their trees)."""
        return {"stem": r"^base_layer|^level0\.",
                "blocks": r"^level(\d+)" if coarse else [(r"^level(\d+)\.tree(\d+)", None),
                                                        (r"^level(\d+)\.root", (2,)), (r"^level(\d+)", (1,))]}
