"""Checkpoint key layouts of Res2Net in other frameworks, and exact conversions between them and ours.

Our state_dict keys are the official checkpoints' keys (``official`` layout). The other layouts rename keys and
sometimes leave some out; no layout changes a tensor, so every conversion moves the same tensors under new names
and a round trip ``official -> X -> official`` is bit-identical.

======================  ===========================================================================================
layout                  keys (facts read from each project's source; see docs/MODELS.md)
======================  ===========================================================================================
``official``            Res2Net-PretrainedModels checkpoints = ``res2net.models.build_model(name).state_dict()``
``timm``                timm 1.0's models: official keys for Res2Net/Res2NeXt/v1b; ``conv2``/``bn2`` for the
                        scale-1 baselines; DLA without the 18 ``project`` keys its forward never uses
``torchvision``         torchvision's resnet50/101/152 and resnext50_32x4d (``conv2``/``bn2``); no Res2Net
``mmdet``               mmdetection ``Res2Net`` backbone (always deep stem + avg-pool shortcut, i.e. v1b/v1d):
                        ``stem.{0,1,3,4,6,7}``, ``layerN`` as official, no classifier
``mmpretrain``          mmpretrain ``ImageClassifier`` with a ``Res2Net`` backbone: ``backbone.`` + backbone keys
                        (v1: official stem; v1b: ``stem.{0,1,2}.{conv,bn}``) and the classifier as ``head.fc``
``detectron2``          the Res2Net detectron2 port (v1b only): ``stem.conv1.*``, ``stem.bn1``, ``res2..res5``,
                        ``conv1.norm``, ``conv3.norm``, ``shortcut.1`` (+ ``.norm``), no classifier
======================  ===========================================================================================

Layouts without a classifier (mmdet, detectron2) drop ``fc.*`` in :func:`from_official`; :func:`to_official` then
returns a state dict without ``fc`` and the caller decides (a backbone, a new head, or an error). ``timm`` keeps
``fc``. ``num_batches_tracked`` buffers missing from a source (detectron2's FrozenBatchNorm has none) are filled
with 0, the value a fresh BatchNorm starts with (it only matters for ``momentum=None``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..models import DLA, build_model, get_spec, list_models
from ..models.registry import DEPTHS, ModelSpec

LAYOUTS: Tuple[str, ...] = ("official", "timm", "torchvision", "mmdet", "mmpretrain", "detectron2")

# Where each layout's key names come from (also printed by docs/MODELS.md and the fixtures' headers).
LAYOUT_SOURCES: Dict[str, str] = {
    "official": "github.com/Res2Net/Res2Net-PretrainedModels (res2net.py, res2net_v1b.py, dla.py)",
    "timm": "timm 1.0.31 models/res2net.py, resnet.py, dla.py (installed; tests load strictly into it)",
    "torchvision": "torchvision 0.29 models/resnet.py (installed; tests load strictly into it)",
    "mmdet": "github.com/open-mmlab/mmdetection mmdet/models/backbones/res2net.py + resnet.py",
    "mmpretrain": "github.com/open-mmlab/mmpretrain mmpretrain/models/backbones/res2net.py + resnet.py, "
                  "heads/linear_head.py",
    "detectron2": "github.com/Res2Net/Res2Net-detectron2 detectron2/modeling/backbone/resnet.py, "
                  "tools/convert-torchvision-to-d2.py",
}

# What a converted file does not carry over: the network that loads it computes another function.
LAYOUT_NOTES: Dict[str, str] = {
    "mmdet": ("mmdet 3.3.0's Res2Net is not the official network: its Bottle2neck skips the 3x3 average pool of the "
              "untouched split in the stride-1 stage block (layer1.0), which the official code, timm, mmpretrain and "
              "res2net apply; the weights load strictly, but its C2-C5 maps differ from ours (docs/MODELS.md)"),
}

# torchvision's ResNet/ResNeXt with our names for them (same depth/width/groups, scale 1).
TORCHVISION_NAMES: Dict[str, str] = {"resnet50": "resnet50", "resnet101": "resnet101", "resnet152": "resnet152",
                                     "resnext50_32x4d": "resnext50_32x4d"}

# Prefixes that wrap a state dict: DDP, EMA/trainer wrappers, a detector holding the backbone, detectron2's FPN.
WRAPPER_PREFIXES: Tuple[str, ...] = ("module.", "model.", "backbone.bottom_up.", "backbone.", "encoder.")

_BN_BUFFER = "num_batches_tracked"
_DEFAULT_PLANES = (64, 128, 256, 512)


# ---- which layouts hold which model ---------------------------------------------------------------------------
def _arch(spec: ModelSpec, field_name: str, default: object) -> object:
    """One architecture field of a registry row (a typed record; older rows were dicts)."""
    arch = spec.arch
    return arch.get(field_name, default) if isinstance(arch, Mapping) else getattr(arch, field_name, default)


def _build_trunk(spec: ModelSpec, **kwargs: object) -> torch.nn.Module:
    """The row's trunk class with per-instance arguments (used for DLA's ``keep_unused_project``)."""
    if hasattr(spec.arch, "build"):
        return spec.arch.build(**kwargs)
    return DLA(**spec.arch, **kwargs)


def _imagenet_res2net_problem(spec: ModelSpec) -> Optional[str]:
    """Why ``spec`` is not a plain ImageNet Res2Net (the only models the mm*/detectron2 backbones build)."""
    if spec.family != "resnet" or tuple(_arch(spec, "planes", _DEFAULT_PLANES)) != _DEFAULT_PLANES:
        return "is not a 4-stage ImageNet Res2Net"
    if tuple(_arch(spec, "layers", ())) not in DEPTHS.values():
        return "has no 50/101/152-layer depth"
    if _arch(spec, "scale", 4) < 2:
        return "has scale 1 (a plain ResNet, not Res2Net)"
    if _arch(spec, "cardinality", 1) != 1 or _arch(spec, "se_reduction", 0):
        return "uses groups or SE, which that backbone has no option for"
    if _arch(spec, "stem", "default") not in ("default", "deep"):
        return "has a small-image stem"
    if _arch(spec, "stem_width", 64) != 64:
        return "has a stem width other than 64"
    return None


def _coverage_problem(spec: ModelSpec, layout: str) -> Optional[str]:
    """None when ``layout`` can hold ``spec``'s weights, else the reason it cannot."""
    stem, avg_down = _arch(spec, "stem", "default"), bool(_arch(spec, "avg_down", False))
    if layout == "official":
        return None
    if layout == "timm":
        return None if spec.timm_name else "timm has no such model"
    if layout == "torchvision":
        return None if spec.name in TORCHVISION_NAMES else \
            f"torchvision has only {', '.join(TORCHVISION_NAMES)} (no Res2Net)"
    problem = _imagenet_res2net_problem(spec)
    if problem:
        return problem
    if layout in ("mmdet", "detectron2") and not (stem == "deep" and avg_down):
        return (f"the {layout} Res2Net backbone always has the deep stem and avg-pool shortcut (v1b/v1d); "
                "this model has the 7x7 stem (v1)")
    if layout == "mmpretrain" and (stem == "deep") != avg_down:
        return "mmpretrain's deep_stem and avg_down do not match this model"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return None


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")


