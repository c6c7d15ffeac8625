"""Typed, validated configuration: nested dataclasses filled from YAML recipes and ``--set key=value``.

A schema is any dataclass whose fields are scalars (int, float, bool, str), ``Optional[...]`` of them,
``List[...]``/``Tuple[...]`` of them, or nested schema dataclasses (sections). :func:`load_config` reads a
recipe (a name of ``res2net/configs/*.yaml`` or a file path), applies dotted overrides, and checks every key
and type; an unknown key, a wrong type or a value below a field's bound (fields declared with
:func:`at_least`, :func:`between`, :func:`one_of` or :func:`device_name`, e.g. ``run.epochs >= 1``,
``optim.label_smoothing`` in [0, 1), ``run.device`` like ``cuda:1``) raises a one-line :class:`~res2net.errors.ConfigError` naming the
key and what is allowed. Tasks build their own top-level schema from the engine's sections
(:class:`OptimConfig`, :class:`SchedConfig`, :class:`RunConfig`) plus their own ``model``/``data`` sections.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

import yaml

from ..errors import ConfigError

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars, so a value means what was typed:
    only ``true``/``false`` are booleans (``off``, ``no``, ``on``, ``yes`` stay strings), ``1e-3`` is a float
    (YAML 1.1 wants ``1.0e-3``), ``010`` is ten and ``0o10`` eight, ``1_000`` and ``1:30`` are strings. A key
    given twice in one mapping is refused (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                               "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, _pattern, _first in (
        ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
        ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
        ("float", r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
         "-+.0123456789")):
    Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_pattern})$"), list(_first))


def _yaml12_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)


def read_yaml(text: str) -> Any:
    """``text`` parsed as YAML 1.2 (:class:`Yaml12Loader`)."""
    return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader)


def at_least(default: Any, low: float) -> Any:
    """A schema field whose value (when not null) must be >= ``low``; checked when a config is read."""
    return field(default=default, metadata={"min": low})


def between(default: Any, low: float, high: float, high_open: bool = False) -> Any:
    """A schema field whose value (when not null) must lie in ``[low, high]`` (``[low, high)`` with
    ``high_open``); checked when a config is read."""
    return field(default=default, metadata={"min": low, "max": high, "max_open": high_open})


def one_of(default: Any, *choices: Any) -> Any:
    """A schema field whose value must be one of ``choices``; checked when a config is read."""
    return field(default=default, metadata={"choices": tuple(choices)})


def device_name(default: str = "auto") -> Any:
    """A ``run.device`` field: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; checked when a config is read."""
    return field(default=default, metadata={"pattern": (r"auto|cpu|cuda(:[0-9]+)?|mps",
                                                        "auto, cpu, cuda, cuda:N or mps")})


@dataclass
class OptimConfig:
    """Optimizer and loss-side regularisation."""

    name: str = one_of("sgd", "sgd", "adamw")
    # lr for the reference batch ``lr_batch`` (linear scaling rule: lr * global_batch / lr_batch)
    lr: float = at_least(0.1, 0)
    lr_batch: int = at_least(256, 1)
    momentum: float = between(0.9, 0, 1)
    nesterov: bool = False
    weight_decay: float = at_least(1e-4, 0)
    batch_size: int = at_least(256, 1)  # per process
    label_smoothing: float = between(0.0, 0, 1, high_open=True)
    clip_grad_norm: Optional[float] = at_least(None, 0)
    ema_decay: Optional[float] = between(None, 0, 1, high_open=True)  # e.g. 0.999; evaluates the EMA weights
    # lr of the pretrained backbone relative to the head's (fine-tuning; a task's param_groups set "lr_mult")
    backbone_lr_mult: float = between(1.0, 0, 1)


@dataclass
class SchedConfig:
    """Learning-rate schedule (stepped once per optimizer step, defined in epochs)."""

    name: str = one_of("multistep", "multistep", "onecycle", "cosine", "constant")
    milestones: List[int] = field(default_factory=lambda: [30, 60, 90])  # epochs, for multistep
    gamma: float = at_least(0.1, 0)
    warmup_epochs: float = at_least(0.0, 0)  # linear warm-up (multistep/cosine)
    pct_start: float = between(0.25, 0, 1)  # onecycle: fraction of the run spent warming up


@dataclass
class RunConfig:
    """How the loop runs: length, seed, device, precision, checkpoints, logs."""

    epochs: int = at_least(100, 1)
    seed: int = 0
    deterministic: bool = False
    device: str = device_name("auto")
    # auto: bf16 where native (AVX512-BF16/AMX CPUs, sm80+ GPUs), fp16 on older GPUs, fp32 elsewhere
    amp: str = one_of("auto", "auto", "bf16", "fp16", "off")
    channels_last: bool = True
    checkpoint_every: int = at_least(0, 0)  # optimizer steps between mid-epoch checkpoints (0: epoch ends only)
    log_every: int = at_least(20, 1)  # steps between JSONL step records
    eval_every: int = at_least(1, 1)  # epochs between evaluations (the last epoch is always evaluated)
    # DataLoader worker processes (0: load in the main process; null: one per usable core beyond the first, <= 8)
    workers: Optional[int] = at_least(None, 0)
    num_threads: int = at_least(0, 0)  # torch CPU threads (0: torch's, lowered to the usable cores: cgroup quota)
    quiet: bool = False
    tensorboard: bool = False


# ---------------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, tuple, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, a, value)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):  # one value where a list is expected: the list of that one
            try:
                return [_coerce(key, item, value)]
            except ConfigError:
                raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}") from None
        return [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if tp in (int, float, str) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    return value


def _fields(schema: Type[Any]) -> Dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _field_default(schema: Type[Any], name: str) -> Any:
    """The default value of a schema field (its ``default_factory`` called), or None when it has none."""
    f = next(f for f in dataclasses.fields(schema) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(schema: Type[T], data: Mapping[str, Any], prefix: str = "", base: Any = None) -> T:
    """Build ``schema`` from a nested mapping; missing keys keep their defaults (those of ``base`` or, for a
    section, the section default the parent schema declares), unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    types = _fields(schema)
    kwargs: Dict[str, Any] = {}
    for key, value in current_key_names(schema, data, prefix, note=True).items():
        full = prefix + str(key)
        if key not in types:
            raise ConfigError(f"unknown config key {full!r}; allowed: {', '.join(prefix + k for k in types)}")
        tp = types[key]
        if dataclasses.is_dataclass(tp):
            section_base = getattr(base, key) if base is not None else _field_default(schema, key)
            kwargs[key] = from_dict(tp, {} if value is None else value, full + ".", section_base)
        else:
            kwargs[key] = _coerce(full, tp, value)
            _check_value(full, kwargs[key], _field_meta(schema, key))
    return dataclasses.replace(base, **kwargs) if base is not None else schema(**kwargs)


