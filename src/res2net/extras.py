"""Optional features and the extra that installs each: a missing package is one line naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import Res2NetError


class MissingExtraError(Res2NetError):
    """An optional package is not installed; the message names the ``res2net[extra]`` that installs it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'res2net[extra]'``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise
        raise MissingExtraError(f"this feature needs the package {top!r}, which is not installed: "
                                f"pip install 'res2net[{extra}]'") from None
