"""Image classification on the shared engine (``res2net train`` / ``res2net eval``: flags in
:mod:`res2net.commands.train`, the work in :mod:`.run`).

``res2net train`` with no arguments runs the embedded default: the ``fashion_mnist`` recipe trains a small
Res2Net and its same-budget ResNet baseline on Fashion-MNIST and writes ``metrics.json``, ``report.md``,
``curves.png`` and ``confusion.png`` to ``--out`` (default ``runs/<timestamp>``). See docs/TRAINING.md.

- :mod:`.config`: the schema (``ClassificationConfig``: model, data, optim, sched, run sections);
- :mod:`.data`: the data sets of a config (``load_data``) with their preprocessing;
- :mod:`.task`: the engine Task (``ClassificationTask``);
- :mod:`.report`: metrics.json, report.md and the plots of a run;
- :mod:`.seeds`: the statistics over seeds (``--seeds N``);
- :mod:`.run`: every model of a config trained with its seeds, then the report (``train_models``); a checkpoint
  scored on a data set (``evaluate_checkpoint``).
"""

from .config import DATASETS, DEFAULT_RECIPE, ClassificationConfig, DataSection, ModelSection
from .data import ClassificationData, load_data
from .report import earlier_models, model_summary, write_report
from .run import evaluate_checkpoint, train_models
from .classifier import ClassificationTask

__all__ = ["DATASETS", "DEFAULT_RECIPE", "ClassificationConfig", "ClassificationData", "ClassificationTask",
           "DataSection", "ModelSection", "earlier_models", "evaluate_checkpoint", "load_data", "model_summary",
           "train_models", "write_report"]
