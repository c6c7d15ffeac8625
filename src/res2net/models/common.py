"""What the trunks share: the input check, running the body in order (features, intermediates, grad
checkpointing), frozen stages and norm_eval, the classifier head and timm's model API, and
:class:`FeatureExtractor`, the ``features_only`` wrapper.

A trunk registers its modules in the order they run: stem modules, stage modules, then the head
(``global_pool``, ``fc``). :meth:`BackboneMixin.forward_body` runs the body (everything but the head) in that
order, so ``forward_features``, ``forward_intermediates`` and the feature wrapper are one loop.
"""


from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from ..layers import init_weights

POOL_TYPES = ("avg", "max", "")


class FeatureInfo(list):
    """The feature maps a model offers, C1, C2, ...: a list of ``{"num_chs", "reduction", "module"}`` dicts
    that also answers timm's ``FeatureInfo`` accessors (``channels()``, ``reduction()``, ``module_name()``).

    >>> info = FeatureInfo([{"num_chs": 64, "reduction": 2, "module": "relu"},
    ...                     {"num_chs": 256, "reduction": 4, "module": "layer1"}])
    >>> info.channels(), info.reduction(1), info[0]["module"]
    ([64, 256], 4, 'relu')
    """

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        """``key`` of every map (``idx=None``), of the maps ``idx`` (a sequence) or of the map ``idx``."""
        if idx is None:
            return [info[key] for info in self]
        if isinstance(idx, (list, tuple)):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None) -> Any:
        return self.get("module", idx)


def take_indices(n: int, indices: Optional[Union[int, Sequence[int]]] = None) -> Tuple[List[int], int]:
    """timm's feature-index rule: ``None`` = all ``n`` maps, an int ``k`` = the last ``k``, a sequence = those
    (negative counts from the end). Returns (absolute indices, largest index)."""
    if indices is None:
        indices = n
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"indices: last-{indices} is out of range (1 to {n})")
        taken = list(range(n - indices, n))
    else:
        taken = []
        for i in indices:
            idx = n + i if i < 0 else i
            if not 0 <= idx < n:
                raise ValueError(f"indices: feature index {i} is out of range ({-n} to {n - 1})")
            taken.append(idx)
        if not taken:
            raise ValueError("indices: no feature index given")
    return taken, max(taken)


class BackboneMixin:
    """Shared by the trunks and :class:`FeatureExtractor`. The class using it sets ``in_chans``,
    ``min_input_size``, ``stem_names``, ``stage_names``, ``head_names`` (children that are not part of the
    body), ``feature_info`` and ``grad_checkpointing``."""

    head_names: List[str]
    stem_names: List[str]
    stage_names: List[str]
    frozen_stages: int = -1
    norm_eval: bool = False

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for a wrong channel count or a spatial size too small for the network (skipped
        while torch.fx traces symbolically: the shapes are proxies there)."""
        if not torch.jit.is_scripting():
            if is_fx_symbolic_tracing():
                return
        if x.dim() != 4:
            raise ValueError("expected an input of shape (N, C, H, W), got " + str(x.dim()) + " dimensions")
        if x.shape[1] != self.in_chans:
            raise ValueError("expected " + str(self.in_chans) + " input channels, got " + str(x.shape[1])
                             + " (create the model with in_chans=" + str(x.shape[1]) + ")")
        if x.shape[2] < self.min_input_size or x.shape[3] < self.min_input_size:
            raise ValueError("input of " + str(x.shape[2]) + "x" + str(x.shape[3]) + " is too small for this "
                             "network: it needs at least " + str(self.min_input_size) + "x"
                             + str(self.min_input_size) + " pixels (its total stride)")

    def forward_body(self, x: Tensor, taps: List[str], stop_after: str = "") -> Tuple[Tensor, Dict[str, Tensor]]:
        """Run the body modules in order; returns the last output and the outputs of the modules named in
        ``taps``. Stops after the module ``stop_after`` ("" = run the whole body). Only the tapped outputs are
        kept alive."""
        self.check_input(x)
        feats: Dict[str, Tensor] = {}
        running = True
        for name, module in self.named_children():  # type: ignore[attr-defined]
            if running and name not in self.head_names:
                if self.grad_checkpointing and self.training and not torch.jit.is_scripting():  # type: ignore
                    x = self.checkpointed(name, module, x)
                else:
                    x = module(x)
                if name in taps:
                    feats[name] = x
                if name == stop_after:
                    running = False
        return x, feats

    @torch.jit.unused
    def checkpointed(self, name: str, module: nn.Module, x: Tensor) -> Tensor:
        """Run a stage block by block under activation checkpointing (memory for compute); other modules
        (stem, pools) run plainly."""
        if name not in self.stage_names:
            return module(x)
        for block in module if isinstance(module, nn.Sequential) else [module]:
            x = checkpoint(block, x, use_reentrant=False)
        return x

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (training only)."""
        self.grad_checkpointing = enable

    def stem_modules(self) -> List[nn.Module]:
        return [getattr(self, n) for n in self.stem_names]

    def stage_modules(self) -> List[nn.Module]:
        """The stage modules in order (the levels that ``frozen_stages`` counts)."""
        return [getattr(self, n) for n in self.stage_names]

    def configure_backbone(self, frozen_stages: int = -1, norm_eval: bool = False) -> None:
        """mmdetection semantics: ``frozen_stages=k`` freezes the stem (k >= 0) and stages 1..k (parameters
        get ``requires_grad=False`` and their norms stay in eval mode); ``norm_eval`` keeps every BatchNorm in
        eval mode during training."""
        n = len(self.stage_names)
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
        return self.stem_modules() + self.stage_modules()[: self.frozen_stages]

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


