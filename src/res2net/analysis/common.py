"""The model (with its preprocessing) an analysis runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from torch import nn

from ..data.preprocessing import Preprocessing
from ..models import create_model
from ..weights import card_preprocessing, model_from_checkpoint


def trained_model(name: str, checkpoint: Optional[str | Path] = None) -> Tuple[nn.Module, Preprocessing]:
    """A named model in eval mode and the preprocessing it expects: from ``checkpoint`` through the package's one
    checkpoint -> model path (input channels, classes and the training run's preprocessing read from the file),
    else random weights and the model card's preprocessing."""
    if checkpoint is None:
        return create_model(name).eval(), card_preprocessing(name)
    loaded = model_from_checkpoint(checkpoint, name)
    return loaded.model, loaded.preprocessing
