"""timm registers a model under the module that defines its entrypoint, and code built on timm selects models
by that name (``timm.list_models(module="dla")``; timm's own tests pick the models that have
``forward_intermediates`` this way). The zoo's DLA-trunk models register from this module; their entrypoints
and ``default_cfgs`` are filled in by :func:`res2net.timm_compat.register_timm_models`."""

from typing import Any, Dict

default_cfgs: Dict[str, Dict[str, Any]] = {}