def layouts_for(model_name: str) -> Tuple[str, ...]:
    """The layouts that can hold ``model_name``'s weights, in :data:`LAYOUTS` order."""
    spec = get_spec(model_name)
    return tuple(layout for layout in LAYOUTS if _coverage_problem(spec, layout) is None)


def convertible_models() -> List[str]:
    """Zoo models that some layout other than ``official`` holds (the candidates of :func:`infer_model`)."""
    return [name for name in list_models() if len(layouts_for(name)) > 1]


# ---- the renaming rules (official key -> layout key; None = the layout has no such key) -----------------------
_V1B_STEM = {"conv1.0": 0, "conv1.1": 1, "conv1.3": 3, "conv1.4": 4, "conv1.6": 6, "bn1": 7}  # Sequential index
_LAYER = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


def _split_module(key: str) -> Tuple[str, str]:
    """``"layer1.0.bn1.weight"`` -> ``("layer1.0.bn1", "weight")``."""
    module, _, tensor = key.rpartition(".")
    return module, tensor


SCALE1_RENAMES = ((".convs.0.", ".conv2."), (".bns.0.", ".bn2."))  # (ours, torchvision's and timm's)


def _scale1_names(key: str) -> str:
    """Our ``convs.0``/``bns.0`` of a scale-1 block are torchvision's and timm's ``conv2``/``bn2``."""
    for ours, theirs in SCALE1_RENAMES:
        key = key.replace(ours, theirs)
    return key


