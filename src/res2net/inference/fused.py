"""The eager inference fast path (``optimize(backend="eager")``, :func:`fuse`): any zoo model as an eval-only
module computing the same function, faster.

What it does, in order:

1. copies the model and puts it in eval mode (the argument is never modified);
2. replaces every :class:`~res2net.layers.Res2NetBlock` by a :class:`FusedRes2NetBlock`: BatchNorm folded
   into each convolution, the stage block's independent 3x3 convolutions *and* its average-pooled last split
   run as ONE grouped convolution (the ``AvgPool2d(3, s, 1)`` with ``count_include_pad=True`` is exactly a
   depthwise 3x3 convolution of weight 1/9, and its input is already >= 0 so the shared ReLU is exact), and the
   hierarchical splits of the other blocks write their outputs back into the 1x1 conv's output buffer, so there
   is no ``torch.cat`` copy;
3. folds every other Conv2d -> BatchNorm2d pair (stems, shortcuts, DLA roots and projections);
4. converts weights to channels_last (and to bfloat16 on request; BN is folded in float32 first);
5. on the CPU, reorders each convolution's weight into oneDNN's blocked layout once per input shape
   (:class:`PackedConv2d`) instead of on every call;
6. optionally wraps the trunk in ``torch.compile``.

The returned :class:`~res2net.inference.base.OptimizedModel` takes the same float32 input and returns float32
output (a tensor, or a list for ``features_only`` models). It runs under ``torch.no_grad`` and must not be trained.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..hardware import check_dtype
from ..layers import Res2NetBlock
from .base import OptimizedModel

__all__ = ["FusedRes2NetBlock", "PackedConv2d", "fold_bn", "fuse", "pack_convolutions"]


def fold_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to ``bn(conv(x))`` for a BatchNorm2d in eval mode (running statistics)."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or bn.running_mean is None:
        raise TypeError(f"fold_bn needs a BatchNorm2d with running statistics, got {type(bn).__name__}")
    with torch.no_grad():
        w = conv.weight.float()
        inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(inv_std)
        scale = gamma * inv_std
        bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                          padding_mode=conv.padding_mode, device=conv.weight.device)
        fused.weight.copy_(w * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(beta + (bias - bn.running_mean.float()) * scale)
    return fused


def _is_foldable(bn: Optional[nn.Module]) -> bool:
    return isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None


def _avgpool_as_conv_weight(width: int, cardinality: int, device: torch.device) -> Tensor:
    """Weight of the grouped 3x3 convolution equal to ``AvgPool2d(3, padding=1)`` (count_include_pad) over
    ``width`` channels split into ``cardinality`` groups."""
    per_group = width // cardinality
    eye = torch.eye(per_group, device=device).repeat(cardinality, 1)  # (width, per_group)
    return (eye / 9.0)[:, :, None, None].expand(width, per_group, 3, 3).contiguous()


_ONEDNN = torch.backends.mkldnn.is_available()
# oneDNN reorders bf16 weights only with AVX512BW/VL/DQ (or AVX-NE-CONVERT); below that, bf16 takes the plain
# convolution (correct, emulated, slow: :func:`res2net.hardware.check_dtype` warns)
_ONEDNN_BF16 = _ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedConv2d(nn.Conv2d):
    """A Conv2d of the eager fast path whose weight is reordered into oneDNN's blocked layout once per input shape
    and dtype (kept for the last :attr:`MAX_SHAPES` shapes) instead of on every call, as PyTorch's eager
    convolution does (measured: docs/BENCHMARKS.md, "What closed most of the eager gap earlier: packed weights").
    Same parameters, same outputs; falls back to the ordinary convolution off the CPU, without oneDNN, under
    ``torch.compile`` (inductor packs weights itself), for inputs of another dtype and for bf16 where oneDNN has
    no bf16 reorder (CPUs below AVX-512)."""

    MAX_SHAPES = 4

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                         bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        self._packed: "OrderedDict[tuple, Tensor]" = OrderedDict()
        self._geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)  # the op's args

    def _packable(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == self.weight.dtype
                and (x.dtype == torch.float32 or x.dtype == torch.bfloat16 and _ONEDNN_BF16)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str) and _ONEDNN)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or not self._packable(x):
            return super().forward(x)
        key = (tuple(x.shape), x.dtype, self.weight.data_ptr(), self.weight._version)
        packed = self._packed.get(key)
        if packed is None:
            packed = torch.ops.mkldnn._reorder_convolution_weight(self.weight, *self._geometry, list(x.shape))
            if len(self._packed) >= self.MAX_SHAPES:
                self._packed.popitem(last=False)
            self._packed[key] = packed
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, *self._geometry, "none", [], "")

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = OrderedDict()  # derived from the weight; rebuilt on the first call
        return state


def pack_convolutions(module: nn.Module) -> nn.Module:
    """Replace every Conv2d below ``module`` by a :class:`PackedConv2d` sharing its parameters (in place)."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            setattr(module, name, PackedConv2d(child))
        else:
            pack_convolutions(child)
    return module


