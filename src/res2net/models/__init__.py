"""Model trunks and the registry of named models."""

from .dla import DLA
from .registry import (MODELS, ModelSpec, UnknownModelError, count_macs, count_params, create_model, get_spec,
                       list_models, model_card, model_complexity)
from .resnet import ResNet

__all__ = ["DLA", "MODELS", "ModelSpec", "ResNet", "UnknownModelError", "count_macs", "count_params",
           "create_model", "get_spec", "list_models", "model_card", "model_complexity"]
