"""Every evaluation of a run, kept: `evals/<key>.json`, one file per set of evaluation settings.

The key names the settings that make two evaluations comparable: episodes per task, seed, and a
digest of the tasks, their target returns and the return / reward scales, e.g.
`ep20-seed0-3fa41c2b`. Evaluating again with the same settings replaces that record (same settings,
newer weights); evaluating with other settings adds one.

`eval.json` stays for older code and users: it always holds the LARGEST evaluation (most episodes
per task; on a tie the newest), so a 1-episode smoke test never replaces a 20-episode evaluation.
Runs of the legacy format (`layout.LEGACY_FORMAT`) have only `eval.json` (and `eval/<task>.json`);
they read as records too, and the first new evaluation copies their `eval.json` into `evals/` before
anything replaces it.

Torch-free: a report over hundreds of runs reads these.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dt_eva.runs.layout import RunPaths
from dt_eva.utils.io import atomic_write_json, load_json_object
from dt_eva.utils.safefs import ensure_real_dir

RECORD_FORMAT = 1


def eval_settings(result: dict[str, Any]) -> dict[str, Any]:
    """The settings of an `evaluate_policy` result that decide what its numbers mean."""
    tasks = sorted(result["tasks"])
    return {
        "episodes": int(result["episodes"]),
        "seed": int(result.get("seed", 0)),
        "tasks": tasks,
        "target_returns": {t: _float_or_none(result["tasks"][t].get("target_return")) for t in tasks},
        "rtg_scale": _float_or_none(result.get("rtg_scale")),
        "reward_scale": _float_or_none(result.get("reward_scale")),
    }


def eval_key(settings: dict[str, Any]) -> str:
    """`ep<episodes>-seed<seed>-<8 hex>`: readable, and stable across runs, machines and versions."""
    rest = {k: settings[k] for k in ("tasks", "target_returns", "rtg_scale", "reward_scale")}
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]
    return f"ep{settings['episodes']}-seed{settings['seed']}-{digest}"


def record_path(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Where `write_eval_record` puts `result`."""
    return RunPaths(run_dir).evals / f"{eval_key(eval_settings(result))}.json"


def write_eval_record(run_dir: str | Path, result: dict[str, Any], model: dict[str, Any] | None = None) -> Path:
    """Store `result` as `evals/<key>.json` (atomically) and keep `eval.json` the largest evaluation.

    `model`: what was evaluated (e.g. `{"weights": "model.pt", "step": None}`), kept in the record.
    An `eval.json` that no record holds yet (a legacy-format run, or written by training) is copied into
    `evals/` first, so no evaluation is lost when `eval.json` changes. Returns the record's path.
    """
    paths = RunPaths(run_dir)
    ensure_real_dir(paths.evals, "evaluation records")  # never through a link to another folder
    _adopt_eval_json(paths)
    record = new_eval_record(result, model)
    path = paths.evals / f"{record['key']}.json"
    atomic_write_json(path, record)
    _refresh_eval_json(paths)
    return path


