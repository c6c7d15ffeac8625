"""Model trunks and the registry of named models."""

from .common import FeatureExtractor, FeatureInfo
from .dla import DLA, DLAArch
from .registry import (MODELS, ModelSpec, UnknownModelError, build_model, count_macs, count_params, get_spec,
                       list_models, model_card, model_complexity, model_name, pretrained_cfg)
from .resnet import ResNet, ResNetArch

__all__ = ["DLA", "DLAArch", "FeatureExtractor", "FeatureInfo", "MODELS", "ModelSpec", "ResNet", "ResNetArch",
           "UnknownModelError", "build_model", "count_macs", "count_params", "get_spec", "list_models",
           "model_card", "model_complexity", "model_name", "pretrained_cfg"]
