"""Where pretrained weights come from: the official host (hash-checked), the Hugging Face Hub copies that timm
publishes of the same weights, any ``hf-hub:`` repository, a URL, a file, or a folder written by
:func:`res2net.weights.save_pretrained`; what is cached, and filling the caches ahead of time.

Every way of naming weights is parsed here: :func:`parse_pretrained` (``True``/``"official"`` = the model's
published weights, the one place that reads ``"official"``) and :func:`parse_source` (a path, URL or ``hf-hub:``
id). ``pretrained=True`` tries the model's sources in order (official URL, then ``timm/<name>.in1k``) and names
every failure in the final error.

Caches: the official files live in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), the Hub files in
huggingface_hub's (``$HF_HOME``; ``HF_HUB_OFFLINE=1`` reads it without a network). ``RES2NET_CACHE`` (or
``cache_dir=``) moves both under one folder (``official/`` and ``huggingface/``), for machines that get their
weights ahead of time with ``res2net weights download``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..data.preprocessing import Preprocessing
from ..errors import CheckpointError, Res2NetError
from ..models import registry
from .io import HASH_IN_NAME, CheckpointInfo, describe_checkpoint, read_checkpoint, sha256_of, unwrap_state_dict

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
    """One place weights can come from: ``kind`` is official | hf-hub | url | file | folder | state_dict (given in
    memory)."""

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
    info: Optional[CheckpointInfo] = None  # a checkpoint file's own description (ours: meta and config)

    @property
    def is_training_checkpoint(self) -> bool:
        """A checkpoint of ``res2net train`` (it carries its config): trained for its classes."""
        return self.info is not None and self.info.is_ours


# ---- sources and caches -----------------------------------------------------------------------------------
def cache_root(cache_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The one folder holding both caches (``cache_dir`` or ``$RES2NET_CACHE``); None: the libraries' own."""
    root = cache_dir or os.environ.get("RES2NET_CACHE")
    if not root:
        return None
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        given = "--cache-dir" if cache_dir else "$RES2NET_CACHE"
        raise CheckpointError(f"{given} {str(path)!r} is a file, not a folder; give the cache folder")
    return path


