"""Sharing a model: :func:`save_pretrained` writes a Hugging Face-style folder (``config.json`` with timm's
``pretrained_cfg`` and our section, ``model.safetensors``, a model card ``README.md``) that
:func:`~res2net.weights.load_model` and ``create_model(name, pretrained=folder)`` read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from ..data.preprocessing import Preprocessing
from ..files import atomic_write
from ..models import registry
from .load import preprocessing_of, state_dict_shape
from .sources import CONFIG_FILE, FORMAT_TAG, OFFICIAL_LICENSE, WEIGHTS_FILE


def model_card_text(name: str, classes: Optional[Sequence[str]], preprocessing: Preprocessing,
                    metrics: Optional[Mapping[str, Any]], command: Optional[str], license: str,
                    data: Optional[str]) -> str:
    """The README.md of a :func:`save_pretrained` folder."""
    spec = registry.get_spec(name)
    lines = ["---", f"license: {license.lower().replace(' ', '-')}", "library_name: res2net", "tags:",
             "- image-classification", "- res2net", "---", "", f"# {name}", "",
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
    lines += [f"- Licence: {license}", "", "## Use", "", "```python", "import res2net",
              f'model = res2net.create_model("{name}", pretrained="PATH/OR/hf-hub:ORG/REPO")', "```", ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, folder: Union[str, Path], name: Optional[str] = None, *,
                    classes: Optional[Sequence[str]] = None, preprocessing: Optional[Preprocessing] = None,
                    metrics: Optional[Mapping[str, Any]] = None, command: Optional[str] = None,
                    data: Optional[str] = None, license: Optional[str] = None) -> Path:
    """Write a Hugging Face-style folder: ``config.json`` (model name, architecture, classes, preprocessing),
    ``model.safetensors`` and ``README.md`` (a model card). :func:`~res2net.weights.create_model` with
    ``pretrained=folder`` (or the folder uploaded as ``hf-hub:ORG/REPO``) loads it back with its head, classes and
    preprocessing. The folder is written next to its final place and renamed into it, so it is never half-written.

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
    from safetensors.torch import save_file

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
    licence = license or (OFFICIAL_LICENSE if spec.weights_file else "see the training data's licence")
    config = {
        "architecture": spec.name, "num_classes": num_classes, "num_features": getattr(model, "num_features", None),
        "pretrained_cfg": {"input_size": [in_chans, prep.input_size, prep.input_size], "mean": list(prep.mean),
                           "std": list(prep.std), "crop_pct": prep.crop_pct, "interpolation": prep.interpolation,
                           "num_classes": num_classes, "license": licence},
        FORMAT_TAG: {"model": spec.name, "arch": registry.model_card(spec.name, with_complexity=False)["arch"],
                     "classes": classes, "in_chans": in_chans, "preprocessing": prep.to_dict(),
                     "metrics": dict(metrics or {}), "command": command, "data": data},
    }
    with atomic_write(folder, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model": spec.name})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(model_card_text(spec.name, classes, prep, metrics, command, licence, data))
    return folder
