"""Behaviour shared by the trunks: input checks, frozen stages, norm_eval, grad checkpointing, features."""


from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


class BackboneMixin:
    """Mixed into a trunk that defines ``stem_modules()``, ``in_chans``, ``min_input_size`` and
    ``forward_stages()``, and calls :meth:`setup_stages` at the end of its ``__init__``."""

    frozen_stages = -1
    norm_eval = False

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for a wrong channel count or a spatial size too small for the network."""
        if x.dim() != 4:
            raise ValueError("expected an input of shape (N, C, H, W), got " + str(x.dim()) + " dimensions")
        if x.shape[1] != self.in_chans:
            raise ValueError("expected " + str(self.in_chans) + " input channels, got " + str(x.shape[1])
                             + " (create the model with in_chans=" + str(x.shape[1]) + ")")
        if x.shape[2] < self.min_input_size or x.shape[3] < self.min_input_size:
            raise ValueError("input of " + str(x.shape[2]) + "x" + str(x.shape[3]) + " is too small for this "
                             "network: it needs at least " + str(self.min_input_size) + "x"
                             + str(self.min_input_size) + " pixels (its total stride)")

    def setup_stages(self, names: List[str]) -> None:
        """Register ``stages``, an alias of the named stage modules (iterable in TorchScript), kept out of the
        state_dict so the official key layout stays."""
        self.stage_names = names
        self.stages = nn.ModuleList([getattr(self, n) for n in names])
        self.register_state_dict_post_hook(drop_alias_keys)  # type: ignore[attr-defined]
        self.register_load_state_dict_pre_hook(add_alias_keys)  # type: ignore[attr-defined]

    def stage_modules(self) -> List[nn.Module]:
        return list(self.stages)

    def run_stages(self, x: Tensor) -> List[Tensor]:
        """Every stage in turn (checkpointed per block when enabled in training); returns each stage's output."""
        feats: List[Tensor] = []
        for i, stage in enumerate(self.stages):
            x = self.checkpointed_stage(i, x) if self.grad_checkpointing and self.training else stage(x)
            feats.append(x)
        return feats

    @torch.jit.unused
    def checkpointed_stage(self, index: int, x: Tensor) -> Tensor:
        """Run one stage block by block under activation checkpointing (memory for compute)."""
        stage = self.stages[index]
        for block in stage if isinstance(stage, nn.Sequential) else [stage]:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.grad_checkpointing = enable

    def configure_backbone(self, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        """mmdetection semantics: ``frozen_stages=k`` freezes the stem (k >= 0) and stages 1..k (parameters
        get ``requires_grad=False`` and their norms stay in eval mode); ``norm_eval`` keeps every BatchNorm in
        eval mode during training."""
        n = len(self.stage_modules())
        if not -1 <= frozen_stages <= n:
            raise ValueError(f"frozen_stages must be in [-1, {n}] for this model, got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)  # type: ignore[attr-defined]

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return list(self.stem_modules()) + self.stage_modules()[: self.frozen_stages]  # type: ignore

    def train(self, mode: bool = True) -> Any:
        super().train(mode)  # type: ignore[misc]
        if mode:
            for module in self.frozen_modules():
                module.eval()
            if self.norm_eval:
                for m in self.modules():  # type: ignore[attr-defined]
                    if isinstance(m, _BatchNorm):
                        m.eval()
        return self


class FeaturesMixin:
    """Turns a trunk into a feature extractor: ``forward`` returns the maps of ``out_indices``
    (0 = stem output C1, 1.. = stage outputs C2..)."""

    def forward(self, x: Tensor) -> List[Tensor]:
        feats = self.forward_stages(x)  # type: ignore[attr-defined]
        return [feats[i] for i in self.out_indices]


def check_block_args(scale: int, base_width: int, cardinality: int, min_planes: int) -> None:
    """ValueError naming the argument for an impossible Res2Net/ResNeXt dimension."""
    for arg, value in (("scale", scale), ("base_width", base_width), ("cardinality", cardinality)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")
    if min_planes * base_width < 64:
        raise ValueError(f"base_width must be >= {-(-64 // min_planes)} so that every split has a channel "
                         f"(floor(planes * base_width / 64) with planes={min_planes}), got {base_width}")


def to_features(model: nn.Module, out_indices: Optional[Sequence[int]] = None) -> nn.Module:
    """Switch a built trunk to a features-only model in place (head removed, ``feature_info`` filtered).
    ``out_indices`` default: every level (C1..C5, or C1..C4 for 3-stage CIFAR trunks)."""
    n = len(model.feature_info)  # type: ignore[arg-type]
    indices = list(range(n)) if out_indices is None else list(out_indices)
    if not indices or any(not isinstance(i, int) or not 0 <= i < n for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"out_indices must be distinct integers in [0, {n - 1}] for this model, got {out_indices}")
    cls = type(model)
    model.__class__ = type(cls.__name__ + "Features", (FeaturesMixin, cls), {})
    model.out_indices = indices  # type: ignore[assignment]
    model.feature_info = [model.feature_info[i] for i in indices]  # type: ignore[index]
    model.fc = nn.Identity()
    model.global_pool = nn.Identity()
    return model


def drop_alias_keys(module: nn.Module, state_dict: Dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: ``stages`` only aliases the named stage modules; keep the official layout."""
    for key in [k for k in state_dict if k.startswith(prefix + "stages.")]:
        del state_dict[key]


def add_alias_keys(module: nn.Module, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: mirror the named stage keys under the ``stages`` alias."""
    for i, name in enumerate(module.stage_names):  # type: ignore[attr-defined]
        src = f"{prefix}{name}."
        for key in [k for k in state_dict if k.startswith(src)]:
            state_dict[f"{prefix}stages.{i}." + key[len(src):]] = state_dict[key]
