"""Typed configs: nested dataclasses loaded from YAML plus dotted `key=value` overrides.

    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["train.steps=500", "optim.lr=3e-4"])

The dataclasses are the schema of an OmegaConf structured config, which checks and converts every
value; this module adds the messages (an unknown key lists the valid keys, a wrong value names the
key, the value and the expected type) and the command-line spellings: override values are YAML
(`tasks=[reach, push]`, `run_dir=null`), a comma list fills a list field (`eval_tasks=reach,push`),
`1e-4` is a number (`1e6` an int), and a `#` is never a comment. The dataclass itself is built last,
so its `__post_init__` checks the final values.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dt_eva.utils.io import atomic_write_text, read_yaml

T = TypeVar("T")
_MISSING = object()


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which reads `1e-4` and `1e6` as strings; here they are numbers."""


def _exponent_number(loader: yaml.SafeLoader, node: yaml.Node) -> float | int:
    value = float(loader.construct_scalar(node))  # type: ignore[arg-type]
    return int(value) if value.is_integer() else value  # `train.steps=1e6` fits an int field


_YamlLoader.add_constructor("!dt-eva/exponent", _exponent_number)
_YamlLoader.add_implicit_resolver(
    "!dt-eva/exponent", re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


# --- public API -----------------------------------------------------------------------------------
def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` (a dataclass) from its defaults, then the YAML file at `path`, then `overrides`.

    `overrides` are strings `a.b.c=value`; later ones win. Raises `FileNotFoundError` for a missing
    file and `ValueError` for unknown keys, wrong types and malformed overrides.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    cfg = OmegaConf.structured(cls)
    settings = list(_flatten(read_yaml_mapping(path)).items()) if path is not None else []
    for override in overrides:
        key, value = parse_override(override)
        settings.extend(_flatten(value, key + ".").items())  # `inner={a: 1}` sets inner.a only
    for key, value in settings:
        _set(cfg, key, value)
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]  # runs each __post_init__
    except OmegaConfBaseException as e:
        raise ValueError(f"config key {e.full_key}: {str(e).splitlines()[0]}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value` into (`"a.b"`, parsed value); the value is YAML, but `#` is never a comment."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. train.steps=1000)")
    key, _, value_text = text.partition("=")
    key, value_text = key.strip(), value_text.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key; write it like train.steps=1000")
    if not value_text:
        return key, ""
    try:
        value = yaml.load(value_text, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({e.__class__.__name__})") from None
    if str(value).count("#") < value_text.count("#"):  # YAML dropped a comment
        if value_text[0] in "[{":
            raise ValueError(f"override {text!r}: YAML reads ' #' as a comment; quote the item that holds '#'")
        return key, value_text  # `name=exp #2` is the name `exp #2`
    return key, value


def config_to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-friendly data (dicts, lists, scalars) from a (nested) dataclass.

    A field whose metadata names the key that sets it (`set_by`, e.g. the model's scales set by
    `data.rtg_scale`) is left out: the config names each setting once."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if _settable(f)}
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
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a YAML file (e.g. {path}/base.yaml)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = read_yaml(path, _YamlLoader)
    except ValueError as e:
        raise ValueError(f"config file {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


# --- helpers --------------------------------------------------------------------------------------
def _set(cfg: DictConfig, key: str, value: Any) -> None:
    """`cfg.<key> = value` with messages that name the key, the valid keys or the expected type."""
    *path, leaf = key.split(".")
    section = cfg
    for depth, part in enumerate(path + [leaf]):
        if not isinstance(section, DictConfig):
            raise ValueError(f"config key {key!r}: {'.'.join(path[:depth])} is a value, not a section with sub-keys")
        set_by = _set_by(section)
        if part not in section or part in set_by:
            where = ".".join(path[:depth]) or "the top level"
            valid = [k for k in section if k not in set_by]
            note = f" (it is set by {set_by[part]})" if part in set_by else ""
            raise ValueError(f"unknown config key {key!r}: {part!r} is not a key of {where}{note}; "
                             f"valid keys are {valid}")
        if depth < len(path):
            section = section[part]
    hint = typing.get_type_hints(OmegaConf.get_type(section))[leaf]
    if isinstance(value, str) and typing.get_origin(hint) in (list, tuple):
        value = [item.strip() for item in value.split(",") if item.strip()]  # CLI shorthand: a,b,c
    try:
        OmegaConf.update(section, leaf, value, merge=True)
    except OmegaConfBaseException:
        name = str(hint).replace("typing.", "") if typing.get_args(hint) else getattr(hint, "__name__", hint)
        raise ValueError(f"config key {key} expects {name}, got {value!r} ({type(value).__name__})") from None


def _settable(f: dataclasses.Field) -> bool:
    """False for a field that another key sets (`metadata["set_by"]`): it is neither read nor written."""
    return "set_by" not in f.metadata


def _set_by(section: DictConfig) -> dict[str, str]:
    """The fields of a section's dataclass that another key sets: name -> that key."""
    schema = OmegaConf.get_type(section)
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ()
    return {f.name: f.metadata["set_by"] for f in fields if not _settable(f)}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}
