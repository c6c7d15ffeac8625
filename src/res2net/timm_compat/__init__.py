"""The zoo in timm's registry: after :func:`register_timm_models`, ``timm.create_model("r2n_<name>")`` builds
our model (official key layout, our ``FeatureExtractor`` for ``features_only``) and timm's data helpers read
its card (``timm.data.resolve_data_config({}, model=m)``).

Names carry the prefix ``r2n_`` because timm already owns some of ours (``res2net50_26w_4s``, ``resnet50``...)
with another implementation. timm is imported only when :func:`register_timm_models` is called.
"""

import contextlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.registry import MODELS, TIMM_PREFIX, get_spec, pretrained_cfg
from ..weights import create_model, load_model
from . import dla as dla_module
from . import resnet as resnet_module

FEATURE_CLASSES = (None, "getter", "list")  # timm's wrappers that ours matches: a list of maps, in order


def timm_model_name(name: str) -> str:
    """The timm registry name of a zoo model (or alias): ``r2n_`` + its name.

    >>> timm_model_name("res2net50d")
    'r2n_res2net50_v1b_26w_4s'
    """
    return TIMM_PREFIX + get_spec(name).name


def timm_pretrained_cfg(name: str, in_chans: int = 3, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """:func:`~res2net.models.pretrained_cfg` with timm's architecture name."""
    cfg = pretrained_cfg(name, in_chans=in_chans, num_classes=num_classes)
    cfg["architecture"] = timm_model_name(name)
    return cfg


SOURCE_KEYS = ("state_dict", "file", "hf_hub_id", "url")  # timm's pretrained_cfg keys naming the weights


def resolved_cfg(name: str, pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[Dict[str, Any]] = None
                 ) -> Dict[str, Any]:
    """The ``pretrained_cfg`` timm resolves for the zoo model ``name``: the registered one (or
    ``pretrained_cfg`` when it is a dict or timm ``PretrainedCfg``; a tag string selects the registered one),
    updated by ``pretrained_cfg_overlay``.

    Args:
        name: a zoo name or alias.
        pretrained_cfg: timm's ``pretrained_cfg`` argument (``hf-hub:`` loads pass the folder's).
        pretrained_cfg_overlay: keys that replace the resolved ones (``file``, ``url``, ``hf_hub_id``...).

    Returns:
        A new dict.
    """
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        cfg = timm_pretrained_cfg(name)
    elif isinstance(pretrained_cfg, dict):
        cfg = dict(pretrained_cfg)
    else:
        cfg = dict(pretrained_cfg.to_dict())
    if pretrained_cfg_overlay:
        if not isinstance(pretrained_cfg_overlay, dict):
            raise ValueError(f"pretrained_cfg_overlay must be a dict, got {type(pretrained_cfg_overlay).__name__}")
        cfg.update(pretrained_cfg_overlay)
    return cfg


def weights_of_cfg(name: str, cfg: Dict[str, Any]) -> Union[bool, str, Dict[str, torch.Tensor]]:
    """Where a resolved ``pretrained_cfg`` says the weights are, in timm's order: ``state_dict``, then ``file``
    (a local folder for ``source="local-dir"``), then ``hf_hub_id`` (first when ``source="hf-hub"``), then ``url``.
    The registered sources unchanged give ``True`` (:func:`res2net.create_model`'s published weights: the official
    file, hash-checked, then timm's Hub copy).

    Args:
        name: the zoo model.
        cfg: from :func:`resolved_cfg`.

    Returns:
        A state dict, a ``pretrained`` value for :func:`res2net.create_model`, or ``True``.

    Raises:
        CheckpointError: the registered sources were cleared and nothing replaces them.
    """
    if cfg.get("state_dict") is not None:
        if not isinstance(cfg["state_dict"], dict):
            raise ValueError(f"pretrained_cfg state_dict must be a dict of tensors, got "
                             f"{type(cfg['state_dict']).__name__}")
        return cfg["state_dict"]
    if cfg.get("file"):
        return str(cfg["file"])
    default = timm_pretrained_cfg(name)
    hub, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub and (cfg.get("source") == "hf-hub" or hub != default.get("hf_hub_id")):
        return f"hf-hub:{hub}"
    if url and url != default.get("url"):
        return str(url)
    if (hub, url or "") == (default.get("hf_hub_id"), default.get("url") or ""):
        return True
    if hub or url:
        return f"hf-hub:{hub}" if hub else str(url)
    raise CheckpointError(f"{timm_model_name(name)}: pretrained=True, but the pretrained_cfg names no weights "
                          f"(none of {', '.join(SOURCE_KEYS)})")


def check_dla_out_indices(name: str, out_indices: Any) -> None:
    """Refuse timm's DLA feature indices on our DLA trunks, with the models that work instead.

    timm's DLA counts ``level0`` (stride 1) as feature 0; ours starts at ``level1`` (stride 2), so our indices are
    0-4 (strides 2-32). segmentation_models_pytorch's ``tu-`` encoders ask any name containing ``dla`` for
    ``out_indices=(1, ..., 5)``; such frameworks need a ResNet-trunk model.

    Args:
        name: a zoo model.
        out_indices: the ``out_indices`` passed to timm.

    Raises:
        ValueError: one line naming the trunks to use instead.
    """
    spec = get_spec(name)
    count = len(getattr(spec.arch, "levels", ())) - 1
    if spec.family != "dla" or out_indices is None or all(isinstance(i, int) and i < count for i in out_indices):
        return
    usable = [timm_model_name(s.name) for s in MODELS if s.family == "resnet" and s.arch.stem != "cifar"]
    raise ValueError(f"out_indices {tuple(out_indices)}: {timm_model_name(name)} gives features 0-{count - 1} "
                     f"(level1-level{count}, strides 2-{2 ** count}); timm's own DLA counts level0 (stride 1) as "
                     "0, and frameworks that assume that (segmentation_models_pytorch's tu- encoders) need a "
                     f"ResNet-trunk model: {', '.join(usable[:3])}, ... ({len(usable)} models; not the CIFAR trunks)")


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    """timm's entrypoint for the zoo model ``name``: timm's factory arguments in, :func:`create_model` out."""

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   cache_dir: Any = None, device: Any = None, dtype: Optional[torch.dtype] = None,
                   feature_cls: Any = None, feature_cfg: Optional[Dict[str, Any]] = None,
                   pretrained_model_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> nn.Module:
        if cache_dir is not None:
            raise ValueError("cache_dir: res2net downloads into torch.hub's / huggingface_hub's cache; set "
                             "TORCH_HOME or HF_HOME instead")
        feature_cls = (feature_cfg or {}).get("feature_cls", feature_cls)
        if feature_cls not in FEATURE_CLASSES:
            raise ValueError(f"feature_cls {feature_cls!r}: res2net models give their features through "
                             "res2net.models.FeatureExtractor (a list of maps, like timm's 'getter')")
        if kwargs.get("features_only"):
            check_dla_out_indices(name, kwargs.get("out_indices"))
        cfg = resolved_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        weights = weights_of_cfg(name, cfg) if pretrained else False
        with torch.device(device) if device is not None else contextlib.nullcontext():
            if isinstance(weights, dict):
                model = load_model(weights, name, **kwargs)
            else:
                model = create_model(name, pretrained=weights, **kwargs)
        if dtype is not None:
            model.to(dtype=dtype)
        # the model's own (the card's, or the loaded weights' preprocessing and classes), then what the resolved
        # cfg adds: the weights' source, the overlay, keys the model's lacks (a Hub folder's label_names)
        final = dict(model.pretrained_cfg)
        for key, value in cfg.items():
            if key in (pretrained_cfg_overlay or {}) or key in SOURCE_KEYS + ("source",) or final.get(key) is None:
                final[key] = value
        final.pop("state_dict", None)  # the weights themselves do not stay in the config
        final["architecture"] = timm_model_name(name)
        model.pretrained_cfg = model.default_cfg = final
        model.pretrained_model_args = dict(pretrained_model_args or {})
        return model

    spec = get_spec(name)
    entrypoint.__name__ = entrypoint.__qualname__ = timm_model_name(name)
    entrypoint.__doc__ = (f"{spec.description}: res2net's {name!r} (official key layout) for "
                          f"timm.create_model. Takes create_model's arguments.")
    return entrypoint


def register_timm_models(names: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """Register zoo models (default: all) in timm's registry; returns ``{our name: timm name}``. Each gets a
    ``pretrained_cfg`` from its card (size, mean/std, crop, interpolation, first conv, classifier, pool size,
    weights' url / hf_hub_id / licence). Calling it again is harmless.

    Args:
        names: zoo names or aliases to register (default: every model).

    Returns:
        ``{our name: timm name}`` (the timm names carry the prefix ``r2n_``).

    >>> import timm
    >>> names = register_timm_models(["res2net17_slim"])
    >>> m = timm.create_model(names["res2net17_slim"])
    >>> timm.data.resolve_data_config({}, model=m)["input_size"]
    (3, 32, 32)
    """
    try:
        import timm.models
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("register_timm_models needs timm: pip install timm") from err
    selected: List[str] = [get_spec(n).name for n in names] if names is not None else [s.name for s in MODELS]
    registered: Dict[str, str] = {}
    for name in selected:
        timm_name = timm_model_name(name)
        registered[name] = timm_name
        if timm.models.is_model(timm_name):
            continue
        module = dla_module if get_spec(name).family == "dla" else resnet_module
        entrypoint = _entrypoint(name)
        entrypoint.__module__ = module.__name__
        setattr(module, timm_name, entrypoint)
        module.default_cfgs[timm_name] = timm_pretrained_cfg(name)
        timm.models.register_model(entrypoint)
    return registered
