"""The sweep file: read it, check it, and the constants every part of the sweep shares."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dt_eva.config import read_yaml_mapping
from dt_eva.runs.results import RESULTS

__all__ = ["KINDS", "LOGS", "OWNED_KEYS", "RESULTS", "RUNS", "SWEEP_KEYS", "Rule", "SweepSpec", "load_ref",
           "load_sweep", "matches"]

RUNS = "runs"
LOGS = "logs"
SWEEP_KEYS = ("kind", "base", "out", "fixed", "grid", "exclude", "when")
# Keys the sweep sets itself: a run's name and folder come from its grid values, and per-run progress
# bars would fight the sweep's bar.
OWNED_KEYS = ("name", "run_dir", "train.progress")

# kind -> (config class, driver); imported when needed (both load torch)
KINDS = {
    "finetune": ("dt_eva.runs.configs:FinetuneConfig", "dt_eva.experiments.finetune:run_finetune"),
    "pretrain": ("dt_eva.runs.configs:PretrainConfig", "dt_eva.experiments.pretrain:run_pretrain"),
}


def load_ref(ref: str) -> Any:
    """`"package.module:name"` -> that object (imported now)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Rule:
    """`set` these keys for the runs whose grid values match `when` (a list value matches any item)."""

    when: dict[str, Any]
    set: dict[str, Any]

    def matches(self, values: dict[str, Any]) -> bool:
        return matches(self.when, values)


def matches(condition: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(values[k] in (v if isinstance(v, list) else [v]) for k, v in condition.items())


@dataclass
class SweepSpec:
    path: Path
    kind: str
    base: str | None
    out: Path
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    rules: list[Rule]
    excludes: list[dict[str, Any]] = field(default_factory=list)


def load_sweep(path: str | Path, out: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep file; `out` replaces its `out:` (default `sweeps/<file name>`)."""
    path = Path(path)
    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown sweep key(s) {unknown}; a sweep file has {list(SWEEP_KEYS)}")
    kind = data.get("kind", "finetune")
    if kind not in KINDS:
        raise ValueError(f"{path}: kind={kind!r}; expected one of {list(KINDS)}")
    base = data.get("base")
    if base is not None and not Path(base).is_file():
        raise FileNotFoundError(f"{path}: base config {base} does not exist (paths are relative to {Path.cwd()})")
    fixed = _flat(data.get("fixed") or {}, f"{path}: fixed")
    grid = _flat(data.get("grid") or {}, f"{path}: grid")
    if not grid:
        raise ValueError(f"{path}: the grid is empty; give at least one key with a list of values, e.g. "
                         "grid: {seed: [0, 1, 2]}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{path}: grid key {key} must have a non-empty list of values, got {values!r}")
    for key in ("when", "exclude"):
        if not isinstance(data.get(key) or [], list):
            raise ValueError(f"{path}: {key}: must be a list (each item starting with '- ')")
    rules = [_rule(item, i, grid, path) for i, item in enumerate(data.get("when") or [])]
    excludes = [_condition(item, f"exclude[{i}]", grid, path) for i, item in enumerate(data.get("exclude") or [])]
    for where, keys in [("fixed", fixed), ("grid", grid)] + [(f"when[{i}].set", r.set) for i, r in enumerate(rules)]:
        owned = sorted(set(keys) & set(OWNED_KEYS))
        if owned:
            raise ValueError(f"{path}: {where} sets {owned}, which the sweep sets for each run; remove them")
    out_dir = Path(out) if out is not None else Path(data.get("out") or Path("sweeps") / path.stem)
    return SweepSpec(path, kind, base, out_dir, fixed, grid, rules, excludes)


def _flat(obj: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """`{optim: {lr: 1}}` and `{optim.lr: 1}` both -> `{"optim.lr": 1}`."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be a mapping of dotted config keys to values, got {obj!r}")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(_flat(value, where, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _condition(item: Any, where: str, grid: dict[str, list[Any]], path: Path) -> dict[str, Any]:
    """A test of grid values: `{method: fft}` or `{method: [fft, lora], seed: 0}`."""
    condition = _flat(item, f"{path}: {where}")
    unknown = sorted(set(condition) - set(grid))
    if unknown or not condition:
        raise ValueError(f"{path}: {where} tests {unknown or 'nothing'}; it must test grid keys ({list(grid)})")
    return condition


def _rule(item: Any, i: int, grid: dict[str, list[Any]], path: Path) -> Rule:
    if not isinstance(item, dict) or set(item) != {"when", "set"}:
        raise ValueError(f"{path}: when[{i}] must look like {{when: {{method: fft}}, set: {{optim.lr: 1e-4}}}}, "
                         f"got {item!r}")
    when = _condition(item["when"], f"when[{i}].when", grid, path)
    sets = _flat(item["set"], f"{path}: when[{i}].set")
    clash = sorted(set(sets) & set(grid))
    if clash:
        raise ValueError(f"{path}: when[{i}] sets grid key(s) {clash}; a rule may only set keys outside the grid")
    return Rule(when, sets)
