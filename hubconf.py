"""torch.hub entry points: one per model of the res2net zoo.

    >>> model = torch.hub.load("<this repository>", "res2net50_v1b_26w_4s", source="local", pretrained=True)

Each entry takes the arguments of :func:`res2net.create_model` (``pretrained``, ``num_classes``, ``in_chans``,
``features_only``, ``out_indices``, ``output_stride``...). ``src/`` is put first on ``sys.path`` so that the
checkout torch.hub loads is the code that runs, installed or not.
"""

import os
import sys
import typing

dependencies = ["torch", "torchvision"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

import res2net  # noqa: E402  (after the sys.path insert)
from res2net.models import MODELS  # noqa: E402


def _entry(name: str, description: str, weights: bool) -> typing.Callable[..., typing.Any]:
    def entry(pretrained: bool = False, **kwargs: typing.Any) -> typing.Any:
        return res2net.create_model(name, pretrained=pretrained, **kwargs)

    source = ("True: the official ImageNet weights (CC BY-NC-SA 4.0, non-commercial)" if weights
              else "no weights are published for this model")
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{description}: res2net zoo model {name!r} (official key layout).\n\n"
                     f"pretrained: {source}; a checkpoint path or URL loads that file.\n"
                     "Other keyword arguments: those of res2net.create_model.")
    return entry


for _spec in MODELS:
    globals()[_spec.name] = _entry(_spec.name, _spec.description, _spec.weights_file is not None)