def new_eval_record(result: dict[str, Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of `result` made now: what `evals/<key>.json` holds."""
    record = _make_record(result, _now(), source=None)
    if model:
        record["model"] = model
    return record


def read_eval_records(run_dir: str | Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Every evaluation of a run, oldest first.

    A record: `{"key", "created", "settings", "result", "path"}` (+ `"model"` when known). Sources:
    `evals/*.json`; `eval.json` when no record holds its result; the legacy format's `eval/<task>.json`
    when no other record holds that task's entry. A damaged file is skipped, and a line naming it is
    appended to `problems`.
    """
    paths = RunPaths(run_dir)
    problems = problems if problems is not None else []
    by_key: dict[str, dict[str, Any]] = {}

    def add(record: dict[str, Any]) -> None:
        old = by_key.get(record["key"])
        if old is None or record["created"] > old["created"]:  # same settings: the newer one counts
            by_key[record["key"]] = record

    if paths.evals.is_dir():
        for path in sorted(paths.evals.glob("*.json")):
            record = _read_record(path, problems)
            if record is not None:
                add(record)
    known_results = [r["result"] for r in by_key.values()]
    legacy = _read_result_file(paths.eval, problems)
    if legacy is not None and legacy not in known_results:
        add(_make_record(legacy, _mtime(paths.eval), source=paths.eval))
    if paths.eval_per_task.is_dir():
        for path in sorted(paths.eval_per_task.glob("*.json")):
            record = _read_legacy_task_file(path, problems)
            if record is None:
                continue
            task, entry = next(iter(record["result"]["tasks"].items()))
            # the legacy format wrote eval/<task>.json beside eval.json: only an entry no record holds is news
            if record["key"] not in by_key and not any(r["result"]["tasks"].get(task) == entry for r in by_key.values()):
                add(record)
    return sorted(by_key.values(), key=lambda r: (r["created"], r["key"]))


def best_eval(run_dir: str | Path, task: str | None = None,
              problems: list[str] | None = None) -> dict[str, Any] | None:
    """The largest evaluation of a run (most episodes per task; on a tie the newest), or None.

    `task`: only evaluations that include this task (full name, e.g. `hammer-v3`).
    """
    return largest_eval(read_eval_records(run_dir, problems), task)


def largest_eval(records: list[dict[str, Any]], task: str | None = None) -> dict[str, Any] | None:
    """`best_eval` over records already read."""
    if task is not None:
        records = [r for r in records if task in r["result"]["tasks"]]
    return max(records, key=_size_key, default=None)


def _size_key(record: dict[str, Any]) -> tuple[int, str]:
    return (record["settings"]["episodes"], record["created"])


def _adopt_eval_json(paths: RunPaths) -> None:
    """Copy an `eval.json` that no record holds into `evals/`, before it can be replaced."""
    if not paths.eval.is_file():
        return
    existing = [r for r in read_eval_records(paths.root) if r.get("path") == str(paths.eval)]
    for record in existing:  # at most one: eval.json read as a record of its own
        record = {k: v for k, v in record.items() if k != "path"}
        record["source"] = str(paths.eval.name)
        atomic_write_json(paths.evals / f"{record['key']}.json", record)


def _refresh_eval_json(paths: RunPaths) -> None:
    best = largest_eval(read_eval_records(paths.root))
    if best is None:
        return
    current = _read_result_file(paths.eval, [])
    if current != best["result"]:
        atomic_write_json(paths.eval, best["result"])


def _make_record(result: dict[str, Any], created: str, source: Path | None) -> dict[str, Any]:
    settings = eval_settings(result)
    record: dict[str, Any] = {"format": RECORD_FORMAT, "key": eval_key(settings), "created": created,
                              "settings": settings, "result": json.loads(json.dumps(result, default=_plain))}
    if source is not None:
        record["path"] = str(source)
    return record


def _read_record(path: Path, problems: list[str]) -> dict[str, Any] | None:
    obj = _read_json(path, problems)
    if obj is None:
        return None
    result = obj.get("result")
    reason = _result_problem(result)
    if reason is None and not isinstance(obj.get("created"), str):
        reason = "no 'created' time"
    if reason is not None:
        problems.append(f"{path} is not an evaluation record ({reason}); skipped")
        return None
    record = _make_record(result, obj["created"], source=path)  # settings and key recomputed from the result
    if "model" in obj:
        record["model"] = obj["model"]
    return record


def _read_result_file(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """An `evaluate_policy` result stored as is (`eval.json`), or None."""
    obj = _read_json(path, problems)
    if obj is None:
        return None
    reason = _result_problem(obj)
    if reason is not None:
        problems.append(f"{path} is not an evaluation result ({reason}); skipped")
        return None
    return obj


def _read_legacy_task_file(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The legacy format's `eval/<task>.json`: one task's entry plus the settings, as a one-task record."""
    obj = _read_json(path, problems)
    if obj is None:
        return None
    task = obj.get("task")
    entry = {k: v for k, v in obj.items() if k not in ("task", "seed", "rtg_scale", "reward_scale")}
    result = {"tasks": {task: entry}, "mean": {k: entry.get(k) for k in ("success_any", "success_final", "return_mean")},
              **{k: obj.get(k) for k in ("episodes", "seed", "rtg_scale", "reward_scale")}}
    reason = "no 'task' name" if not isinstance(task, str) else _result_problem(result)
    if reason is not None:
        problems.append(f"{path} is not a per-task evaluation ({reason}); skipped")
        return None
    return _make_record(result, _mtime(path), source=path)


def _read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """`load_json_object`, a damaged file noted in `problems` and skipped."""
    try:
        return load_json_object(path)
    except ValueError as e:
        problems.append(f"{e}; skipped")
        return None


def _result_problem(result: Any) -> str | None:
    """Why `result` is not a usable `evaluate_policy` result, or None."""
    if not isinstance(result, dict):
        return "not a JSON object"
    tasks = result.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return "no 'tasks' entry"
    episodes = result.get("episodes")
    if not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1:
        return f"'episodes' is {episodes!r}, not a positive integer"
    for task, entry in tasks.items():
        if not isinstance(entry, dict):
            return f"the entry of {task} is not an object"
        for k in ("success_any", "success_final", "return_mean", "target_return"):
            v = entry.get(k)
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
                return f"{task} {k} is {v!r}, not a number"
    for k in ("seed", "rtg_scale", "reward_scale"):
        v = result.get(k)
        if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
            return f"'{k}' is {v!r}, not a number"
    return None


def _float_or_none(v: Any) -> float | None:
    return None if v is None else float(v)


def _plain(o: Any) -> Any:  # numpy scalars and arrays
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="microseconds")
