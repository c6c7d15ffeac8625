"""res2net: Res2Net (Gao et al., TPAMI 2021) models, training, analyses and fast inference."""

from .layers import Res2NetBlock
from .models import count_macs, count_params, create_model, get_spec, list_models, model_card
from .timm_compat import register_timm_models
from .optimize import optimize

__version__ = "0.1.0"

__all__ = ["Res2NetBlock", "__version__", "count_macs", "count_params", "create_model", "get_spec",
           "list_models", "model_card", "optimize", "register_timm_models"]