def renamed_key(schema: Type[Any], key: str, prefix: str = "", note: bool = True) -> str:
    """The current name of ``key`` in ``schema``: a section lists its old key names in a ``RENAMED`` class
    attribute (``{"data_dir": "root"}``); with ``note``, an old name gets a one-line note naming the new key."""
    new = getattr(schema, "RENAMED", {}).get(key)
    if new is None:
        return key
    if note:
        warnings.warn(f"config key {prefix + key!r} is now {prefix + new!r} (the old key still works)",
                      FutureWarning, stacklevel=3)
    return new


def current_key_names(schema: Type[Any], data: Any, prefix: str = "", note: bool = False) -> Any:
    """A config mapping with its renamed keys (:func:`renamed_key`) under their current names, through every
    section; an old and a new name of one setting together are refused; unknown keys are kept (:func:`from_dict`
    names them). ``note``: a note per old name (a config the user wrote), else silent (a checkpoint's config
    written by an older version)."""
    if not isinstance(data, Mapping):
        return data  # not a config: the caller's checks name it
    types = _fields(schema)
    out: Dict[str, Any] = {}
    for key, value in data.items():
        new = renamed_key(schema, str(key), prefix, note)
        if new in out:
            raise ConfigError(f"config keys {prefix + str(key)!r} and {prefix + new!r} name the same setting; "
                              f"keep {prefix + new!r}")
        tp = types.get(new)
        out[new] = (current_key_names(tp, value, f"{prefix}{new}.", note)
                    if tp is not None and dataclasses.is_dataclass(tp) else value)
    return out


