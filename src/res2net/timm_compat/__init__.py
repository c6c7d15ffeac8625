"""The zoo in timm's registry: after :func:`register_timm_models`, ``timm.create_model("r2n_<name>")`` builds
our model (official key layout, our ``FeatureExtractor`` for ``features_only``) and timm's data helpers read
its card (``timm.data.resolve_data_config({}, model=m)``).

Names carry the prefix ``r2n_`` because timm already owns some of ours (``res2net50_26w_4s``, ``resnet50``...)
with another implementation. timm is imported only when :func:`register_timm_models` is called.
"""

import contextlib
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..models.registry import MODELS, TIMM_PREFIX, get_spec, pretrained_cfg
from ..weights import create_model
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


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    """timm's entrypoint for the zoo model ``name``: timm's factory arguments in, :func:`create_model` out."""

    def entrypoint(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
                   cache_dir: Any = None, device: Any = None, dtype: Optional[torch.dtype] = None,
                   feature_cls: Any = None, feature_cfg: Optional[Dict[str, Any]] = None, **kwargs: Any) -> nn.Module:
        if cache_dir is not None:
            raise ValueError("cache_dir: res2net downloads into torch.hub's / huggingface_hub's cache; set "
                             "TORCH_HOME or HF_HOME instead")
        feature_cls = (feature_cfg or {}).get("feature_cls", feature_cls)
        if feature_cls not in FEATURE_CLASSES:
            raise ValueError(f"feature_cls {feature_cls!r}: res2net models give their features through "
                             "res2net.models.FeatureExtractor (a list of maps, like timm's 'getter')")
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = create_model(name, pretrained=pretrained, **kwargs)
        if dtype is not None:
            model.to(dtype=dtype)
        cfg = dict(model.pretrained_cfg)  # the card's, or the loaded weights' preprocessing and classes
        cfg["architecture"] = timm_model_name(name)
        for overlay in (pretrained_cfg, pretrained_cfg_overlay):
            if overlay is not None and not isinstance(overlay, str):
                cfg.update(overlay if isinstance(overlay, dict) else overlay.to_dict())
        model.pretrained_cfg = model.default_cfg = cfg
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