class FusedRes2NetBlock(nn.Module):
    """Inference form of a :class:`~res2net.layers.Res2NetBlock` (BN folded, see the module docstring)."""

    def __init__(self, block: Res2NetBlock) -> None:
        super().__init__()
        if block.training:
            raise ValueError("FusedRes2NetBlock needs a block in eval mode (call .eval() first)")
        self.width = block.width
        self.scale = block.scale
        self.conv1 = fold_bn(block.conv1, block.bn1)
        self.conv3 = fold_bn(block.conv3, block.bn3)
        self.se = block.se
        self.downsample = _fold_tree(block.downsample) if block.downsample is not None else None
        folded = [fold_bn(c, b) for c, b in zip(block.convs, block.bns)]
        first = folded[0]
        pool = block.pool
        # mode 0: scale 1 / hierarchical splits; 1: stage block as one grouped conv; 2: stage block, conv + pool
        self.mode = 0
        self.pool: Optional[nn.Module] = None
        if block.stage_block and block.scale > 1:
            groups = first.groups
            with_pool = pool is not None and first.dilation == (1, 1) and first.padding == (1, 1)
            n_out = self.width * (block.scale if with_pool else block.scale - 1)
            grouped = nn.Conv2d(n_out, n_out, 3, stride=first.stride, padding=first.padding,
                                dilation=first.dilation, groups=groups * (n_out // self.width), bias=True,
                                device=first.weight.device)
            weights = [c.weight for c in folded]
            biases = [c.bias for c in folded]
            if with_pool:
                weights.append(_avgpool_as_conv_weight(self.width, groups, first.weight.device))
                biases.append(torch.zeros(self.width, device=first.weight.device))
            with torch.no_grad():
                grouped.weight.copy_(torch.cat(weights, 0))
                grouped.bias.copy_(torch.cat(biases, 0))  # type: ignore[arg-type]
            self.convs = nn.ModuleList([grouped])
            self.mode = 1 if with_pool else 2
            self.pool = None if with_pool else pool
        else:
            self.convs = nn.ModuleList(folded)

    def forward(self, x: Tensor, shortcut: Optional[Tensor] = None) -> Tensor:
        if shortcut is None:
            shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu_(self.conv1(x))
        out = self.multi_scale(out)
        out = self.conv3(out)
        if self.se is not None:
            out = self.se(out)
        return torch.relu_(out.add_(shortcut))

    def multi_scale(self, out: Tensor) -> Tensor:
        """The split 3x3 convolutions, written back into ``out`` (no concatenation copy)."""
        if self.mode == 1 or self.scale == 1:
            return torch.relu_(self.convs[0](out))
        w = self.width
        if self.mode == 2:
            n = w * (self.scale - 1)
            y = torch.relu_(self.convs[0](out.narrow(1, 0, n)))
            last = out.narrow(1, n, w)
            return torch.cat([y, self.pool(last) if self.pool is not None else last], 1)
        if torch.compiler.is_compiling():
            return self._multi_scale_functional(out)
        sp = out.narrow(1, 0, w)
        for i, conv in enumerate(self.convs):
            if i > 0:
                sp = sp + out.narrow(1, i * w, w)
            dst = out.narrow(1, i * w, w)
            torch.clamp_min(conv(sp), 0.0, out=dst)  # y_i replaces x_i, which no later step reads
            sp = dst
        return out

    def _multi_scale_functional(self, out: Tensor) -> Tensor:
        """The same hierarchical splits with a concatenation, for torch.compile: dynamo cannot trace ``out=`` into
        a channel slice (a graph break in every block, and past dynamo's recompile limit the blocks ran
        uncompiled); inductor plans the concatenation's buffer itself."""
        w = self.width
        ys: List[Tensor] = []
        for i, conv in enumerate(self.convs):
            x_i = out.narrow(1, i * w, w)
            ys.append(torch.relu(conv(x_i if i == 0 else ys[-1] + x_i)))
        rest = out.narrow(1, len(self.convs) * w, out.shape[1] - len(self.convs) * w)
        return torch.cat(ys + [rest], 1)


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold each Conv2d -> BatchNorm2d pair of a Sequential in place (the norm becomes Identity)."""
    for i in range(len(seq) - 1):
        if isinstance(seq[i], nn.Conv2d) and _is_foldable(seq[i + 1]):
            seq[i] = fold_bn(seq[i], seq[i + 1])
            seq[i + 1] = nn.Identity()


def _fold_tree(module: nn.Module) -> nn.Module:
    """Fuse the blocks and fold the Conv2d/BatchNorm2d pairs of ``module`` (in place; returns it)."""
    if isinstance(module, Res2NetBlock):
        return FusedRes2NetBlock(module)
    for name, child in list(module.named_children()):
        setattr(module, name, _fold_tree(child))
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)
    for conv_name, bn_name in (("conv1", "bn1"), ("conv", "bn")):
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if isinstance(conv, nn.Sequential) and len(conv) and isinstance(conv[-1], nn.Conv2d) and _is_foldable(bn):
            conv[-1] = fold_bn(conv[-1], bn)
            setattr(module, bn_name, nn.Identity())
        elif isinstance(conv, nn.Conv2d) and _is_foldable(bn):
            setattr(module, conv_name, fold_bn(conv, bn))
            setattr(module, bn_name, nn.Identity())
    return module


def fuse(model: nn.Module, dtype: torch.dtype = torch.float32, compile: bool = False,
         channels_last: bool = True) -> OptimizedModel:
    """The eager fast path (see the module docstring): fused blocks, folded BN, channels_last, optional bf16.

    Args:
        model: any zoo model; it is copied, not modified.
        dtype: ``torch.float32`` or ``torch.bfloat16`` (BN is folded in float32 first).
        compile: wrap the fused trunk in ``torch.compile``.
        channels_last: NHWC weights and input.

    Returns:
        an eval-only :class:`~res2net.inference.base.OptimizedModel` with ``backend="eager"`` and ``dtype``
        ``torch.float32`` or ``torch.bfloat16``.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be a bool, got {compile!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, OptimizedModel):
        raise ConfigError("model is already optimized; pass the original model to optimize()")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if dtype == torch.bfloat16:
        check_dtype("bf16", device, "dtype")
    fused = _fold_tree(copy.deepcopy(model).eval())
    fused.requires_grad_(False)
    fused = fused.to(dtype=dtype)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        pack_convolutions(fused)
    trunk: nn.Module = torch.compile(fused) if compile else fused  # type: ignore[assignment]
    wrapper = OptimizedModel(trunk, "eager", "fp32" if dtype == torch.float32 else "bf16", cast_input=True,
                             channels_last=channels_last)
    for attr in ("feature_info", "default_cfg", "num_classes", "num_features", "out_indices"):
        if hasattr(model, attr):
            setattr(wrapper, attr, getattr(model, attr))
    return wrapper.eval()
