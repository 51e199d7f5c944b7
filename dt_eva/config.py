"""Typed configs: nested dataclasses loaded from YAML plus dotted `key=value` overrides.

    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["train.steps=500", "optim.lr=3e-4"])

Every value is checked against the dataclass field's type hint (int, float, str, bool, Optional,
Union, list, tuple, dict, Literal, nested dataclasses); an unknown key or a value of the wrong type is
a `ValueError` that names the key, the expected type and the value. Override values are parsed as
YAML scalars or lists (`tasks=[reach, push]`, `eval_tasks=reach,push` for lists of strings,
`run_dir=null`). Numbers written as `1e-4` (which PyYAML reads as strings) are accepted for numeric
fields.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml

from dt_eva.utils.io import atomic_write_text

T = TypeVar("T")

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_MISSING = object()


# --- public API -----------------------------------------------------------------------------------
def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` (a dataclass) from its defaults, then the YAML file at `path`, then `overrides`.

    `overrides` are strings `a.b.c=value`; later ones win. Raises `FileNotFoundError` for a missing
    file and `ValueError` for unknown keys, wrong types and malformed overrides.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path)
    for override in overrides:
        key, value = parse_override(override)
        _check_key_path(cls, key)
        _set_dotted(raw, key, value)
    return _build_dataclass(cls, raw, prefix="")


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value` into (`"a.b"`, parsed value); the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. train.steps=1000)")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key; write it like train.steps=1000")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({e.__class__.__name__})") from None
    return key, value


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-friendly data (dicts, lists, scalars) from a (nested) dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write `cfg` as YAML atomically; `load_config(type(cfg), path)` gives back an equal config."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)


def config_diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two configs (or their dicts): key -> (a, b)."""
    flat_a, flat_b = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    keys = sorted(set(flat_a) | set(flat_b))
    return {
        k: (flat_a.get(k), flat_b.get(k)) for k in keys if flat_a.get(k, _MISSING) != flat_b.get(k, _MISSING)
    }


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is `{}`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


# --- building -------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # a forward reference that cannot be resolved: a bug in the config class
        raise TypeError(f"cannot resolve the type hints of {cls.__name__}: {e}") from e


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return _MISSING


def _valid_keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _build_dataclass(cls: type[T], raw: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"config key {prefix.rstrip('.') or '<root>'} must be a mapping of {cls.__name__} fields, got {raw!r}"
        )
    valid = _valid_keys(cls)
    unknown = [k for k in raw if k not in valid]
    if unknown:
        where = f" under {prefix.rstrip('.')}" if prefix else ""
        raise ValueError(f"unknown config key(s) {[prefix + str(k) for k in unknown]}{where}; valid keys are {valid}")
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = prefix + f.name
        tp = hints[f.name]
        default = _default_of(f)
        if f.name in raw:
            value = raw[f.name]
            target = _dataclass_in(tp)
            if target is not None and isinstance(value, Mapping):
                # A partial section layers over the field's default instance (e.g. a preset model).
                base = config_to_dict(default) if dataclasses.is_dataclass(default) else {}
                kwargs[f.name] = _build_dataclass(target, _deep_merge(base, value), key + ".")
            else:
                kwargs[f.name] = _coerce(value, tp, key)
        elif default is _MISSING:
            raise ValueError(f"config key {key} is required ({_type_name(tp)}) but was not given")
        else:
            kwargs[f.name] = default
    try:
        return cls(**kwargs)
    except ValueError:
        raise
    except TypeError as e:
        raise ValueError(f"cannot build {cls.__name__} at {prefix.rstrip('.') or '<root>'}: {e}") from None


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type of a field typed `C` or `Optional[C]`, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if _is_union(tp):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return options[0]
    return None


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is typing.Union or isinstance(tp, types.UnionType)


def _wrong(key: str, tp: Any, value: Any) -> ValueError:
    return ValueError(f"config key {key} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type hint `tp` and convert it (lists -> tuples, numeric strings -> numbers)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError:
                continue
        raise _wrong(key, tp, value)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"config key {key} must be one of {list(args)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(key, tp, value)
    if tp is int:
        if isinstance(value, bool):
            raise _wrong(key, tp, value)
        if isinstance(value, int):
            return value
        number = _as_number(value)
        if number is not None and float(number).is_integer():
            return int(number)
        raise _wrong(key, tp, value)
    if tp is float:
        if isinstance(value, bool):
            raise _wrong(key, tp, value)
        number = _as_number(value)
        if number is not None:
            return float(number)
        raise _wrong(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `name=2024` is a name, not a number
        raise _wrong(key, tp, value)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _wrong(key, tp, value)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) and _is_sequence_of_str(tp):
            value = [v.strip() for v in value.split(",") if v.strip()]  # CLI shorthand: a,b,c
        if not isinstance(value, (list, tuple)):
            raise _wrong(key, tp, value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(
                    f"config key {key} expects {len(args)} values ({_type_name(tp)}), got {len(value)}: {value!r}"
                )
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _wrong(key, tp, value)
        k_tp, v_tp = args if args else (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return _build_dataclass(tp, value, key + ".")
        raise _wrong(key, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _wrong(key, tp, value)
    return value  # an exotic hint we do not check


def _is_sequence_of_str(tp: Any) -> bool:
    args = typing.get_args(tp)
    return bool(args) and args[0] is str and (len(args) == 1 or args[1] is Ellipsis)


def _as_number(value: Any) -> float | int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return str(tp)


# --- dotted keys ----------------------------------------------------------------------------------
def _check_key_path(cls: type, dotted: str) -> None:
    """Reject an override whose key does not exist, listing the valid keys at the failing level."""
    current: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        target = _dataclass_in(current) if current is not cls else cls
        if target is None:
            raise ValueError(
                f"override key {dotted!r}: {'.'.join(walked)} is a {_type_name(current)}, not a section with sub-keys"
            )
        valid = _valid_keys(target)
        if part not in valid:
            where = ".".join(walked) or "the top level"
            raise ValueError(f"unknown config key {dotted!r}: {part!r} is not a key of {where}; valid keys are {valid}")
        current = _field_types(target)[part]
        walked.append(part)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