def rename_scale1_keys(state_dict: Mapping[str, Tensor], expected: Iterable[str], to_ours: bool = True
                       ) -> Dict[str, Tensor]:
    """Rename scale-1 keys between torchvision's/timm's ``conv2``/``bn2`` and our ``convs.0``/``bns.0``
    (``to_ours=False``: ours to theirs), only where the renamed key is one of ``expected`` (the target
    model's keys); every other key passes unchanged."""
    expected = set(expected)
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = key
        if key not in expected:
            for ours, theirs in SCALE1_RENAMES:
                old, repl = (theirs, ours) if to_ours else (ours, theirs)
                if key.replace(old, repl) in expected:
                    new = key.replace(old, repl)
                    break
        out[new] = value
    return out


def _timm_key(key: str, spec: ModelSpec, unused: frozenset) -> Optional[str]:
    if key in unused:
        return None
    return _scale1_names(key) if _arch(spec, "scale", 4) == 1 else key


def _torchvision_key(key: str, spec: ModelSpec, unused: frozenset) -> Optional[str]:
    return _scale1_names(key)


def _mmdet_key(key: str, spec: ModelSpec, unused: frozenset) -> Optional[str]:
    if key.startswith("fc."):
        return None
    module, tensor = _split_module(key)
    if module in _V1B_STEM:
        return f"stem.{_V1B_STEM[module]}.{tensor}"
    return key


def _mmpretrain_key(key: str, spec: ModelSpec, unused: frozenset) -> Optional[str]:
    if key.startswith("fc."):
        return "head." + key
    module, tensor = _split_module(key)
    if _arch(spec, "stem", "default") == "deep" and module in _V1B_STEM:
        index = _V1B_STEM[module]  # ConvModule i holds .conv and .bn: Sequential 0,1 -> 0; 3,4 -> 1; 6,7 -> 2
        return f"backbone.stem.{index // 3}.{'conv' if index % 3 == 0 else 'bn'}.{tensor}"
    return "backbone." + key


_D2_BLOCK = (("bn1", "conv1.norm"), ("bn3", "conv3.norm"), ("downsample.1", "shortcut.1"),
             ("downsample.2", "shortcut.1.norm"))


def _detectron2_key(key: str, spec: ModelSpec, unused: frozenset) -> Optional[str]:
    if key.startswith("fc."):
        return None
    match = _LAYER.match(key)
    if not match:  # stem: conv1.{0,1,3,4,6}, bn1
        return "stem." + key
    stage, block, rest = match.groups()
    module, tensor = _split_module(rest)
    module = dict(_D2_BLOCK).get(module, module)
    return f"res{int(stage) + 1}.{block}.{module}.{tensor}"


_RULES: Dict[str, Callable[[str, ModelSpec, frozenset], Optional[str]]] = {
    "timm": _timm_key, "torchvision": _torchvision_key, "mmdet": _mmdet_key, "mmpretrain": _mmpretrain_key,
    "detectron2": _detectron2_key,
}


