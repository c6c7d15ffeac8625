"""Where weights come from and go to, and how they become models.

``io`` (reading checkpoint files, unwrapping, hashes), ``layouts`` (other frameworks' key layouts), ``sources``
(every way of naming weights, fetching, caches), ``load`` (the layout step, the one strict loader, the public
:func:`create_model` and the one loader :func:`load_model`), ``hub`` (:func:`save_pretrained`, model cards) and
``convert`` (``res2net convert``). Each module imports only those named before it (tests/test_imports.py).
"""

from .convert import ConvertReport, convert_checkpoint
from .hub import save_pretrained
from .io import CheckpointInfo, describe_checkpoint, read_checkpoint, sha256_of, unwrap_state_dict
from .load import (LoadedModel, adapt_input_channels, card_preprocessing, checkpoint_preprocessing, create_model,
                   load_for_finetuning, load_model, load_state_dict_strict, model_from_checkpoint, preprocessing_of,
                   set_preprocessing, state_dict_shape, to_our_layout)
from .sources import (PRETRAINED_DIR, FetchedWeights, Source, download, fetch_first, fetch_weights, parse_pretrained,
                      parse_source, weights_table)

__all__ = ["CheckpointInfo", "ConvertReport", "FetchedWeights", "LoadedModel", "PRETRAINED_DIR", "Source",
           "adapt_input_channels", "card_preprocessing", "checkpoint_preprocessing", "convert_checkpoint",
           "create_model", "describe_checkpoint", "download", "fetch_first", "fetch_weights", "load_for_finetuning",
           "load_model", "load_state_dict_strict", "model_from_checkpoint", "parse_pretrained", "parse_source",
           "preprocessing_of", "read_checkpoint", "save_pretrained", "set_preprocessing", "sha256_of",
           "state_dict_shape", "to_our_layout", "unwrap_state_dict", "weights_table"]
