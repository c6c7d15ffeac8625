"""Where pretrained weights come from: the official host (hash-checked), the Hugging Face Hub copies that timm
publishes of the same weights, any ``hf-hub:`` repository, a URL, a file, or a folder written by
:func:`save_pretrained`; and :func:`create_model`, the public model factory that loads them.

``pretrained=True`` tries the model's sources in order (official URL, then ``timm/<name>.in1k``) and names
every failure in the final error. Weights in another framework's key layout (timm, torchvision, mmdetection,
mmpretrain, detectron2) are renamed to ours (:mod:`res2net.layouts`) before the strict load.

Caches: the official files live in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), the Hub files in
huggingface_hub's (``$HF_HOME``; ``HF_HUB_OFFLINE=1`` reads it without a network). ``RES2NET_CACHE`` (or
``cache_dir=``) moves both under one folder (``official/`` and ``huggingface/``), for machines that get their
weights ahead of time with ``res2net weights download``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data.preprocessing import Preprocessing
from .errors import CheckpointError, Res2NetError
from .files import atomic_write
from .models import registry
from .weights import (HASH_IN_NAME, card_preprocessing, describe_checkpoint, load_state_dict_strict, read_checkpoint,
                      sha256_of, state_dict_shape, to_our_layout, unwrap_state_dict)

OFFICIAL_LICENSE = "CC BY-NC-SA 4.0"
OFFICIAL_LICENSE_NOTE = ("the official Res2Net weights are licensed CC BY-NC-SA 4.0 (non-commercial use only; "
                         "https://creativecommons.org/licenses/by-nc-sa/4.0/)")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's preference order
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_TAG = "res2net"  # key of our section in config.json
PRETRAINED_DIR = "pretrained"  # the save_pretrained folder of a run's best model, beside best.pt

Pretrained = Union[bool, str, Path]


@dataclass(frozen=True)
class Source:
    """One place weights can come from: ``kind`` is official | hf-hub | url | file | folder."""

    kind: str
    location: str  # URL, Hub repository id, or local path
    revision: Optional[str] = None  # hf-hub only

    def __str__(self) -> str:
        if self.kind == "hf-hub":
            return f"hf-hub:{self.location}" + (f"@{self.revision}" if self.revision else "")
        return self.location


@dataclass
class FetchedWeights:
    """Weights read from a source: the state dict (in the source's layout) and, for our folders, the model's
    name, classes and preprocessing."""

    source: Source
    state_dict: Dict[str, Tensor]
    model_name: Optional[str] = None
    classes: Optional[List[str]] = None
    preprocessing: Optional[Preprocessing] = None


# ---- sources and caches -----------------------------------------------------------------------------------
def cache_root(cache_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The one folder holding both caches (``cache_dir`` or ``$RES2NET_CACHE``); None: the libraries' own."""
    root = cache_dir or os.environ.get("RES2NET_CACHE")
    return Path(root).expanduser() if root else None


def official_cache(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where official files are cached (torch.hub's ``checkpoints`` folder unless moved)."""
    root = cache_root(cache_dir)
    return root / "official" if root else Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache(cache_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """Where Hub files are cached (None: huggingface_hub's default, ``$HF_HOME/hub``)."""
    root = cache_root(cache_dir)
    return root / "huggingface" if root else None


def hub_repo(name: str) -> Optional[str]:
    """timm's Hugging Face copy of the official weights of ``name`` (``timm/<timm name>.in1k``), if any."""
    spec = registry.get_spec(name)
    return f"timm/{spec.timm_name}.in1k" if spec.weights_file and spec.timm_name else None


def known_sources(name: str) -> List[Source]:
    """The sources ``pretrained=True`` tries for ``name``, in order."""
    spec = registry.get_spec(name)
    found = [Source("official", spec.url)] if spec.url else []
    repo = hub_repo(spec.name)
    if repo:
        found.append(Source("hf-hub", repo))
    return found


def parse_source(text: Union[str, Path]) -> Source:
    """``hf-hub:ORG/REPO[@REVISION]``, an ``https://``/``file://`` URL, a folder (of :func:`save_pretrained`) or
    a weights file (.pth/.pt/.bin/.safetensors)."""
    text = str(text)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:"):].partition("@")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(f"pretrained={text!r}: expected hf-hub:ORG/REPO[@REVISION]")
        return Source("hf-hub", repo, revision or None)
    if re.match(r"^(https?|file)://", text):
        return Source("url", text)
    path = Path(text).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in HUB_FILES):
        path = run_folder_weights(path)
    if path.is_dir():
        return Source("folder", str(path))
    if path.is_file():
        return Source("file", str(path))
    raise CheckpointError(f"pretrained={text!r} does not exist (no such file or folder; nor an hf-hub: id or a URL)")


def run_folder_weights(folder: Path) -> Path:
    """The weights of a ``res2net train`` output folder: its ``pretrained/`` folder (or ``best.pt``) for one
    model's folder; for a run of several models, the one model's folder when there is exactly one."""
    for candidate in (folder / PRETRAINED_DIR, folder / "best.pt", folder / "last.pt"):
        if candidate.exists():
            return candidate
    models = [d for d in sorted(folder.iterdir()) if d.is_dir() and (d / "best.pt").is_file()]
    if len(models) == 1:
        return run_folder_weights(models[0])
    if models:
        raise CheckpointError(f"{folder} holds runs of {len(models)} models ({', '.join(d.name for d in models)}); "
                              "give one model's folder")
    raise CheckpointError(f"{folder} holds no weights ({', '.join(HUB_FILES)}, {PRETRAINED_DIR}/ or best.pt)")


def _download_official(url: str, cache_dir: Optional[Union[str, Path]]) -> Dict[str, Tensor]:
    """Fetch ``url`` (``https://`` or ``file://``) through torch.hub's cache with the hash check of its file name
    (``name-<sha256 prefix>.pth``). A mismatching or truncated download is refused and never kept."""
    name = os.path.basename(url.split("?")[0])
    if not HASH_IN_NAME.search(name):
        warnings.warn(f"{name}: no '-<sha256 prefix>' in the file name, so the download is not hash-checked",
                      stacklevel=3)
    target = official_cache(cache_dir)
    first_time = not (target / name).is_file()
    try:
        obj = torch.hub.load_state_dict_from_url(url, model_dir=str(target), map_location="cpu",
                                                 progress=sys.stderr.isatty(), check_hash=True, weights_only=True)
    except RuntimeError as exc:
        if "invalid hash" in str(exc):
            raise CheckpointError(f"hash mismatch, the file was refused and removed ({exc})") from None
        raise CheckpointError(f"cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
    except Exception as exc:  # URLError, HTTPError, OSError, pickle errors of a truncated file
        (target / name).unlink(missing_ok=True)  # torch.hub moves the file into place before reading it
        raise CheckpointError(f"cannot be downloaded: {type(exc).__name__}: {exc}") from None
    if first_time and "shanghuagao" in url:
        print(f"note: {OFFICIAL_LICENSE_NOTE}", file=sys.stderr)
    return unwrap_state_dict(obj, url)


def _hub_file(repo: str, revision: Optional[str], cache_dir: Optional[Union[str, Path]],
              filenames: Sequence[str]) -> Path:
    """The first of ``filenames`` that the Hub repository (or the local Hub cache, offline) has."""
    from huggingface_hub import hf_hub_download

    reasons = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision,
                                        cache_dir=str(hub_cache(cache_dir)) if hub_cache(cache_dir) else None,
                                        library_name="res2net"))
        except Exception as exc:  # EntryNotFound, RepositoryNotFound, LocalEntryNotFound (offline), HTTP errors
            reasons.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise CheckpointError("; ".join(reasons))


def _read_our_config(path: Path) -> Dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    return config if isinstance(config, dict) else {}


def _fetched_from_files(source: Source, weights: Path, config: Optional[Path]) -> FetchedWeights:
    state_dict = unwrap_state_dict(read_checkpoint(weights), str(weights))
    ours = _read_our_config(config).get(FORMAT_TAG, {}) if config is not None and config.is_file() else {}
    prep = Preprocessing.from_dict(ours["preprocessing"]) if "preprocessing" in ours else None
    return FetchedWeights(source, state_dict, ours.get("model"), ours.get("classes"), prep)


def fetch_weights(source: Source, cache_dir: Optional[Union[str, Path]] = None) -> FetchedWeights:
    """Read the weights of one source (downloading into the cache where needed); CheckpointError with the
    reason when it fails. Nothing half-downloaded is left in a cache."""
    if source.kind == "official" or source.kind == "url":
        return FetchedWeights(source, _download_official(source.location, cache_dir))
    if source.kind == "hf-hub":
        weights = _hub_file(source.location, source.revision, cache_dir, HUB_FILES)
        try:
            config: Optional[Path] = _hub_file(source.location, source.revision, cache_dir, (CONFIG_FILE,))
        except CheckpointError:
            config = None
        return _fetched_from_files(source, weights, config)
    if source.kind == "folder":
        folder = Path(source.location)
        weights = next((folder / f for f in HUB_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"folder {folder} holds none of {', '.join(HUB_FILES)}")
        return _fetched_from_files(source, weights, folder / CONFIG_FILE)
    path = Path(source.location)
    match = HASH_IN_NAME.search(path.name)
    if match and not sha256_of(path).startswith(match.group(1)):
        raise CheckpointError(f"SHA-256 does not start with {match.group(1)} as its name says; refused (the file "
                              "may be corrupt or not what its name claims)")
    info = describe_checkpoint(path)
    prep = Preprocessing.from_dict(info.meta["preprocessing"]) if "preprocessing" in info.meta else None
    return FetchedWeights(source, info.state_dict, info.model_name, info.classes, prep)


def fetch_first(name: str, pretrained: Pretrained, cache_dir: Optional[Union[str, Path]] = None
                ) -> FetchedWeights:
    """The weights of ``pretrained`` for ``name``: ``True`` tries :func:`known_sources` in order, saying on
    stderr which one failed and why; all failing -> one CheckpointError listing each."""
    if pretrained is True:
        sources = known_sources(name)
        if not sources:
            raise CheckpointError(f"no official weights are published for {name!r} (nor a Hub copy); pass "
                                  "pretrained=PATH, a URL or "
                                  "hf-hub:ORG/REPO")
    elif isinstance(pretrained, (str, Path)) and str(pretrained):
        sources = [parse_source(pretrained)]
    else:
        raise ValueError(f"pretrained must be True, False, a path, a URL or hf-hub:ORG/REPO, got {pretrained!r}")
    failures = []
    for i, source in enumerate(sources):
        try:
            return fetch_weights(source, cache_dir)
        except CheckpointError as exc:
            failures.append(f"{source}: {exc}")
            if i + 1 < len(sources):
                print(f"warning: weights for {name}: {source}: {exc}; trying the next source", file=sys.stderr)
    raise CheckpointError(f"no weights for {name}: " + " | ".join(failures))


# ---- loading into a model -----------------------------------------------------------------------------------
def load_weights(model: nn.Module, name: str, fetched: FetchedWeights) -> nn.Module:
    """Load fetched weights strictly into ``model`` (any layout); a classifier of another size keeps its
    initialisation (with a warning). Attaches ``model.class_names`` and ``model.preprocessing`` when the
    source says them."""
    state_dict = to_our_layout(fetched.state_dict, name, model)
    load_state_dict_strict(model, state_dict, str(fetched.source), allow_new_classifier=True)
    if fetched.classes and len(fetched.classes) == getattr(model, "num_classes", None):
        model.class_names = list(fetched.classes)  # type: ignore[assignment]
    if fetched.preprocessing is not None:
        model.preprocessing = fetched.preprocessing  # type: ignore[assignment]
    return model


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """A first-convolution weight ``(O, C, k, k)`` for ``in_chans`` input channels, timm's convention: to 1
    channel, the sum over the input channels (a grey image seen as equal R, G and B); to more, the channels
    repeated and scaled by ``C / in_chans`` so the response to a grey image keeps its scale."""
    have = weight.shape[1]
    if in_chans == have:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    repeats = -(-in_chans // have)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (have / in_chans)


def load_for_finetuning(model: nn.Module, name: str, fetched: FetchedWeights,
                        classes: Optional[Sequence[str]] = None) -> List[str]:
    """Load a pretrained backbone into ``model`` (built for the new data's classes and input channels): every
    backbone key strictly (another architecture's file fails naming its missing/unexpected keys), the first
    convolution adapted when the input channels differ, and the classifier kept only when it is the same
    classifier (same size and, where both are known, the same class names). Returns the notes said on stderr
    (what was adapted and which keys were re-initialised)."""
    state = to_our_layout(fetched.state_dict, name, model)
    own = model.state_dict()
    notes = []
    with torch.device("meta"):
        first = next(f"{n}.weight" for n, m in registry.create_model(name).named_modules()
                     if isinstance(m, nn.Conv2d))
    if first in state and first in own and state[first].shape[1] != own[first].shape[1]:
        have, want = state[first].shape[1], own[first].shape[1]
        state[first] = adapt_input_channels(state[first], want)
        notes.append(f"{first} adapted from {have} to {want} input channel(s) "
                     f"({'sum over the channels' if want == 1 else 'channels repeated and rescaled'}, timm's "
                     "convention)")
    head = [k for k in state if k.startswith("fc.")]
    same_size = all(k in own and own[k].shape == state[k].shape for k in head)
    same_names = not (fetched.classes and classes) or list(fetched.classes) == list(classes)
    if head and not (same_size and same_names):
        for k in head:
            del state[k]
        for k in own:
            if k.startswith("fc."):
                state[k] = own[k]
        was = f"{state_dict_shape(fetched.state_dict, name)[1]} classes" if not fetched.classes else \
            f"classes {', '.join(fetched.classes[:5])}{' ...' if len(fetched.classes) > 5 else ''}"
        now = f"{len(classes)} classes" if classes else "the new head"
        notes.append(f"classifier re-initialised (fc.weight, fc.bias): the weights have {was}, the data {now}; "
                     "every other key is loaded")
    elif head:
        notes.append("classifier kept: the weights' classes are the data's")
    load_state_dict_strict(model, state, str(fetched.source))
    return notes


def create_model(name: str, pretrained: Pretrained = False, *, cache_dir: Optional[Union[str, Path]] = None,
                 **kwargs: Any) -> nn.Module:
    """Build a zoo model (the arguments of :func:`res2net.models.create_model`) and, with ``pretrained``, load its
    weights: ``True`` = the official checkpoint (hash-checked), then timm's Hub copy; ``"hf-hub:ORG/REPO[@REV]"``;
    a URL; a ``.pth``/``.bin``/``.safetensors`` file; or a folder of :func:`save_pretrained`. Loading is strict.
    Unless given, ``num_classes`` and ``in_chans`` follow the weights (a fine-tuned folder comes back with its
    own head and classes).

    >>> create_model("res2net50_26w_4s", num_classes=10)(torch.randn(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """
    if not pretrained:
        return registry.create_model(name, **kwargs)
    return _build(name, fetch_first(name, pretrained, cache_dir), kwargs)


def load_model(source: Union[str, Path], name: Optional[str] = None, *,
               cache_dir: Optional[Union[str, Path]] = None, **kwargs: Any) -> nn.Module:
    """A model from weights that say which model they hold (our checkpoints, run and save_pretrained folders,
    their Hub copies): ``name`` may be left out. Otherwise as :func:`create_model`."""
    if name is None:
        fetched = fetch_weights(parse_source(source), cache_dir)
        if not fetched.model_name:
            raise CheckpointError(f"{source} does not say which model it holds; give the model name (--model NAME)")
        return _build(fetched.model_name, fetched, kwargs)
    return create_model(name, pretrained=source, cache_dir=cache_dir, **kwargs)


def _build(name: str, fetched: FetchedWeights, kwargs: Dict[str, Any]) -> nn.Module:
    if fetched.model_name and registry.get_spec(fetched.model_name).name != registry.get_spec(name).name:
        raise CheckpointError(f"{fetched.source} holds {fetched.model_name}, not {name}")
    in_chans, classes = state_dict_shape(to_our_layout(fetched.state_dict, name), name)
    kwargs.setdefault("in_chans", in_chans)
    if classes and kwargs.get("num_classes") is None:
        kwargs["num_classes"] = classes
    return load_weights(registry.create_model(name, **kwargs), name, fetched)


# ---- sharing a model ----------------------------------------------------------------------------------------
def model_card_text(name: str, classes: Optional[Sequence[str]], preprocessing: Preprocessing,
                    metrics: Optional[Mapping[str, Any]], command: Optional[str], license: str,
                    data: Optional[str]) -> str:
    """The README.md of a :func:`save_pretrained` folder."""
    spec = registry.get_spec(name)
    lines = ["---", f"license: {license.lower().replace(' ', '-')}", "library_name: res2net", "tags:",
             "- image-classification", "- res2net", "---", "", f"# {name}", "",
             f"{spec.description}: a Res2Net model (Gao et al., \"Res2Net: A New Multi-scale Backbone "
             "Architecture\", TPAMI 2021) from the `res2net` package.", "",
             f"- Data: {data or 'not recorded'}",
             f"- Classes ({len(classes) if classes else 'unknown'}): "
             + (", ".join(classes[:20]) + (" ..." if len(classes) > 20 else "") if classes else "not recorded"),
             f"- Input: {preprocessing.input_size} px, mean {list(preprocessing.mean)}, std "
             f"{list(preprocessing.std)}, crop {preprocessing.crop_pct}, {preprocessing.interpolation}"]
    if metrics:
        lines.append("- Metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in metrics.items()))
    if command:
        lines.append(f"- Made with: `{command}`")
    lines += [f"- Licence: {license}", "", "## Use", "", "```python", "import res2net",
              f'model = res2net.create_model("{name}", pretrained="PATH/OR/hf-hub:ORG/REPO")', "```", ""]
    return "\n".join(lines)


def save_pretrained(model: nn.Module, folder: Union[str, Path], name: str, *,
                    classes: Optional[Sequence[str]] = None, preprocessing: Optional[Preprocessing] = None,
                    metrics: Optional[Mapping[str, Any]] = None, command: Optional[str] = None,
                    data: Optional[str] = None, license: Optional[str] = None) -> Path:
    """Write a Hugging Face-style folder: ``config.json`` (model name, architecture, classes, preprocessing),
    ``model.safetensors`` and ``README.md`` (a model card). :func:`create_model` with ``pretrained=folder`` (or
    the folder uploaded as ``hf-hub:ORG/REPO``) loads it back with its head, classes and preprocessing. The
    folder is written next to its final place and renamed into it, so it is never half-written."""
    from safetensors.torch import save_file

    spec = registry.get_spec(name)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    prep = preprocessing or getattr(model, "preprocessing", None) or card_preprocessing(spec.name)
    classes = list(classes) if classes is not None else getattr(model, "class_names", None)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    in_chans, num_classes = state_dict_shape(state, spec.name)
    licence = license or (OFFICIAL_LICENSE if spec.weights_file else "see the training data's licence")
    config = {
        "architecture": spec.name, "num_classes": num_classes, "num_features": getattr(model, "num_features", None),
        "pretrained_cfg": {"input_size": [in_chans, prep.input_size, prep.input_size], "mean": list(prep.mean),
                           "std": list(prep.std), "crop_pct": prep.crop_pct, "interpolation": prep.interpolation,
                           "num_classes": num_classes, "license": licence},
        FORMAT_TAG: {"model": spec.name, "arch": registry.model_card(spec.name, with_complexity=False)["arch"],
                     "classes": classes, "in_chans": in_chans, "preprocessing": prep.to_dict(),
                     "metrics": dict(metrics or {}), "command": command, "data": data},
    }
    with atomic_write(folder, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "model": spec.name})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str, allow_nan=False) + "\n")
        (tmp / "README.md").write_text(model_card_text(spec.name, classes, prep, metrics, command, licence, data))
    return folder


# ---- what is cached -----------------------------------------------------------------------------------------
def cached_sources(name: str, cache_dir: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """Per known source of ``name``: where it is, whether a copy is in the local cache (path, size, sha256)."""
    rows = []
    for source in known_sources(name):
        path: Optional[Path] = None
        if source.kind == "official":
            candidate = official_cache(cache_dir) / os.path.basename(source.location)
            path = candidate if candidate.is_file() else None
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                for filename in HUB_FILES:
                    found = try_to_load_from_cache(source.location, filename,
                                                   cache_dir=str(hub_cache(cache_dir)) if hub_cache(cache_dir)
                                                   else None)
                    if isinstance(found, str):
                        path = Path(found)
                        break
            except ImportError:
                path = None
        rows.append({"source": str(source), "kind": source.kind, "cached": path is not None,
                     "path": str(path) if path else None, "bytes": path.stat().st_size if path else None,
                     "sha256": sha256_of(path) if path else None})
    return rows


def weights_table(pattern: str = "*", cache_dir: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """Rows of ``res2net weights``: each model with known weights, its sources and licence."""
    rows = []
    for name in registry.list_models(pattern):
        if known_sources(name):
            rows.append({"model": name, "license": OFFICIAL_LICENSE, "sources": cached_sources(name, cache_dir)})
    return rows


def download(names: Sequence[str], cache_dir: Optional[Union[str, Path]] = None) -> List[Tuple[str, str]]:
    """Fill the cache ahead of time (for machines without internet): the first source of each model that works.
    Returns (model, source used); CheckpointError naming every model that got none."""
    done, failed = [], []
    for name in names:
        try:
            fetched = fetch_first(registry.get_spec(name).name, True, cache_dir)
        except CheckpointError as exc:
            failed.append(str(exc))
            continue
        done.append((name, str(fetched.source)))
    if failed:
        raise Res2NetError("; ".join(failed))
    return done