# ---- expected key sets (models built on the meta device: no memory, no time) ------------------------------------
@functools.lru_cache(maxsize=None)
def official_shapes(model_name: str) -> Dict[str, Tuple[int, ...]]:
    """Our (= the official checkpoint's) keys of ``model_name`` in order, with shapes; built on the meta device."""
    spec = get_spec(model_name)
    with torch.device("meta"):
        if spec.family == "dla":  # the official files hold the unused project shortcuts: keep them here
            model = _build_trunk(spec, num_classes=spec.num_classes, keep_unused_project=True)
        else:
            model = build_model(spec.name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _unused_official_keys(model_name: str) -> frozenset:
    """Official DLA keys of ``project`` shortcuts that the forward never uses (timm leaves them out)."""
    spec = get_spec(model_name)
    if spec.family != "dla":
        return frozenset()
    with torch.device("meta"):
        used = _build_trunk(spec, num_classes=spec.num_classes, keep_unused_project=False).state_dict()
    return frozenset(k for k in official_shapes(model_name) if k not in used)


def unused_keys(model_name: str) -> List[str]:
    """Official keys the forward never uses (DLA's ``project`` shortcuts of levels 3-4), in official order: timm's
    layout has no place for them, and an official-layout file without them (e.g. converted from timm) is complete.
    """
    unused = _unused_official_keys(get_spec(model_name).name)
    return [k for k in official_shapes(get_spec(model_name).name) if k in unused]


@functools.lru_cache(maxsize=None)
def key_map(model_name: str, layout: str) -> Dict[str, str]:
    """Official key -> ``layout`` key for every official key the layout holds (in official order).

    Raises ValueError when the layout cannot hold the model (the message says why)."""
    _check_layout(layout)
    spec = get_spec(model_name)
    problem = _coverage_problem(spec, layout)
    if problem:
        raise ValueError(f"{spec.name} has no {layout} layout: {problem}; "
                         f"its layouts: {', '.join(layouts_for(spec.name))}")
    keys = official_shapes(spec.name)
    if layout == "official":
        return {k: k for k in keys}
    rule, unused = _RULES[layout], _unused_official_keys(spec.name)
    mapping = {k: new for k in keys if (new := rule(k, spec, unused)) is not None}
    if len(set(mapping.values())) != len(mapping):  # a rule that merged two keys would lose a tensor
        raise RuntimeError(f"{layout} renaming of {spec.name} is not one-to-one")
    return mapping


def layout_shapes(model_name: str, layout: str) -> Dict[str, Tuple[int, ...]]:
    """The keys (in official order) and shapes that ``layout`` holds for ``model_name``."""
    shapes = official_shapes(get_spec(model_name).name)
    return {new: shapes[old] for old, new in key_map(model_name, layout).items()}


def dropped_keys(model_name: str, layout: str) -> List[str]:
    """Official keys that ``layout`` has no place for (``fc.*`` of backbone layouts, DLA's unused projects)."""
    mapping = key_map(model_name, layout)
    return [k for k in official_shapes(get_spec(model_name).name) if k not in mapping]


# ---- detection ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutScore:
    """How one layout fits a state dict (after stripping ``prefix``): counts and a few example keys."""

    layout: str
    prefix: str
    missing: int  # required keys of the layout that the state dict lacks
    unexpected: int  # keys of the state dict that the layout has no place for
    mismatched: int  # keys present in both with different shapes
    absent_optional: int  # classifier / num_batches_tracked keys the state dict lacks (allowed)
    examples: Tuple[str, ...] = ()
    absent_unused: int = 0  # of those, DLA's unused project keys (a layout that never has them fits better)

    @property
    def exact(self) -> bool:
        return self.missing == 0 and self.unexpected == 0 and self.mismatched == 0

    @property
    def distance(self) -> int:
        return self.missing + self.unexpected + self.mismatched

    def describe(self) -> str:
        where = f" (after stripping {self.prefix!r})" if self.prefix else ""
        text = (f"{self.layout}{where}: {self.missing} missing, {self.unexpected} unexpected, "
                f"{self.mismatched} shape mismatches")
        return text + (f" (e.g. {', '.join(self.examples)})" if self.examples and not self.exact else "")


@dataclass(frozen=True)
class LayoutMatch:
    """The result of :func:`detect_layout`: the layout the keys are in (None: none fits exactly), the wrapper
    prefix stripped, every layout that fits exactly, and one score per candidate layout, nearest first."""

    model: str
    layout: Optional[str]
    prefix: str
    matches: Tuple[str, ...]
    scores: Tuple[LayoutScore, ...] = field(default_factory=tuple)
    classifier_absent: bool = False  # the layout has a classifier (fc / head.fc) but the state dict holds none

    def describe(self) -> str:
        """One line: the layout found, or the nearest layouts with their missing/unexpected key counts."""
        if self.layout is not None:
            where = f" (prefix {self.prefix!r} stripped)" if self.prefix else ""
            also = [m for m in self.matches if m != self.layout]
            return (f"{self.model} weights in the {self.layout} layout{where}"
                    + (f"; the keys are also valid {', '.join(also)} keys" if also else ""))
        nearest = "; ".join(s.describe() for s in self.scores[:3])
        return f"the keys fit no known layout of {self.model}; nearest: {nearest}"


def _views(state_dict: Mapping[str, Tensor]) -> Iterator[Tuple[str, Dict[str, Tensor]]]:
    """The state dict as is, then with each wrapper prefix stripped (keys without the prefix are left out)."""
    bases: List[Tuple[str, Dict[str, Tensor]]] = [("", dict(state_dict))]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        bases.append(("module.", {k[len("module."):]: v for k, v in state_dict.items()}))
    seen = set()
    for base_prefix, base in bases:
        for prefix in ("",) + WRAPPER_PREFIXES:
            full = base_prefix + prefix
            if full in seen:
                continue
            view = base if not prefix else {k[len(prefix):]: v for k, v in base.items() if k.startswith(prefix)}
            if view:
                seen.add(full)
                yield full, view


def _score(view: Mapping[str, Tensor], expected: Mapping[str, Tuple[int, ...]], layout: str,
           prefix: str, unused: Sequence[str] = ()) -> LayoutScore:
    head = [k for k in expected if k.startswith(("fc.", "head.fc."))]
    partial_head = any(k in view for k in head)  # a classifier is absent as a whole or not at all
    counters = [k for k in expected if k.endswith(_BN_BUFFER)]
    partial_counters = any(k in view for k in counters)  # detectron2's FrozenBatchNorm keeps none of them
    partial_unused = any(k in view for k in unused)  # DLA's unused project keys: all there or none
    optional = set(head if not partial_head else ()) | set(counters if not partial_counters else ()) | set(
        unused if not partial_unused else ())
    missing = [k for k in expected if k not in view and k not in optional]
    absent_optional = sum(1 for k in optional if k not in view)
    unexpected = [k for k in view if k not in expected]
    mismatched = [k for k, v in view.items() if k in expected and tuple(v.shape) != expected[k]]
    examples = tuple(missing[:2]) + tuple(f"+{k}" for k in unexpected[:2]) + tuple(
        f"{k} {tuple(view[k].shape)} vs {expected[k]}" for k in mismatched[:1])
    return LayoutScore(layout, prefix, len(missing), len(unexpected), len(mismatched), absent_optional, examples,
                       sum(1 for k in unused if k not in view))


def detect_layout(state_dict: Mapping[str, Tensor], model_name: str,
                  layouts: Optional[Sequence[str]] = None) -> LayoutMatch:
    """Which layout ``state_dict`` is in, for ``model_name`` (its shapes are checked too).

    Wrapper prefixes (``module.``, ``model.``, ``backbone.`` of a detector, ``backbone.bottom_up.`` of a
    detectron2 FPN, ``encoder.``) are tried when the keys as given fit no layout. A classifier and
    ``num_batches_tracked`` buffers may be absent. When several layouts fit (official and timm keys of Res2Net
    are the same), the first in :data:`LAYOUTS` order is chosen and all are listed in ``matches``.
    """
    spec = get_spec(model_name)
    candidates = [lay for lay in (layouts or LAYOUTS) if (_check_layout(lay) or True)
                  and _coverage_problem(spec, lay) is None]
    if not candidates:
        raise ValueError(f"{spec.name} has none of the layouts {', '.join(layouts or LAYOUTS)}; "
                         f"its layouts: {', '.join(layouts_for(spec.name))}")
    best: Dict[str, LayoutScore] = {}
    views = list(_views(state_dict))
    for layout in candidates:
        expected = layout_shapes(spec.name, layout)
        unused = unused_keys(spec.name) if layout == "official" else []
        for prefix, view in views:
            score = _score(view, expected, layout, prefix, unused)
            if layout not in best or score.distance < best[layout].distance:
                best[layout] = score
    scores = tuple(sorted(best.values(), key=lambda s: (s.distance, candidates.index(s.layout))))
    exact = [s for s in scores if s.exact]
    # prefer the view with the least stripped, then a layout that has no place for absent unused keys, then LAYOUTS
    exact.sort(key=lambda s: (len(s.prefix), s.absent_unused, candidates.index(s.layout)))
    chosen = exact[0] if exact else None
    classifier_absent = False
    if chosen is not None:
        view = dict(views)[chosen.prefix]
        head = [k for k in layout_shapes(spec.name, chosen.layout) if k.startswith(("fc.", "head.fc."))]
        classifier_absent = bool(head) and not any(k in view for k in head)
    return LayoutMatch(model=spec.name, layout=chosen.layout if chosen else None,
                       prefix=chosen.prefix if chosen else "",
                       matches=tuple(s.layout for s in exact if s.prefix == chosen.prefix) if chosen else (),
                       scores=scores, classifier_absent=classifier_absent)


def infer_model(state_dict: Mapping[str, Tensor], candidates: Optional[Iterable[str]] = None) -> List[LayoutMatch]:
    """Every candidate model (default: :func:`convertible_models`) whose keys and shapes some layout fits
    exactly, as :class:`LayoutMatch` objects in registry order; empty when none fits.

    Models with identical key sets (``res2net50_26w_4s`` and its 299-px card) all appear."""
    found = []
    for name in (candidates if candidates is not None else convertible_models()):
        match = detect_layout(state_dict, name)
        if match.layout is not None:
            found.append(match)
    return found


def nearest_models(state_dict: Mapping[str, Tensor], candidates: Optional[Iterable[str]] = None,
                   n: int = 3) -> List[LayoutMatch]:
    """The ``n`` candidate models whose best layout is nearest to ``state_dict`` (for error reports)."""
    matches = [detect_layout(state_dict, name) for name in
               (candidates if candidates is not None else convertible_models())]
    return sorted(matches, key=lambda m: m.scores[0].distance)[:n]


# ---- conversion ---------------------------------------------------------------------------------------------
def _resolve(state_dict: Mapping[str, Tensor], model_name: str, layout: Optional[str]) -> Tuple[LayoutMatch,
                                                                                                 Dict[str, Tensor]]:
    match = detect_layout(state_dict, model_name, None if layout is None else (layout,))
    if match.layout is None:
        raise CheckpointError(match.describe())
    return match, dict(_views(state_dict))[match.prefix]


def to_official(state_dict: Mapping[str, Tensor], model_name: str,
                layout: Optional[str] = None) -> Dict[str, Tensor]:
    """``state_dict`` (in ``layout``; detected when None) renamed to our = the official keys, in official order.

    The tensors are the same objects (nothing is copied or cast). Keys the source layout has no place for are
    absent from the result: ``fc.*`` for mmdet/detectron2 (and for any source saved without its classifier), the
    unused DLA ``project`` keys for timm; the caller decides (load as a backbone, a new head, or an error).
    An official-layout source may leave out the unused DLA ``project`` keys (:func:`unused_keys`) as a whole; they
    stay absent. Missing ``num_batches_tracked`` buffers are filled with 0. A state dict that fits no layout raises
    CheckpointError with the nearest layouts and their missing/unexpected key counts.
    """
    match, view = _resolve(state_dict, model_name, layout)
    mapping = key_map(match.model, match.layout)
    unused = set(unused_keys(match.model))
    out: Dict[str, Tensor] = {}
    for old, new in mapping.items():
        if new in view:
            out[old] = view[new]
        elif old.endswith(_BN_BUFFER) and old not in unused:
            out[old] = torch.zeros((), dtype=torch.long)
    return out


def from_official(state_dict: Mapping[str, Tensor], model_name: str, layout: str) -> Dict[str, Tensor]:
    """Our (official) ``state_dict`` of ``model_name`` renamed to ``layout``'s keys, in official order.

    The input must hold exactly the model's official keys and shapes (a classifier may be absent; wrapper
    prefixes such as ``module.`` are stripped). Keys the layout has no place for are dropped (see
    :func:`dropped_keys`: ``fc.*`` for mmdet and detectron2, whose backbones have no classifier; the unused
    DLA ``project`` keys for timm). The tensors are the same objects.
    """
    _check_layout(layout)
    mapping = key_map(model_name, layout)
    _, view = _resolve(state_dict, model_name, "official")
    return {mapping[k]: v for k, v in view.items() if k in mapping}


def convert_state_dict(state_dict: Mapping[str, Tensor], model_name: str, to: str,
                       source_layout: Optional[str] = None) -> Dict[str, Tensor]:
    """``state_dict`` from ``source_layout`` (detected when None) to layout ``to``, through the official keys."""
    return from_official(to_official(state_dict, model_name, source_layout), model_name, to)
