"""Model trunks and the registry of named models."""

from .common import FeatureExtractor, FeatureInfo
from .dla import DLA, DLAArch
from .registry import (MODELS, ModelSpec, UnknownModelError, count_macs, count_params, create_model, get_spec,
                       list_models, model_card, model_complexity, pretrained_cfg)
from .resnet import ResNet, ResNetArch

__all__ = ["DLA", "DLAArch", "FeatureExtractor", "FeatureInfo", "MODELS", "ModelSpec", "ResNet", "ResNetArch",
           "UnknownModelError", "count_macs", "count_params", "create_model", "get_spec", "list_models",
           "model_card", "model_complexity", "pretrained_cfg"]
