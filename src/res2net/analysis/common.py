"""The model (with its preprocessing) an analysis runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from torch import nn

from ..data.preprocessing import Preprocessing
from ..models import build_model
from ..weights import load_model, preprocessing_of


def trained_model(name: str, checkpoint: Optional[str | Path] = None) -> Tuple[nn.Module, Preprocessing]:
    """A named model in eval mode and the preprocessing it expects: from ``checkpoint`` through the one loader
    (:func:`res2net.weights.load_model`: input channels, classes and the training run's preprocessing read from the
    file), else random weights and the model card's preprocessing.

    Args:
        name: the zoo model.
        checkpoint: its weights (any source :func:`~res2net.weights.load_model` reads); None: random weights.

    Returns:
        (model in eval mode, its preprocessing).
    """
    model = build_model(name) if checkpoint is None else load_model(checkpoint, name)
    return model.eval(), preprocessing_of(model, name)
