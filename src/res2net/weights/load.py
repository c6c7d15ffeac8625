"""Weights -> models, in named steps: :func:`to_our_layout` (another framework's keys renamed to ours) then
:func:`load_state_dict_strict` (the one strict loader: every missing/unexpected/mis-shaped key named, no
renaming); the public factory :func:`create_model` (build, and load ``pretrained`` weights) and the one loader
:func:`load_model` (weights that may say which model they hold -> a model). A loaded model carries its
preprocessing in ``model.pretrained_cfg`` (timm's keys, what timm's ``resolve_data_config`` and our runtimes read)
and, the same values, in ``model.preprocessing`` (:func:`set_preprocessing` writes both).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..data.preprocessing import Preprocessing, dataset_preprocessing
from ..errors import CheckpointError
from ..models import registry
from . import layouts
from .io import CheckpointInfo, PathLike, describe_checkpoint
from .sources import (FetchedWeights, Pretrained, Source, fetch_first, fetch_weights, fetched_from_checkpoint,
                      parse_pretrained, parse_source)

WeightsSource = Union[Pretrained, CheckpointInfo, Mapping[str, Tensor]]


# ---- step 1: our key layout ---------------------------------------------------------------------------------
def to_our_layout(state_dict: Mapping[str, Tensor], name: str, model: Optional[nn.Module] = None
                  ) -> Dict[str, Tensor]:
    """``state_dict`` in our (= the official) key layout.

    Converted from timm, torchvision, mmdetection, mmpretrain or detectron2 keys when :mod:`.layouts`
    recognises them, as given otherwise (strict loading then names what does not fit). With ``model``: official
    keys a layout or file leaves out because the forward never uses them (DLA's ``project`` shortcuts in timm) are
    taken from it, and torchvision's/timm's scale-1 ``conv2``/``bn2`` keys are renamed to ``convs.0``/``bns.0`` where
    the model expects them.

    Args:
        state_dict: the weights, in any known layout (wrapper prefixes included).
        name: the zoo model they are for.
        model: the model they will be loaded into, if built already.

    Returns:
        A new state dict with our keys.
    """
    converted = _to_official(state_dict, name, model)
    return layouts.rename_scale1_keys(converted, model.state_dict()) if model is not None else converted


# what reads a dense task's checkpoint (the task name a training checkpoint records -> its command)
DENSE_COMMANDS = {"detection": "detect predict/eval", "segmentation": "segment predict/eval",
                  "saliency": "saliency predict/eval"}

def _to_official(state_dict: Mapping[str, Tensor], name: str, model: Optional[nn.Module]) -> Dict[str, Tensor]:
    try:
        match = layouts.detect_layout(state_dict, name)
    except ValueError:  # a model no other framework has
        return dict(state_dict)
    as_given = match.layout is None or (match.layout == "official" and not match.prefix)
    converted = dict(state_dict) if as_given else layouts.to_official(state_dict, name, match.layout)
    if model is not None:  # keys the forward never uses, left out by the layout or the file: the model's own
        own = model.state_dict()
        left_out = [] if match.layout is None else layouts.dropped_keys(name, match.layout)
        for key in left_out + layouts.unused_keys(name):
            if key not in converted and key in own and not key.startswith("fc."):
                converted[key] = own[key]
    return converted


# ---- step 2: the one strict loader --------------------------------------------------------------------------
def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint",
                           allow_new_classifier: bool = False, what: Optional[str] = None) -> None:
    """Load with ``strict=True`` semantics, but report every missing/unexpected key and shape mismatch by name.
    Keys are taken as they are (another layout goes through :func:`to_our_layout` first).

    Args:
        model: the model to load into.
        state_dict: its weights, with the model's own key names.
        source: how the error names the weights (usually the file).
        allow_new_classifier: a classifier (``fc``) whose shape differs from the checkpoint's, or that the model
            does not have (``num_classes=0``), is left at its initialisation and a warning says so.
        what: how the error names the model (default: its zoo name, else its class).

    Raises:
        CheckpointError: naming every key that does not fit.
    """
    state_dict = dict(state_dict)
    own = model.state_dict()
    if allow_new_classifier:
        fc_keys = [k for k in state_dict if k.startswith("fc.")]
        if fc_keys and any(k not in own or own[k].shape != state_dict[k].shape for k in fc_keys):
            warnings.warn(f"{source}: classifier 'fc' not loaded (checkpoint has "
                          f"{tuple(state_dict[fc_keys[0]].shape)}, model has "
                          f"{tuple(own[fc_keys[0]].shape) if fc_keys[0] in own else 'none'}); it keeps its "
                          "initialisation", stacklevel=3)
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
            state_dict.update({k: v for k, v in own.items() if k.startswith("fc.")})
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    values = value_problems(state_dict, [k for k, v in own.items() if v.is_floating_point()])
    if missing or unexpected or mismatched or any(items for _, items in values):
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched), *values):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:10])}{more}")
        what = what or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


# ---- preprocessing: the card's, a checkpoint's, the model's -------------------------------------------------
def card_preprocessing(name: str) -> Preprocessing:
    """The model card's preprocessing (ImageNet statistics, 224 px and crop 0.875 for the ImageNet models)."""
    spec = registry.get_spec(name)
    return Preprocessing(spec.input_size, tuple(spec.mean), tuple(spec.std), spec.crop_pct, spec.interpolation)


def checkpoint_preprocessing(info: Optional[CheckpointInfo], name: str, in_chans: int = 3) -> Preprocessing:
    """The preprocessing a checkpoint's model expects: what its training run used (our checkpoints: saved in
    ``meta``, or derived from the saved data config), else the model card's."""
    if info is not None and "preprocessing" in info.meta:
        return Preprocessing.from_dict(info.meta["preprocessing"]).for_channels(in_chans)
    data = (info.config or {}).get("data", {}) if info is not None else {}
    data = data if isinstance(data, dict) else {}
    return dataset_preprocessing(str(data.get("dataset", "")), card_preprocessing(name),
                                 data.get("input_size")).for_channels(in_chans)


def set_preprocessing(model: nn.Module, preprocessing: Preprocessing) -> nn.Module:
    """Write ``preprocessing`` into the model: ``model.pretrained_cfg`` (timm's ``input_size``, ``mean``,
    ``std``, ``crop_pct``, ``interpolation``; the dict ``default_cfg`` shares) and ``model.preprocessing``.

    Args:
        model: a zoo model (or its ``FeatureExtractor``, whose ``pretrained_cfg`` is the trunk's).
        preprocessing: what the model's weights expect.

    Returns:
        ``model``.
    """
    in_chans = int(getattr(model, "in_chans", len(preprocessing.mean)))
    preprocessing = preprocessing.for_channels(in_chans)
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict):
        cfg = {}
        model.pretrained_cfg = model.default_cfg = cfg  # type: ignore[assignment]
    size = preprocessing.input_size
    cfg.update(input_size=(in_chans, size, size), mean=tuple(preprocessing.mean), std=tuple(preprocessing.std),
               crop_pct=preprocessing.crop_pct, interpolation=preprocessing.interpolation)
    model.preprocessing = preprocessing  # type: ignore[assignment]
    return model


