"""Sharing a model: :func:`save_pretrained` writes a Hugging Face folder (``config.json`` in timm's format with our
section, ``model.safetensors``, a model card ``README.md``) that timm (``hf-hub:``), transformers (its
``TimmWrapper``), :func:`~res2net.weights.load_model` and ``create_model(name, pretrained=folder)`` read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from ..data.preprocessing import Preprocessing
from ..files import atomic_write
from ..models import registry
from . import layouts
from .load import preprocessing_of, state_dict_shape
from .sources import CONFIG_FILE, FORMAT_TAG, OFFICIAL_LICENSE, WEIGHTS_FILE


def hub_architecture(name: str) -> Tuple[str, str]:
    """The architecture name a :func:`save_pretrained` folder gives timm and the key layout of its weights: timm's
    own name and layout where timm has the model (plain ``pip install timm`` loads it), else our timm registry name
    (``r2n_`` + ours, registered by :func:`res2net.register_timm_models`) and the official layout.

    Args:
        name: a zoo name or alias.

    Returns:
        ``(architecture, layout)``, e.g. ``("dla60_res2net", "timm")`` or ``("r2n_res2net17_slim", "official")``.
    """
    spec = registry.get_spec(name)
    return (spec.timm_name, "timm") if spec.timm_name else (registry.TIMM_PREFIX + spec.name, "official")


def needs_res2net(name: str) -> Optional[str]:
    """What to install and call before timm or transformers can build the folder's model (None: plain timm)."""
    architecture, layout = hub_architecture(name)
    if layout == "timm":
        return None
    return (f"timm has no {architecture}: pip install res2net, then call res2net.register_timm_models() before "
            "timm.create_model or transformers' from_pretrained")


