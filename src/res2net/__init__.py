"""res2net: Res2Net (Gao et al., TPAMI 2021) models, training, analyses and fast inference."""

import os as _os
import sys as _sys

# On Apple Silicon, operators MPS lacks run on the CPU instead of failing. torch reads the switch when it is
# imported, so it is set here, before our first torch import, unless torch came first or the user chose otherwise.
if _sys.platform == "darwin" and "torch" not in _sys.modules:
    _os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

from .layers import Res2NetBlock  # noqa: E402
from .models import count_macs, count_params, get_spec, list_models, model_card
from .inference import optimize
from .predict import Predictor
from .timm_compat import register_timm_models
from .weights import create_model, load_model, model_from_checkpoint, save_pretrained

__version__ = "0.1.0"

__all__ = ["Predictor", "Res2NetBlock", "__version__", "count_macs", "count_params", "create_model", "get_spec",
           "list_models", "load_model", "model_card", "model_from_checkpoint", "optimize", "register_timm_models",
           "save_pretrained"]