def preprocessing_of(model: nn.Module, name: Optional[str] = None) -> Preprocessing:
    """The preprocessing a model expects: ``model.preprocessing`` when set (:func:`set_preprocessing`), else the
    values of its ``pretrained_cfg`` (a model of :func:`~res2net.models.build_model`: its card's), else the card
    of ``name``.

    Args:
        model: any module.
        name: the zoo model, for a module that carries neither.

    Returns:
        Its preprocessing, for its input channels.
    """
    prep = getattr(model, "preprocessing", None)
    if isinstance(prep, Preprocessing):
        return prep
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if all(k in cfg for k in ("input_size", "mean", "std")):
        size = cfg["input_size"]
        return Preprocessing(int(size[-1] if isinstance(size, (tuple, list)) else size), tuple(cfg["mean"]),
                             tuple(cfg["std"]), float(cfg.get("crop_pct", 1.0)),
                             str(cfg.get("interpolation", "bilinear")))
    name = name or registry.model_name(model)
    if not name:
        raise ValueError("the model says neither its preprocessing nor its zoo name; give the name")
    return card_preprocessing(name).for_channels(int(getattr(model, "in_chans", 3)))


def state_dict_shape(state_dict: Mapping[str, Tensor], name: str) -> Tuple[int, int]:
    """(input channels, classes) of the weights of zoo model ``name`` (0 classes: no classifier in the file)."""
    with torch.device("meta"):
        reference = registry.build_model(name)
    first_conv = next(f"{n}.weight" for n, m in reference.named_modules() if isinstance(m, nn.Conv2d))
    conv = state_dict.get(first_conv)
    if conv is None or conv.ndim != 4:
        conv = next((v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 4), None)
    if conv is None:
        raise CheckpointError(f"the weights hold no convolution: not a {name} checkpoint")
    fc = state_dict.get("fc.weight")
    return int(conv.shape[1]), int(fc.shape[0]) if fc is not None else 0