def model_card_text(name: str, classes: Optional[Sequence[str]], preprocessing: Preprocessing,
                    metrics: Optional[Mapping[str, Any]], command: Optional[str], license: str,
                    data: Optional[str]) -> str:
    """The README.md of a :func:`save_pretrained` folder: what the model is, its data, classes, preprocessing,
    metrics and licence, and how timm, transformers and res2net load it."""
    spec = registry.get_spec(name)
    architecture, layout = hub_architecture(spec.name)
    requirement = needs_res2net(spec.name)
    licence_id = license.lower().replace(" ", "-")  # the Hub's metadata takes licence ids; free text is "other"
    lines = ["---", f"license: {licence_id if re.fullmatch(r'[a-z0-9.-]+', licence_id) else 'other'}",
             f"library_name: {'timm' if requirement is None else 'res2net'}", "tags:",
             "- image-classification", "- timm", "- res2net", "---", "", f"# {name}", "",
             f"{spec.description}: a Res2Net model (Gao et al., \"Res2Net: A New Multi-scale Backbone "
             "Architecture\", TPAMI 2021) from the `res2net` package.", "",
             f"- Data: {data or 'not recorded'}",
             f"- Classes ({len(classes) if classes else 'unknown'}): "
             + (", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "") if classes else "not recorded"),
             f"- Input: {preprocessing.input_size} px, mean {list(preprocessing.mean)}, std "
             f"{list(preprocessing.std)}, crop {preprocessing.crop_pct}, {preprocessing.interpolation}"]
    if metrics:
        lines.append("- Metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in metrics.items()))
    if command:
        lines.append(f"- Made with: `{command}`")
    lines += [f"- Licence: {license}",
              f"- Weights: timm architecture `{architecture}`, {layout} key layout"
              + (" (plain `pip install timm` builds it)" if requirement is None else f"; {requirement}"),
              "", "## Use", "", "```python"]
    if requirement is not None:
        lines += ["# pip install res2net timm", "import res2net", "res2net.register_timm_models()"]
    lines += ["import timm", 'model = timm.create_model("hf-hub:ORG/REPO", pretrained=True)', "",
              "from transformers import AutoModelForImageClassification",
              'model = AutoModelForImageClassification.from_pretrained("ORG/REPO")', "",
              "import res2net",
              f'model = res2net.create_model("{name}", pretrained="PATH/OR/hf-hub:ORG/REPO")', "```", ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, folder: Union[str, Path], name: Optional[str] = None, *,
                    classes: Optional[Sequence[str]] = None, preprocessing: Optional[Preprocessing] = None,
                    metrics: Optional[Mapping[str, Any]] = None, command: Optional[str] = None,
                    data: Optional[str] = None, license: Optional[str] = None) -> Path:
    """Write a Hugging Face folder that timm (``timm.create_model("hf-hub:ORG/REPO", pretrained=True)``),
    transformers (``AutoModelForImageClassification``: its ``TimmWrapper``) and res2net read: ``config.json`` in
    timm's format (:func:`hub_architecture`'s name, ``num_classes``, ``label_names``, ``pretrained_cfg`` with the
    preprocessing) plus our section (model, classes, preprocessing, metrics, command, data),
    ``model.safetensors`` (in timm's key layout where timm has the model) and ``README.md`` (a model card).
    :func:`~res2net.weights.create_model` with ``pretrained=folder`` (or ``hf-hub:ORG/REPO``) loads it back with its
    head, classes and preprocessing. The folder is written next to its final place and renamed into it, so it is
    never half-written.

    Args:
        model: a zoo model; it says its name (``pretrained_cfg["architecture"]``, as timm's ``save_for_hf``
            reads it), its class names (``class_names``) and preprocessing (:func:`~.load.preprocessing_of`).
        folder: the folder to write (replaced whole when it exists).
        name: the zoo name, for a model that does not say it (default: the model's own).
        classes, preprocessing: instead of the model's.
        metrics, command, data, license: recorded in the config and the model card.

    Returns:
        ``folder``.
    """
    from safetensors.torch import save  # bytes written by Python: a full disk is an OSError naming the folder

    name = name or registry.model_name(model)
    if not name:
        raise ValueError("save_pretrained: the model does not say its zoo name (pretrained_cfg['architecture']); "
                         "give name=")
    spec = registry.get_spec(name)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    prep = preprocessing or preprocessing_of(model, spec.name)
    classes = list(classes) if classes is not None else getattr(model, "class_names", None)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    in_chans, num_classes = state_dict_shape(state, spec.name)
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"save_pretrained: {len(classes)} class names for a classifier of {num_classes} classes")
    architecture, layout = hub_architecture(spec.name)
    if layout != "official":  # the key renaming only: a fine-tuned head or other input channels keep their shapes
        renames = layouts.key_map(spec.name, layout)
        state = {renames[k]: v for k, v in state.items() if k in renames}
    licence = license or (OFFICIAL_LICENSE if spec.weights_file else "see the training data's licence")
    card = registry.pretrained_cfg(spec.name, in_chans=in_chans, num_classes=num_classes)
    pool = getattr(model, "pool_type", "avg")
    timm_cfg = {k: v for k, v in card.items() if v is not None and k not in (
        "architecture", "url", "hf_hub_id", "origin_url")}  # the folder's weights are not the published ones
    timm_cfg.update(input_size=[in_chans, prep.input_size, prep.input_size], mean=list(prep.mean), std=list(prep.std),
                    crop_pct=prep.crop_pct, interpolation=prep.interpolation, num_classes=num_classes,
                    license=licence, fixed_input_size=False)
    if prep.input_size != spec.input_size:
        timm_cfg.pop("pool_size", None)
    config: Dict[str, Any] = {"architecture": architecture, "num_classes": num_classes,
                              "num_features": getattr(model, "num_features", None)}
    if pool:
        config["global_pool"] = pool
    if classes:
        config["label_names"] = classes
    if pool != "avg":
        config["model_args"] = {"global_pool": pool}
    config["pretrained_cfg"] = timm_cfg
    config[FORMAT_TAG] = {"model": spec.name, "arch": registry.model_card(spec.name, with_complexity=False)["arch"],
                          "classes": classes, "in_chans": in_chans, "preprocessing": prep.to_dict(),
                          "metrics": dict(metrics or {}), "command": command, "data": data,
                          "weights_layout": layout, "requires": needs_res2net(spec.name)}
    with atomic_write(folder, directory=True) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(save(state, metadata={"format": "pt", "model": spec.name, "layout": layout}))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(model_card_text(spec.name, classes, prep, metrics, command, licence, data))
    return folder