def official_cache(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Where official files are cached (torch.hub's ``checkpoints`` folder unless moved)."""
    root = cache_root(cache_dir)
    return root / "official" if root else Path(torch.hub.get_dir()) / "checkpoints"


def official_cache_file(url: str, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """The cached copy of the official file at ``url`` (whether it exists or not)."""
    return official_cache(cache_dir) / os.path.basename(url.split("?")[0])


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
    """``hf-hub:ORG/REPO[@REVISION]``, an ``https://``/``file://`` URL, a folder (of
    :func:`~res2net.weights.save_pretrained`, or a run folder) or a weights file (.pth/.pt/.bin/.safetensors)."""
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


def cached_file_problem(path: Path) -> Optional[str]:
    """Why a cached official file cannot be used (its SHA-256 does not start with the prefix in its name:
    truncated or corrupt), or None when it is sound or its name carries no hash."""
    match = HASH_IN_NAME.search(path.name)
    if match is None or not path.is_file():
        return None
    digest = sha256_of(path)
    if digest.startswith(match.group(1)):
        return None
    return (f"the cached file {path} does not match the hash in its name (sha256 {digest[:12]}..., expected "
            f"{match.group(1)}...; {path.stat().st_size} bytes): it is truncated or corrupt; `res2net weights "
            "download` replaces it")


def _download_official(url: str, cache_dir: Optional[Union[str, Path]]) -> Dict[str, Tensor]:
    """Fetch ``url`` (``https://`` or ``file://``) through torch.hub's cache with the hash check of its file name
    (``name-<sha256 prefix>.pth``). A mismatching or truncated download is refused and never kept."""
    cached = official_cache_file(url, cache_dir)
    if not HASH_IN_NAME.search(cached.name):
        warnings.warn(f"{cached.name}: no '-<sha256 prefix>' in the file name, so the download is not hash-checked",
                      stacklevel=3)
    first_time = not cached.is_file()
    problem = cached_file_problem(cached)  # torch.hub checks the hash of a download only, not of a copy
    if problem:
        raise CheckpointError(problem)
    try:
        obj = torch.hub.load_state_dict_from_url(url, model_dir=str(cached.parent), map_location="cpu",
                                                 progress=sys.stderr.isatty(), check_hash=True, weights_only=True)
    except RuntimeError as exc:
        if "invalid hash" in str(exc):
            raise CheckpointError(f"hash mismatch, the file was refused and removed ({exc})") from None
        raise CheckpointError(f"cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
    except Exception as exc:  # URLError, HTTPError, OSError, pickle errors of a truncated file
        cached.unlink(missing_ok=True)  # torch.hub moves the file into place before reading it
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


def _check_timm_copy(config: Optional[Path], whole: Dict[str, Any], prep: Optional[Preprocessing],
                     classes: Optional[List[str]]) -> None:
    """timm's fields of ``config.json`` (what timm and transformers read) must agree with what res2net reads (its
    own section, the class names): a value edited in one copy only is refused, never ignored."""
    timm_cfg = whole.get("pretrained_cfg") if isinstance(whole.get("pretrained_cfg"), dict) else {}
    pairs: List[Tuple[str, Any, Any]] = []
    if prep is not None:
        pairs += [(f"pretrained_cfg.{key}", timm_cfg[key], ours) for key, ours in (
            ("mean", list(prep.mean)), ("std", list(prep.std)), ("crop_pct", prep.crop_pct),
            ("interpolation", prep.interpolation)) if key in timm_cfg]
        if "input_size" in timm_cfg:
            size = timm_cfg["input_size"]
            pairs.append(("pretrained_cfg.input_size[1:]", size[1:] if isinstance(size, list) else size,
                          [prep.input_size] * 2))
    if classes is not None and "num_classes" in whole:
        pairs.append(("num_classes", whole["num_classes"], len(classes)))
    for key, theirs, ours in pairs:
        if not _same_value(theirs, ours):
            raise CheckpointError(f"{config}: {key} is {theirs!r} but the file's res2net section and class names "
                                  f"say {ours!r}; correct the one that was edited")


def _same_value(a: Any, b: Any) -> bool:
    """Equal, numbers within float rounding (a list element-wise)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _fetched_from_files(source: Source, weights: Path, config: Optional[Path]) -> FetchedWeights:
    state_dict = unwrap_state_dict(read_checkpoint(weights), str(weights))
    whole = _read_our_config(config) if config is not None and config.is_file() else {}
    ours = whole.get(FORMAT_TAG, {})
    try:
        prep = Preprocessing.from_dict(ours["preprocessing"]) if "preprocessing" in ours else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config}: {exc if isinstance(exc, ValueError) else 'bad preprocessing entry'}"
                              ) from None
    architecture = str(whole.get("architecture", ""))  # our r2n_ timm name is ours for sure; timm's may be a card
    name = ours.get("model") or (registry.zoo_name(architecture) if architecture.startswith(registry.TIMM_PREFIX)
                                 else None)
    labels = whole.get("label_names")  # timm's (a list, or a dict when ids have gaps)
    classes = ours.get("classes") or (labels if isinstance(labels, list) else None)
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{config}: classes must be a list of names, got {classes!r}")
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{config}: model must be a name, got {name!r}")
    _check_timm_copy(config, whole, prep, classes)
    return FetchedWeights(source, state_dict, name, classes, prep)


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
    return fetched_from_checkpoint(describe_checkpoint(path), source)


def fetched_from_checkpoint(info: CheckpointInfo, source: Optional[Source] = None) -> FetchedWeights:
    """A checkpoint already read (:func:`~res2net.weights.io.describe_checkpoint`) as fetched weights.

    Args:
        info: the checkpoint's description.
        source: where it came from (default: a file at ``info.source``).

    Returns:
        Its state dict with the model name, classes and preprocessing our checkpoints record.
    """
    prep = Preprocessing.from_dict(info.meta["preprocessing"]) if "preprocessing" in info.meta else None
    return FetchedWeights(source or Source("file", info.source), info.state_dict, info.model_name, info.classes,
                          prep, info)


def parse_pretrained(pretrained: Union[Pretrained, None]) -> Pretrained:
    """The one reading of a ``pretrained`` value: ``True`` or ``"official"`` = the model's published weights
    (:func:`known_sources`), ``False``/``None``/``""`` = none, anything else a source for :func:`parse_source`.

    Args:
        pretrained: a bool, ``"official"``, a path, a URL or ``hf-hub:ORG/REPO[@REVISION]`` (e.g. a config value).

    Returns:
        ``True``, ``False`` or the source as given.
    """
    if pretrained is None or pretrained is False or (isinstance(pretrained, str) and not pretrained):
        return False
    if pretrained is True or (isinstance(pretrained, str) and pretrained == "official"):
        return True
    return pretrained


def fetch_first(name: str, pretrained: Pretrained, cache_dir: Optional[Union[str, Path]] = None
                ) -> FetchedWeights:
    """The weights of ``pretrained`` for ``name``: ``True`` (or ``"official"``) tries :func:`known_sources` in
    order, saying on stderr which one failed and why; all failing -> one CheckpointError listing each.

    Args:
        name: the zoo model.
        pretrained: as :func:`parse_pretrained` reads it.
        cache_dir: moves both caches (see the module docstring).

    Returns:
        The weights of the first source that works.
    """
    pretrained = parse_pretrained(pretrained)
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
    for source in sources:
        try:
            fetched = fetch_weights(source, cache_dir)
        except CheckpointError as exc:
            failures.append(f"{source}: {exc}")
            continue
        for failure in failures:  # said only when a later source worked; else the error below lists them once
            print(f"warning: weights for {name}: {failure}; used {source} instead", file=sys.stderr)
        return fetched
    raise CheckpointError(f"no weights for {name}: " + " | ".join(failures))


# ---- what is cached -----------------------------------------------------------------------------------------
def cached_sources(name: str, cache_dir: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """Per known source of ``name``: where it is, whether a copy is in the local cache (path, size, sha256)."""
    rows = []
    for source in known_sources(name):
        path: Optional[Path] = None
        if source.kind == "official":
            candidate = official_cache_file(source.location, cache_dir)
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
        url = registry.get_spec(name).url
        cached = official_cache_file(url, cache_dir) if url else None
        if cached is not None and cached_file_problem(cached):
            print(f"note: {cached} does not match its hash; downloading it again", file=sys.stderr)
            cached.unlink()
        try:
            fetched = fetch_first(registry.get_spec(name).name, True, cache_dir)
        except CheckpointError as exc:
            failed.append(str(exc))
            continue
        done.append((name, str(fetched.source)))
    if failed:
        raise Res2NetError("; ".join(failed))
    return done
