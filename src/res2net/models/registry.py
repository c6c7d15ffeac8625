"""The model zoo: every named model is one row of :data:`MODELS`; :func:`build_model` builds any of them (with fresh
weights; :func:`res2net.create_model` builds and loads)."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..layers import NormLayer
from .common import FeatureExtractor, count_params
from .dla import DLAArch
from .resnet import ResNetArch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
OFFICIAL_URL = "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/"
OFFICIAL_LICENSE = "cc-by-nc-sa-4.0"  # the official weights (and timm's copies of them): non-commercial
TIMM_PREFIX = "r2n_"  # timm's registry names of the zoo (res2net.timm_compat): timm owns some of ours
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

Arch = Union[ResNetArch, DLAArch]


@dataclass(frozen=True)
class ModelSpec:
    """One named model: its architecture (a typed record that builds the trunk) and its card (paper
    figures, weights, preprocessing)."""

    name: str
    arch: Arch
    description: str
    aliases: Tuple[str, ...] = ()
    timm_name: Optional[str] = None  # the same model in timm (test peer), if it has one
    num_classes: int = 1000
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    paper_top1_err: Optional[float] = None
    paper_top5_err: Optional[float] = None
    paper_params_m: Optional[float] = None
    paper_source: str = ""
    weights_file: Optional[str] = None  # official checkpoint file name; "-<sha256 prefix>" before ".pth"
    baseline: Optional[str] = None  # the same-budget ResNet to compare against
    tags: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> str:
        """``"resnet"`` or ``"dla"``: the trunk class that builds the model."""
        return self.arch.family

    @property
    def url(self) -> Optional[str]:
        return OFFICIAL_URL + self.weights_file if self.weights_file else None

    @property
    def sha256_prefix(self) -> Optional[str]:
        return self.weights_file.rsplit("-", 1)[1].split(".")[0] if self.weights_file else None

    @property
    def hf_hub_id(self) -> Optional[str]:
        """timm's copy of the official weights on the Hugging Face Hub (``timm/<timm name>.in1k``)."""
        return f"timm/{self.timm_name}.in1k" if self.weights_file and self.timm_name else None


# ---- row helpers: every argument by keyword, named as in the paper ------------------------------------------

def _imagenet(name: str, *, depth: int, base_width: int, scale: int, description: str, cardinality: int = 1,
              v1b: bool = False, se_reduction: int = 0, **card: Any) -> ModelSpec:
    """A 50/101/152-layer ImageNet model; ``v1b``: deep stem (3x3 convs 32-32-64) and average-pool
    shortcuts. ``card``: :class:`ModelSpec` fields."""
    arch = ResNetArch(layers=DEPTHS[depth], base_width=base_width, scale=scale, cardinality=cardinality,
                      stem="deep" if v1b else "default", avg_down=v1b, se_reduction=se_reduction)
    return ModelSpec(name=name, arch=arch, description=description, **card)


def _cifar29(name: str, *, cardinality: int, base_width: int, scale: int, description: str, se: bool = False,
             **card: Any) -> ModelSpec:
    """A CIFAR-100 Res2NeXt-29 (paper Table 4): 3x3 stem of 64 channels, 3 stages x 3 blocks."""
    arch = ResNetArch(layers=(3, 3, 3), planes=(64, 128, 256), stem="cifar", stem_width=64,
                      cardinality=cardinality, base_width=base_width, scale=scale, se_reduction=16 if se else 0)
    return ModelSpec(name=name, arch=arch, description=description, num_classes=100, input_size=32,
                     crop_pct=1.0, mean=CIFAR100_MEAN, std=CIFAR100_STD, paper_source="paper Table 4", **card)


def _small(name: str, *, layers: Tuple[int, ...], planes: Tuple[int, ...], base_width: int, scale: int,
           stem_width: int, description: str, **card: Any) -> ModelSpec:
    """A trunk for 28-32 px images (3x3 stride-1 stem), 10 classes."""
    arch = ResNetArch(layers=layers, planes=planes, base_width=base_width, scale=scale, stem="cifar",
                      stem_width=stem_width)
    return ModelSpec(name=name, arch=arch, description=description, num_classes=10, input_size=32,
                     crop_pct=1.0, mean=(0.5,) * 3, std=(0.25,) * 3, tags=("small",), **card)