def _field_meta(schema: Type[Any], name: str) -> Mapping[str, Any]:
    """The bounds a field declares (:func:`at_least`, :func:`between`, :func:`one_of`, :func:`device_name`),
    in ``schema`` or in the schema it subclasses (a subclass that only changes a default keeps the bounds)."""
    for cls in schema.__mro__:
        if dataclasses.is_dataclass(cls):
            meta = next((f.metadata for f in dataclasses.fields(cls) if f.name == name), None)
            if meta:
                return meta
    return {}


def _check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Range/choice check of one coerced value (each item of a list); None passes."""
    if value is None or not meta:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, meta)
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
    if "pattern" in meta:
        pattern, allowed = meta["pattern"]
        if not re.fullmatch(pattern, str(value)):
            raise ConfigError(f"{key} must be {allowed}; got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if high is not None:
        closing = ")" if meta.get("max_open") else "]"
        if value < low or value > high or (meta.get("max_open") and value == high):
            raise ConfigError(f"{key} must be in [{low}, {high}{closing}, got {value!r}")
    elif low is not None and value < low:
        raise ConfigError(f"{key} must be >= {low}, got {value!r}")


def to_dict(cfg: Any) -> Dict[str, Any]:
    """The config as plain nested dicts/lists (YAML-, JSON- and ``weights_only``-safe)."""
    return dataclasses.asdict(cfg)


def set_key(data: Dict[str, Any], schema: Type[Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict, checking the key path against ``schema`` as it goes."""
    parts = dotted.split(".")
    node, tp, prefix = data, schema, ""
    for part in parts[:-1]:
        types = _fields(tp)
        if part not in types or not dataclasses.is_dataclass(types[part]):
            sections = [k for k, t in types.items() if dataclasses.is_dataclass(t)]
            raise ConfigError(f"unknown config section {prefix + part!r}; allowed: "
                              f"{', '.join(prefix + s for s in sections)}")
        tp = types[part]
        prefix += part + "."
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    last = renamed_key(tp, parts[-1], prefix)
    for old_name in [k for k, v in getattr(tp, "RENAMED", {}).items() if v == last]:
        node.pop(old_name, None)  # the later setting wins, whichever name the earlier one used
    types = _fields(tp)
    if last not in types:
        raise ConfigError(f"unknown config key {dotted!r}; allowed: {', '.join(prefix + k for k in types)}")
    if dataclasses.is_dataclass(types[last]):
        raise ConfigError(f"{dotted!r} is a section, not a value; set one of its keys, e.g. "
                          f"{dotted}.{next(iter(_fields(types[last])))}=...")
    node[last] = value


def parse_override(text: str) -> tuple:
    """``"optim.lr=0.05"`` -> ``("optim.lr", 0.05)``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def refuse_contradictions(flags: Mapping[str, Any], overrides: Sequence[str]) -> None:
    """Refuse a ``--set KEY=VALUE`` that gives a key another value than its flag did (``flags``: dotted key ->
    the flag's value, None where the flag was not given): both are honoured or the command is refused, one is
    never ignored."""
    for text in overrides:
        key, value = parse_override(text)
        given = flags.get(key)
        if given is not None and given != value and [given] != value:
            raise ConfigError(f"--set {text.strip()} contradicts the flag that gives {key} = {given!r}; give one "
                              "of the two")


def recipe_names() -> List[str]:
    """Names of the packaged recipes (``res2net/configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_recipe(source: str) -> Dict[str, Any]:
    """The raw mapping of a recipe: a packaged name (``imagenet``) or a YAML file path."""
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config {source!r} is a folder; give a YAML file or a packaged recipe name")
    if not path.suffix:
        path = CONFIG_DIR / f"{source}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown config {source!r}; packaged recipes: {', '.join(recipe_names())}"
                              " (or give a YAML file path)")
    elif not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def load_config(schema: Type[T], source: Optional[str] = None, overrides: Sequence[str] = (),
                values: Optional[Mapping[str, Any]] = None) -> T:
    """Schema defaults <- recipe ``source`` <- ``values`` (dotted keys, e.g. from CLI flags; None skipped)
    <- ``overrides`` (``KEY=VALUE`` strings from ``--set``), validated."""
    data: Dict[str, Any] = read_recipe(source) if source else {}
    from_dict(schema, data)  # validate the recipe itself first, so its errors name the file's keys
    for key, value in (values or {}).items():
        if value is not None:
            set_key(data, schema, key, value)
    for text in overrides:
        set_key(data, schema, *parse_override(text))
    return from_dict(schema, data)