# ---- fetched weights into a model ---------------------------------------------------------------------------
def value_problems(state_dict: Mapping[str, Tensor], real_keys: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """What is wrong with the values of ``state_dict`` at ``real_keys`` (the keys that hold real numbers), as
    (label, items): an integer or bool tensor (load_state_dict would cast it silently), a NaN or infinite value
    (every prediction would be NaN without a word)."""
    keys = [k for k in real_keys if k in state_dict]
    not_real = [f"{k}: {state_dict[k].dtype}" for k in keys
                if not (state_dict[k].is_floating_point() or state_dict[k].is_complex())]
    not_finite = [k for k in keys
                  if state_dict[k].is_floating_point() and not bool(torch.isfinite(state_dict[k]).all())]
    return [("integer or bool tensors for real weights", not_real), ("tensors with NaN or infinite values", not_finite)]


def _fetch_named(source: Source, cache_dir: Optional[Union[str, Path]]) -> FetchedWeights:
    """:func:`fetch_weights` of one source whose error always names the source (a Hub failure named only the
    file it looked for, e.g. ``model.safetensors``)."""
    try:
        return fetch_weights(source, cache_dir)
    except CheckpointError as exc:
        if source.location in str(exc):
            raise
        raise CheckpointError(f"{source}: {exc}") from None


def load_weights(model: nn.Module, name: str, fetched: FetchedWeights) -> nn.Module:
    """Load fetched weights strictly into ``model`` (any layout); a classifier of another size keeps its
    initialisation (with a warning). Attaches ``model.class_names`` when the source says them, and the
    preprocessing the weights expect (:func:`set_preprocessing`: the source's, else the card's).

    Args:
        model: built for ``name``.
        name: the zoo model.
        fetched: the weights (:func:`~res2net.weights.sources.fetch_weights`).

    Returns:
        ``model``, loaded.
    """
    state_dict = to_our_layout(fetched.state_dict, name, model)
    load_state_dict_strict(model, state_dict, str(fetched.source), allow_new_classifier=True)
    if fetched.classes and len(fetched.classes) == getattr(model, "num_classes", None):
        model.class_names = list(fetched.classes)  # type: ignore[assignment]
    in_chans = int(getattr(model, "in_chans", 3))
    prep = fetched.preprocessing or checkpoint_preprocessing(fetched.info, name, in_chans)
    return set_preprocessing(model, prep)


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """A first-convolution weight ``(O, C, k, k)`` for ``in_chans`` input channels, timm's convention: to 1
    channel, the sum over the input channels (a grey image seen as equal R, G and B); to more, the channels
    repeated and scaled by ``C / in_chans`` so the response to a grey image keeps its scale."""
    have = weight.shape[1]
    if in_chans == have:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_chans // have)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (have / in_chans)


def load_for_finetuning(model: nn.Module, name: str, fetched: FetchedWeights,
                        classes: Optional[Sequence[str]] = None) -> List[str]:
    """Load a pretrained backbone into ``model`` (built for the new data's classes and input channels): every
    backbone key strictly (another architecture's file fails naming its missing/unexpected keys), the first
    convolution adapted when the input channels differ, and the classifier kept only when it is the same
    classifier (same size and, where both are known, the same class names). Returns the notes said on stderr
    (what was adapted and which keys were re-initialised)."""
    state = to_our_layout(fetched.state_dict, name, model)
    own = model.state_dict()
    notes = []
    with torch.device("meta"):
        first = next(f"{n}.weight" for n, m in registry.build_model(name).named_modules()
                     if isinstance(m, nn.Conv2d))
    if first in state and first in own and state[first].shape[1] != own[first].shape[1]:
        have, want = state[first].shape[1], own[first].shape[1]
        state[first] = adapt_input_channels(state[first], want)
        notes.append(f"{first} adapted from {have} to {want} input channel(s) "
                     f"({'sum over the channels' if want == 1 else 'channels repeated and rescaled'}, timm's "
                     "convention)")
    head = [k for k in state if k.startswith("fc.")]
    same_size = all(k in own and own[k].shape == state[k].shape for k in head)
    same_names = not (fetched.classes and classes) or list(fetched.classes) == list(classes)
    if head and not (same_size and same_names):
        for k in head:
            del state[k]
        for k in own:
            if k.startswith("fc."):
                state[k] = own[k]
        was = f"{state_dict_shape(fetched.state_dict, name)[1]} classes" if not fetched.classes else \
            f"classes {', '.join(fetched.classes[:5])}{' ...' if len(fetched.classes) > 5 else ''}"
        now = f"{len(classes)} classes" if classes else "the new head"
        notes.append(f"classifier re-initialised (fc.weight, fc.bias): the weights have {was}, the data {now}; "
                     "every other key is loaded")
    elif head:
        notes.append("classifier kept: the weights' classes are the data's")
    load_state_dict_strict(model, state, str(fetched.source))
    return notes


# ---- the public factory and the one loader ------------------------------------------------------------------
def create_model(name: str, pretrained: Pretrained = False, *, cache_dir: Optional[Union[str, Path]] = None,
                 **kwargs: Any) -> nn.Module:
    """Build a zoo model and, with ``pretrained``, load its weights.

    Args:
        name: a zoo name (:func:`~res2net.models.list_models`) or alias.
        pretrained: ``False``; ``True`` or ``"official"`` = the official checkpoint (hash-checked), then timm's
            Hub copy; ``"hf-hub:ORG/REPO[@REV]"``; a URL; a ``.pth``/``.bin``/``.safetensors`` file; or a folder
            of :func:`~res2net.weights.save_pretrained`. Loading is strict.
        cache_dir: moves the weight caches (:mod:`res2net.weights.sources`).
        **kwargs: the arguments of :func:`res2net.models.build_model`. Unless given, ``num_classes`` and
            ``in_chans`` follow the weights (a fine-tuned folder comes back with its own head and classes).

    Returns:
        The model (in training mode, as built); loaded, it carries the weights' preprocessing
        (:func:`load_model`).

    >>> create_model("res2net50_26w_4s", num_classes=10)(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """
    pretrained = parse_pretrained(pretrained)
    if not pretrained:
        return registry.build_model(name, **kwargs)
    return load_model(pretrained, name, cache_dir=cache_dir, **kwargs)


def require_classifier(info: CheckpointInfo) -> None:
    """A training checkpoint of a dense task (detection, segmentation, saliency) is refused by the classification
    commands with one line naming its task and the command that reads it (not a list of missing keys)."""
    if info.task not in (None, "classification"):
        raise CheckpointError(f"{info.source} is a {info.task} checkpoint, not a classifier's: use `res2net "
                              f"{DENSE_COMMANDS.get(info.task, info.task)}` with it")


def load_model(source: WeightsSource, name: Optional[str] = None, *, num_classes: Optional[int] = None,
               keep_trained_head: bool = False, cache_dir: Optional[Union[str, Path]] = None,
               **kwargs: Any) -> nn.Module:
    """The one loader: a zoo model shaped like the weights (input channels and classes read from them), loaded
    strictly, with the class names and preprocessing the weights record (our checkpoints, run and
    save_pretrained folders, their Hub copies) written into ``model.pretrained_cfg`` and ``model.preprocessing``.

    Args:
        source: ``True``/``"official"`` (the published weights of ``name``), a checkpoint file, a run or
            save_pretrained folder, ``hf-hub:ORG/REPO[@REV]``, a URL, a checkpoint already read
            (:class:`~res2net.weights.io.CheckpointInfo`), or a state dict (any known layout).
        name: the zoo model; may be left out when the weights say it.
        num_classes: classifier outputs; default the weights' (0: no classifier in the weights). Another number
            re-initialises the classifier with a warning.
        keep_trained_head: refuse (CheckpointError) a ``num_classes`` other than that of a ``res2net train``
            checkpoint, which was trained for its classes.
        cache_dir: moves the weight caches (:mod:`res2net.weights.sources`).
        **kwargs: the other arguments of :func:`res2net.models.build_model` (e.g. ``features_only``).

    Returns:
        The model, as built (training mode).
    """
    if isinstance(source, CheckpointInfo):
        fetched = fetched_from_checkpoint(source)
    elif isinstance(source, Mapping):
        fetched = FetchedWeights(Source("state_dict", "the given state dict"), dict(source))
    else:
        pretrained = parse_pretrained(source)
        if pretrained is True and not name:
            raise CheckpointError("the official weights: give the model name (--model NAME)")
        if pretrained is False:
            raise ValueError(f"load_model: no weights given ({source!r})")
        fetched = fetch_first(name, pretrained, cache_dir) if name else _fetch_named(parse_source(pretrained),
                                                                                       cache_dir)
    if fetched.info is not None:
        require_classifier(fetched.info)
    name = name or fetched.model_name
    if not name:
        raise CheckpointError(f"{fetched.source} does not say which model it holds; give the model name "
                              "(--model NAME)")
    spec = registry.get_spec(name)
    if fetched.model_name and registry.get_spec(fetched.model_name).name != spec.name:
        raise CheckpointError(f"{fetched.source} holds {fetched.model_name}, not {name}")
    in_chans, classes = state_dict_shape(to_our_layout(fetched.state_dict, spec.name), spec.name)
    if keep_trained_head and fetched.is_training_checkpoint and num_classes not in (None, classes):
        raise CheckpointError(f"{fetched.source} was trained with {classes} classes, not {num_classes}")
    kwargs.setdefault("in_chans", in_chans)
    model = registry.build_model(spec.name, num_classes=classes if num_classes is None else num_classes, **kwargs)
    return load_weights(model, spec.name, fetched)


class LoadedModel(NamedTuple):
    """What :func:`model_from_checkpoint` returns."""

    model: nn.Module  # in eval mode, on the CPU
    preprocessing: Preprocessing
    info: CheckpointInfo


def model_from_checkpoint(checkpoint: Union[PathLike, CheckpointInfo], name: Optional[str] = None, *,
                          num_classes: Optional[int] = None, **create_kwargs: Any) -> LoadedModel:
    """:func:`load_model` of a checkpoint file, for callers that also want what the file says about itself.

    Args:
        checkpoint: a checkpoint file (ours, official, timm, torchvision... layouts) or one already read.
        name: the zoo model; read from our checkpoints when left out.
        num_classes: refused when it differs from a ``res2net train`` checkpoint's; for other weights the
            classifier is re-initialised with a warning.
        **create_kwargs: the other arguments of :func:`res2net.models.build_model` (e.g. ``features_only``).

    Returns:
        (model in eval mode, its preprocessing, the checkpoint's description).
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else describe_checkpoint(checkpoint)
    model = load_model(info, name, num_classes=num_classes, keep_trained_head=True, **create_kwargs)
    return LoadedModel(model.eval(), model.preprocessing, info)