def _lite(name: str, *, base_width: int, scale: int, description: str, **card: Any) -> ModelSpec:
    """A 26-layer ImageNet-stem trunk at half the 50-layer widths: a CPU-sized backbone for the dense tasks
    (4 stages at strides 4-32, so FPN, DeepLab v3+ and DSS get the same C2-C5 maps as from a 50-layer one)."""
    arch = ResNetArch(layers=(2, 2, 2, 2), planes=(32, 64, 128, 256), base_width=base_width, scale=scale,
                      stem_width=32)
    return ModelSpec(name=name, arch=arch, description=description, input_size=128, crop_pct=1.0,
                     tags=("lite",), **card)


def _dla60(name: str, *, base_width: int, scale: int, cardinality: int, description: str,
           **card: Any) -> ModelSpec:
    """A DLA-60 trunk (block expansion 2)."""
    arch = DLAArch(base_width=base_width, scale=scale, cardinality=cardinality)
    return ModelSpec(name=name, arch=arch, description=description, **card)


T1 = "paper Table 1"
README = "official README"
MODELS: List[ModelSpec] = [
    # --- Res2Net-50 scale/width settings (paper Tables 1, 3; official weights) ---------------------------
    _imagenet("res2net50_26w_4s", depth=50, base_width=26, scale=4, description="Res2Net-50, 26w x 4s",
              timm_name="res2net50_26w_4s", paper_top1_err=22.01, paper_top5_err=6.15, paper_params_m=25.70,
              paper_source=T1, weights_file="res2net50_26w_4s-06e79181.pth", baseline="resnet50"),
    _imagenet("res2net50_48w_2s", depth=50, base_width=48, scale=2, description="Res2Net-50, 48w x 2s",
              timm_name="res2net50_48w_2s", paper_top1_err=22.68, paper_top5_err=6.47, paper_params_m=25.29,
              paper_source="paper Table 3", weights_file="res2net50_48w_2s-afed724a.pth", baseline="resnet50"),
    _imagenet("res2net50_14w_8s", depth=50, base_width=14, scale=8, description="Res2Net-50, 14w x 8s",
              timm_name="res2net50_14w_8s", paper_top1_err=21.86, paper_top5_err=6.14, paper_params_m=25.06,
              paper_source="paper Table 3", weights_file="res2net50_14w_8s-6527dddc.pth", baseline="resnet50"),
    _imagenet("res2net50_26w_6s", depth=50, base_width=26, scale=6, description="Res2Net-50, 26w x 6s",
              timm_name="res2net50_26w_6s", paper_top1_err=21.42, paper_top5_err=5.87, paper_params_m=37.05,
              paper_source="paper Table 3", weights_file="res2net50_26w_6s-19041792.pth", baseline="resnet50"),
    _imagenet("res2net50_26w_8s", depth=50, base_width=26, scale=8, description="Res2Net-50, 26w x 8s",
              timm_name="res2net50_26w_8s", paper_top1_err=20.80, paper_top5_err=5.63, paper_params_m=48.40,
              paper_source="paper Table 3", weights_file="res2net50_26w_8s-2c7c9f12.pth", baseline="resnet50"),
    _imagenet("res2net50_18w_4s", depth=50, base_width=18, scale=4,
              description="Res2Net-50-L (low complexity, paper Table 3), 18w x 4s", paper_top1_err=22.92,
              paper_top5_err=6.67, paper_source="paper Table 3", baseline="resnet50"),
    _imagenet("res2net50_26w_4s_299", depth=50, base_width=26, scale=4,
              description="Res2Net-50 26w x 4s at 299x299 input (paper Table 1 setting)", input_size=299,
              crop_pct=299 / 333, baseline="resnet50"),
    _imagenet("se_res2net50_26w_4s", depth=50, base_width=26, scale=4,
              description="SE-Res2Net-50, 26w x 4s (paper Table 1)", se_reduction=16, paper_top1_err=21.56,
              paper_top5_err=5.94, paper_source=T1, baseline="se_resnet50"),
    _imagenet("res2net101_26w_4s", depth=101, base_width=26, scale=4, description="Res2Net-101, 26w x 4s",
              timm_name="res2net101_26w_4s", paper_top1_err=20.81, paper_top5_err=5.57, paper_params_m=45.21,
              paper_source="paper Table 2", weights_file="res2net101_26w_4s-02a759a1.pth", baseline="resnet101"),
    _imagenet("res2net152_26w_4s", depth=152, base_width=26, scale=4, description="Res2Net-152, 26w x 4s",
              baseline="resnet152"),
    _imagenet("res2next50", depth=50, base_width=4, scale=4, description="Res2NeXt-50, 4w x 8c x 4s", cardinality=8,
              timm_name="res2next50", paper_top1_err=21.76, paper_top5_err=6.09, paper_params_m=24.67,
              paper_source=T1, weights_file="res2next50_4s-6ef7e7bf.pth", baseline="resnext50_32x4d"),
    # --- v1b (deep stem, average-pool shortcut; official README) ---------------------------------------
    _imagenet("res2net50_v1b_26w_4s", depth=50, base_width=26, scale=4, description="Res2Net-50 v1b, 26w x 4s",
              v1b=True, aliases=("res2net50d",), timm_name="res2net50d", paper_top1_err=19.73, paper_top5_err=4.96,
              paper_params_m=25.72, paper_source=README, weights_file="res2net50_v1b_26w_4s-3cf99910.pth",
              baseline="resnet50"),
    _imagenet("res2net101_v1b_26w_4s", depth=101, base_width=26, scale=4, description="Res2Net-101 v1b, 26w x 4s",
              v1b=True, aliases=("res2net101d",), timm_name="res2net101d", paper_top1_err=18.77,
              paper_top5_err=4.64, paper_params_m=45.23, paper_source=README,
              weights_file="res2net101_v1b_26w_4s-0812c246.pth", baseline="resnet101"),
    _imagenet("res2net152_v1b_26w_4s", depth=152, base_width=26, scale=4, description="Res2Net-152 v1b, 26w x 4s",
              v1b=True, baseline="resnet152"),
    # --- DLA (paper Table 1; official weights) ----------------------------------------------------------
    _dla60("res2net_dla60", base_width=28, scale=4, cardinality=1, description="Res2Net-DLA-60",
           aliases=("dla60_res2net",), timm_name="dla60_res2net", paper_top1_err=21.53, paper_top5_err=5.80,
           paper_params_m=21.15, paper_source=T1, weights_file="res2net_dla60_4s-d88db7f9.pth", baseline="dla60"),
    _dla60("res2next_dla60", base_width=4, scale=4, cardinality=8, description="Res2NeXt-DLA-60",
           aliases=("dla60_res2next",), timm_name="dla60_res2next", paper_top1_err=21.55, paper_top5_err=5.86,
           paper_params_m=17.33, paper_source=T1, weights_file="res2next_dla60_4s-d327927b.pth", baseline="dla60x"),
    # --- CIFAR-100 Res2NeXt-29 family (paper Table 4) ---------------------------------------------------
    _cifar29("resnext29_8x64d", cardinality=8, base_width=64, scale=1,
             description="ResNeXt-29, 8c x 64w (baseline)", paper_params_m=34.4),
    _cifar29("resnext29_16x64d", cardinality=16, base_width=64, scale=1,
             description="ResNeXt-29, 16c x 64w (baseline)", paper_params_m=68.1),
    _cifar29("res2next29_6cx24wx4s", cardinality=6, base_width=24, scale=4,
             description="Res2NeXt-29, 6c x 24w x 4s", paper_params_m=24.3, baseline="resnext29_8x64d"),
    _cifar29("res2next29_8cx25wx4s", cardinality=8, base_width=25, scale=4,
             description="Res2NeXt-29, 8c x 25w x 4s", paper_params_m=33.8, baseline="resnext29_8x64d"),
    _cifar29("res2next29_6cx24wx6s", cardinality=6, base_width=24, scale=6,
             description="Res2NeXt-29, 6c x 24w x 6s", paper_params_m=36.7, baseline="resnext29_8x64d"),
    _cifar29("se_res2next29_6cx24wx4s", cardinality=6, base_width=24, scale=4,
             description="SE-Res2NeXt-29, 6c x 24w x 4s", se=True, paper_params_m=26.0, baseline="resnext29_8x64d"),
    _cifar29("se_res2next29_8cx25wx4s", cardinality=8, base_width=25, scale=4,
             description="SE-Res2NeXt-29, 8c x 25w x 4s", se=True, paper_params_m=34.0, baseline="resnext29_8x64d"),
    _cifar29("se_res2next29_6cx24wx6s", cardinality=6, base_width=24, scale=6,
             description="SE-Res2NeXt-29, 6c x 24w x 6s", se=True, paper_params_m=36.9, baseline="resnext29_8x64d"),
    # --- baselines from the same block with scale 1 (paper Tables 1-2) ----------------------------------
    _imagenet("resnet50", depth=50, base_width=64, scale=1, description="ResNet-50 (baseline)",
              timm_name="resnet50", paper_top1_err=23.85, paper_top5_err=7.13, paper_source=T1),
    _imagenet("resnet101", depth=101, base_width=64, scale=1, description="ResNet-101 (baseline)",
              timm_name="resnet101", paper_top1_err=22.63, paper_top5_err=6.44, paper_source="paper Table 2"),
    _imagenet("resnet152", depth=152, base_width=64, scale=1, description="ResNet-152 (baseline)",
              timm_name="resnet152"),
    _imagenet("resnext50_32x4d", depth=50, base_width=4, scale=1, description="ResNeXt-50, 32x4d (baseline)",
              cardinality=32, timm_name="resnext50_32x4d", paper_top1_err=22.61, paper_top5_err=6.50,
              paper_source=T1),
    _imagenet("se_resnet50", depth=50, base_width=64, scale=1, description="SE-ResNet-50 (baseline)",
              se_reduction=16, aliases=("seresnet50",), timm_name="seresnet50", paper_top1_err=23.24,
              paper_top5_err=6.69, paper_source=T1),
    _dla60("dla60", base_width=64, scale=1, cardinality=1, description="DLA-60 (baseline)", timm_name="dla60",
           paper_top1_err=23.32, paper_top5_err=6.60, paper_source=T1),
    _dla60("dla60x", base_width=4, scale=1, cardinality=32, description="DLA-X-60 (baseline)", timm_name="dla60x",
           paper_top1_err=22.19, paper_top5_err=6.13, paper_source=T1),
    # --- small models for 28-32 px images and CPU experiments (no anchor has these) ---------------------
    # Each Res2Net is paired with the same trunk at scale 1 whose width gives the same parameter budget.
    _small("res2net20_cifar", layers=(2, 2, 2), planes=(16, 32, 64), base_width=64, scale=4, stem_width=32,
           description="Res2Net, ResNet-20-style CIFAR trunk", baseline="resnet20_cifar"),
    _small("resnet20_cifar", layers=(2, 2, 2), planes=(16, 32, 64), base_width=136, scale=1, stem_width=32,
           description="same-budget ResNet for res2net20_cifar"),
    _small("res2net56_cifar", layers=(6, 6, 6), planes=(16, 32, 64), base_width=64, scale=4, stem_width=32,
           description="Res2Net, ResNet-56-style CIFAR trunk", baseline="resnet56_cifar"),
    _small("resnet56_cifar", layers=(6, 6, 6), planes=(16, 32, 64), base_width=138, scale=1, stem_width=32,
           description="same-budget ResNet for res2net56_cifar"),
    _small("res2net18_small", layers=(2, 2, 2, 2), planes=(64, 128, 256, 512), base_width=21, scale=4,
           stem_width=64, description="Res2Net with ResNet-18's stage layout, small-image stem",
           baseline="resnet18_small"),
    _small("resnet18_small", layers=(2, 2, 2, 2), planes=(64, 128, 256, 512), base_width=53, scale=1, stem_width=64,
           description="same-budget ResNet for res2net18_small"),
    _small("res2net34_small", layers=(3, 4, 6, 3), planes=(64, 128, 256, 512), base_width=24, scale=4,
           stem_width=64, description="Res2Net with ResNet-34's stage layout, small-image stem",
           baseline="resnet34_small"),
    _small("resnet34_small", layers=(3, 4, 6, 3), planes=(64, 128, 256, 512), base_width=60, scale=1, stem_width=64,
           description="same-budget ResNet for res2net34_small"),
    # the Fashion-MNIST CPU default (docs/TRAINING.md): 16/32/64-wide splits, 1-2-2 blocks, slim 1x1 convs
    _small("res2net17_slim", layers=(1, 2, 2), planes=(8, 16, 32), base_width=128, scale=4, stem_width=16,
           description="slim Res2Net for 28 px CPU training (16w x 4s splits)", baseline="resnet17_slim"),
    _small("resnet17_slim", layers=(1, 2, 2), planes=(8, 16, 32), base_width=250, scale=1, stem_width=16,
           description="same-budget ResNet for res2net17_slim"),
    # CPU-sized dense-task backbones (docs/DENSE.md): Res2Net-50's 26w x 4s proportions, 2 blocks per stage
    _lite("res2net26_lite", base_width=26, scale=4,
          description="half-width 26-layer Res2Net (26w x 4s), backbone for CPU dense tasks",
          baseline="resnet26_lite"),
    _lite("resnet26_lite", base_width=64, scale=1, description="same-budget ResNet for res2net26_lite"),
    _small("res2net17_cifar", layers=(1, 2, 2), planes=(16, 32, 64), base_width=64, scale=4, stem_width=16,
           description="Res2Net with 1-2-2 blocks and CIFAR widths (16w x 4s splits)", baseline="resnet17_cifar"),
    _small("resnet17_cifar", layers=(1, 2, 2), planes=(16, 32, 64), base_width=136, scale=1, stem_width=16,
           description="same-budget ResNet for res2net17_cifar"),
]