def make_pool(pool_type: str) -> nn.Module:
    """The global pooling of the head: ``"avg"``, ``"max"`` or ``""`` (none: the head sees the map)."""
    if pool_type not in POOL_TYPES:
        raise ValueError(f"global_pool must be one of {POOL_TYPES}, got {pool_type!r}")
    if pool_type == "avg":
        return nn.AdaptiveAvgPool2d(1)
    return nn.AdaptiveMaxPool2d(1) if pool_type == "max" else nn.Identity()


class Trunk(BackboneMixin, nn.Module):
    """Base of :class:`~res2net.models.ResNet` and :class:`~res2net.models.DLA`: body + ``global_pool`` +
    ``fc`` head, with timm's model API (``forward_features``, ``forward_head``, ``forward_intermediates``,
    ``prune_intermediate_layers``, ``get_classifier``, ``reset_classifier``, ``group_matcher``...).

    A subclass builds its body modules in run order, then calls :meth:`init_head`, and defines
    ``group_matcher``."""

    def init_head(self, num_features: int, num_classes: int, global_pool: str, conv_classifier: bool = False,
                  drop_rate: float = 0.0) -> None:
        """Register ``global_pool`` and ``fc`` (last, after the body) and the head attributes;
        ``conv_classifier``: ``fc`` is a 1x1 conv applied to the pooled map (DLA's official layout);
        ``drop_rate``: dropout on the pooled features before the classifier in training (timm's ``drop_rate``)."""
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.head_names = ["global_pool", "fc"]
        self.drop_rate = float(drop_rate)
        self.conv_classifier = conv_classifier
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.pool_type = global_pool
        self.global_pool = make_pool(global_pool)
        self.fc = self.make_classifier(num_classes)

    def make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.conv_classifier:
            return nn.Conv2d(self.num_features, num_classes, 1, bias=True)
        return nn.Linear(self.num_features, num_classes)

    # ---- forward ------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's map (unpooled)."""
        return self.forward_body(x, [])[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global pool -> dropout (``drop_rate``, training only) -> classifier; ``pre_logits`` stops before the
        classifier. Without pooling (``global_pool=""``) the classifier runs at every position: (N, classes, H, W) logits."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        pooled = self.pool_type != ""
        if not pre_logits:
            if self.conv_classifier:
                x = self.fc(x)
            elif pooled:
                return self.fc(x.flatten(1))
            else:
                x = self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x.flatten(1) if pooled else x

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_stages(self, x: Tensor) -> List[Tensor]:
        """Every feature map C1, C2, ... of ``feature_info``, in order."""
        return self.forward_intermediates(x, intermediates_only=True)  # type: ignore[return-value]

    def forward_intermediates(self, x: Tensor, indices: Optional[Union[int, Sequence[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """timm's API: the feature maps ``indices`` (see :func:`take_indices`; None = all of ``feature_info``)
        and the final map (``== forward_features(x)`` unless ``stop_early`` ends the run at the last map
        asked for). ``norm`` has no effect (no final norm in these trunks)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        taken, last = take_indices(len(self.feature_info), indices)
        names = [self.feature_info[i]["module"] for i in taken]
        stop = self.feature_info[last]["module"] if (stop_early or intermediates_only) else ""
        final, feats = self.forward_body(x, names, stop)
        maps = [feats[n] for n in names]
        return maps if intermediates_only else (final, maps)

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """timm's API: drop the body modules after the last map of ``indices`` (they become empty
        ``nn.Sequential``); the head goes too with ``prune_head`` or when the features now end earlier.
        Returns the kept absolute indices."""
        taken, last = take_indices(len(self.feature_info), indices)
        names = [n for n, _ in self.named_children() if n not in self.head_names]
        cut = names.index(self.feature_info[last]["module"])
        for name in names[cut + 1:]:
            setattr(self, name, nn.Sequential())
        prune_end = last < len(self.feature_info) - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return taken

    # ---- head ---------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` (0: none); ``global_pool`` "avg"/"max"/"" (None keeps it).
        The new modules take the model's device, dtype and train/eval mode."""
        ref = next(iter(list(self.parameters()) + list(self.buffers())), None)
        kwargs: Dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        if global_pool is not None:
            self.global_pool = make_pool(global_pool).train(self.training)  # ValueError before any change
            self.pool_type = global_pool
        self.num_classes = num_classes
        fc = self.make_classifier(num_classes)
        init_weights(fc)
        self.fc = fc.to(**kwargs).train(self.training)

    def no_weight_decay(self) -> Set[str]:
        """Parameter names to keep out of weight decay (timm's API): none."""
        return set()


class FeatureExtractor(BackboneMixin, nn.Module):
    """``features_only`` form of a trunk: its body modules (not copies; the head is left out) returning the
    maps ``out_indices`` of the trunk's ``feature_info`` (0 = C1, the stem output; default: all). The
    state_dict keys are the trunk's minus the head, so official checkpoints load into either.
    Computation stops after the deepest map asked for.

    >>> from res2net.models import ResNet
    >>> body = FeatureExtractor(ResNet((1, 1, 1, 1), num_classes=0), out_indices=(1, 4))
    >>> [tuple(f.shape[1:]) for f in body(torch.randn(1, 3, 64, 64))], body.feature_info.channels()
    ([(256, 16, 16), (2048, 2, 2)], [256, 2048])
    """

    head_names: List[str]
    return_layers: List[str]

    def __init__(self, model: Trunk, out_indices: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        n = len(model.feature_info)
        indices = list(range(n)) if out_indices is None else list(out_indices)
        if (not indices or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n for i in indices)
                or len(set(indices)) != len(indices)):
            raise ValueError(f"out_indices must be distinct integers in [0, {n - 1}] for this model, "
                             f"got {out_indices}")
        for name, module in model.named_children():
            if name not in model.head_names:
                self.add_module(name, module)
        self.head_names = []
        self.in_chans = model.in_chans
        self.min_input_size = model.min_input_size
        self.stem_names = list(model.stem_names)
        self.stage_names = list(model.stage_names)
        self.grad_checkpointing = model.grad_checkpointing
        self.frozen_stages, self.norm_eval = model.frozen_stages, model.norm_eval
        self.out_indices = indices
        self.feature_info = FeatureInfo(dict(model.feature_info[i]) for i in indices)
        self.return_layers = [info["module"] for info in self.feature_info]
        self.last_layer = model.feature_info[max(indices)]["module"]
        for attr in ("pretrained_cfg", "default_cfg"):
            if hasattr(model, attr):
                setattr(self, attr, getattr(model, attr))
        self.train(model.training)

    def forward(self, x: Tensor) -> List[Tensor]:
        _, feats = self.forward_body(x, self.return_layers, self.last_layer)
        return [feats[name] for name in self.return_layers]


def check_block_args(scale: int, base_width: int, cardinality: int, min_planes: int) -> None:
    """ValueError naming the argument for an impossible Res2Net/ResNeXt dimension."""
    for arg, value in (("scale", scale), ("base_width", base_width), ("cardinality", cardinality)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")
    if min_planes * base_width < 64:
        raise ValueError(f"base_width must be >= {-(-64 // min_planes)} so that every split has a channel "
                         f"(floor(planes * base_width / 64) with planes={min_planes}), got {base_width}")


class UnusedWeights(nn.Module):
    """A module's tensors kept as persistent buffers under the same state_dict names, with no forward: the
    weights of an official checkpoint that the official forward never uses (DLA's deep ``project``
    shortcuts). They load strictly and count as parameters in :func:`count_params`, like the official
    figures, but are no ``nn.Parameter``: no optimizer sees them and no gradient is expected of them."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        for name, child in module.named_children():
            self.add_module(name, UnusedWeights(child))
        self.param_names = [name for name, _ in module.named_parameters(recurse=False)]
        for name, p in module.named_parameters(recurse=False):
            self.register_buffer(name, p.detach())
        for name, b in module.named_buffers(recurse=False):
            self.register_buffer(name, b)

    def official_param_count(self) -> int:
        """Elements of the tensors that were parameters in the official module (running stats excluded)."""
        return sum(getattr(self, n).numel() for n in self.param_names)


def count_params(model: nn.Module) -> int:
    """Parameters as the official figures count them: every parameter (trainable or not) plus the official
    DLA checkpoints' never-used ``project`` weights (kept as :class:`UnusedWeights` buffers).

    Args:
        model: the model.

    Returns:
        The parameter count.
    """
    return (sum(p.numel() for p in model.parameters())
            + sum(m.official_param_count() for m in model.modules() if isinstance(m, UnusedWeights)))