_BY_NAME: Dict[str, ModelSpec] = {}
for _spec in MODELS:
    for _key in (_spec.name,) + _spec.aliases:
        if _key in _BY_NAME:
            raise RuntimeError(f"duplicate model name {_key!r} in the registry")
        _BY_NAME[_key] = _spec


class UnknownModelError(KeyError, ValueError):
    """Raised for a model name that is not in the registry; the message lists close matches."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_spec(name: str) -> ModelSpec:
    """The registry row of ``name`` (or of an alias).

    Args:
        name: a model name of :func:`list_models`, or an alias.

    Returns:
        Its :class:`ModelSpec`; an unknown name raises :class:`~res2net.errors.UnknownModelError` with the
        closest names.
    """
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, list(_BY_NAME), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see `res2net models` for the list"
    raise UnknownModelError(f"unknown model {name!r}{hint}")


def list_models(pattern: str = "*") -> List[str]:
    """Names (not aliases) of the registered models matching a shell-style pattern, in registry order.

    Args:
        pattern: a shell-style pattern (``"res2net50*"``), matched against names and aliases.

    Returns:
        The matching names.
    """
    return [s.name for s in MODELS if fnmatch.fnmatch(s.name, pattern) or
            any(fnmatch.fnmatch(a, pattern) for a in s.aliases)]


def build_model(
    name: str,
    num_classes: Optional[int] = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    output_stride: Optional[int] = None,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    norm_layer: Optional[NormLayer] = None,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
    grad_checkpointing: bool = False,
    zero_init_last: bool = False,
    global_pool: str = "avg",
) -> nn.Module:
    """Build a named model with fresh weights (:func:`res2net.create_model` builds with this and loads
    ``pretrained`` weights). The model knows its name: ``pretrained_cfg["architecture"]`` (:func:`model_name`).

    Args:
        name: a name of :func:`list_models` or an alias (timm's names are accepted where timm has the model).
        num_classes: classifier outputs (default: the model card's); 0 removes the classifier.
        features_only: return a :class:`~res2net.models.common.FeatureExtractor` whose forward gives the maps
            C1..C5 selected by ``out_indices`` (default all); see its ``feature_info``.
        output_stride: 32, 16 or 8 (dilated later stages) for ImageNet trunks; None keeps the native stride.
        frozen_stages, norm_eval: mmdetection semantics (see :meth:`BackboneMixin.configure_backbone`).
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
        drop_rate: dropout before the classifier, in training (timm's ``drop_rate``).
        grad_checkpointing: recompute block activations in backward to save memory.
        global_pool: ``"avg"`` (default), ``"max"`` or ``""`` (no pooling: the classifier then gives logits at
            every position, (N, classes, H, W)).

    Returns:
        The model (or its ``FeatureExtractor``), carrying ``pretrained_cfg`` (= ``default_cfg``): its name
        (``architecture``) and the card's preprocessing in timm's format (``input_size`` as ``(C, H, W)``, see
        :func:`pretrained_cfg`).

    >>> build_model("res2net50_26w_4s", num_classes=10)(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    >>> build_model("res2net50_26w_4s", features_only=True, out_indices=(2, 4)).feature_info.channels()
    [512, 2048]
    """
    spec = get_spec(name)
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    n_cls = spec.num_classes if num_classes is None else num_classes
    if not isinstance(n_cls, int) or n_cls < 0:
        raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    model = spec.arch.build(num_classes=n_cls, in_chans=in_chans, output_stride=output_stride,
                            drop_path_rate=drop_path_rate, drop_rate=drop_rate, norm_layer=norm_layer,
                            zero_init_last=zero_init_last, global_pool=global_pool)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(spec.name, in_chans=in_chans, num_classes=n_cls)
    result: nn.Module = FeatureExtractor(model, out_indices) if features_only else model
    result.configure_backbone(frozen_stages=frozen_stages, norm_eval=norm_eval)  # type: ignore[operator]
    result.set_grad_checkpointing(grad_checkpointing)  # type: ignore[operator]
    return result


def model_name(model: nn.Module) -> Optional[str]:
    """The zoo name a model was built as, read from the model as timm does (``pretrained_cfg["architecture"]``;
    a model made through timm's registry carries timm's ``r2n_`` name, which is mapped back).

    Args:
        model: a model of :func:`build_model` (or its ``FeatureExtractor``), or any module.

    Returns:
        The registry name, or None when the model does not say one the registry knows.
    """
    return zoo_name((getattr(model, "pretrained_cfg", None) or {}).get("architecture"))


def zoo_name(architecture: Any) -> Optional[str]:
    """The registry name of an architecture name: ours, an alias (timm's names of the models timm has), or our
    timm registry name (``r2n_`` + ours).

    Args:
        architecture: e.g. a ``config.json``'s ``architecture``.

    Returns:
        The registry name, or None when the registry does not know it.
    """
    if not isinstance(architecture, str):
        return None
    for candidate in (architecture, architecture[len(TIMM_PREFIX):] if architecture.startswith(TIMM_PREFIX) else ""):
        if candidate in _BY_NAME:
            return _BY_NAME[candidate].name
    return None


def pretrained_cfg(name: str, in_chans: int = 3, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """The model card in timm's ``pretrained_cfg`` format: ``input_size`` as ``(C, H, W)``, ``pool_size``
    (the last map at that size), ``first_conv``, ``classifier``, preprocessing, and the weights' ``url`` /
    ``hf_hub_id`` / ``license`` where published. ``in_chans`` other than the card's 3 averages mean/std.

    >>> cfg = pretrained_cfg("res2net17_slim")
    >>> cfg["input_size"], cfg["pool_size"], cfg["first_conv"]
    ((3, 32, 32), (8, 8), 'conv1')
    """
    spec = get_spec(name)
    mean, std = spec.mean, spec.std
    if in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    pool = -(-spec.input_size // spec.arch.total_stride)
    published = spec.weights_file is not None
    return {
        "architecture": spec.name,
        "url": spec.url or "",
        "hf_hub_id": spec.hf_hub_id,
        "license": OFFICIAL_LICENSE if published else None,
        "num_classes": spec.num_classes if num_classes is None else num_classes,
        "input_size": (in_chans, spec.input_size, spec.input_size),
        "pool_size": (pool, pool),
        "crop_pct": spec.crop_pct,
        "interpolation": spec.interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "first_conv": spec.arch.first_conv,
        "classifier": "fc",
        "description": spec.description,
        "paper_name": "Res2Net: A New Multi-scale Backbone Architecture",
        "paper_ids": "arXiv:1904.01169",
        "origin_url": "https://github.com/Res2Net/Res2Net-PretrainedModels" if published else None,
    }


def count_macs(model: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward at ``input_size``: torch's FlopCounterMode total / 2 (the paper's
    convention). Runs on the meta device when the model is there, so it is instant for any size.

    Args:
        model: the model (its training/eval mode is restored afterwards).
        input_size: the side of the square input.
        in_chans: the input's channels.

    Returns:
        The MAC count of one image.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


_COMPLEXITY_CACHE: Dict[str, Tuple[int, int]] = {}


def model_complexity(name: str, input_size: Optional[int] = None) -> Tuple[int, int]:
    """(params, MACs) of a named model with its card's classes, at its card's (or the given) input size."""
    spec = get_spec(name)
    size = input_size or spec.input_size
    key = f"{spec.name}@{size}"
    if key not in _COMPLEXITY_CACHE:
        with torch.device("meta"):
            model = build_model(spec.name)
        _COMPLEXITY_CACHE[key] = (count_params(model), count_macs(model, size))
    return _COMPLEXITY_CACHE[key]


def model_card(name: str, with_complexity: bool = True) -> Dict[str, Any]:
    """Everything known about a model: architecture, paper errors, params/MACs, preprocessing, weights.

    Args:
        name: a model name or alias.
        with_complexity: also count parameters and MACs (built on the meta device: instant).

    Returns:
        The card as a plain dict (``res2net info NAME`` prints it).
    """
    spec = get_spec(name)
    card = asdict(spec)
    card.update(family=spec.family, url=spec.url, sha256_prefix=spec.sha256_prefix, hf_hub_id=spec.hf_hub_id)
    if with_complexity:
        params, macs = model_complexity(spec.name)
        card.update(params=params, macs=macs)
    return card
