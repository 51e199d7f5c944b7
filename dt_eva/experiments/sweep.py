"""`dt-eva sweep`: many runs from one sweep file; finished runs are skipped, interrupted ones resumed.

A sweep file (`configs/sweeps/*.yaml`):

    kind: finetune                        # or pretrain
    base: configs/finetune/tiny.yaml      # the preset every run starts from
    out: sweeps/example                   # runs go to <out>/runs/<name>, the table to <out>/results.csv
    fixed: {checkpoint: runs/mt40-tiny, data.path: data/cw10-tiny, train.steps: 600}
    grid:                                 # dotted config keys -> values; every combination is a run
      task: [hammer, reach]
      method: [lora, eva, fft]
      seed: [0, 1, 2]
    exclude:                              # combinations to leave out (a list value matches any of its items)
      - {method: fft, seed: 2}
    when:                                 # conditional overrides, in order
      - when: {method: fft}
        set: {optim.lr: 1e-4}

A run's config is the base file, then `fixed`, then its grid values, then the `set` of every rule
whose `when` matches its grid values. The sweep owns `name`, `run_dir` (a name made of the grid
values) and `train.progress` (off: the sweep shows one bar over runs).

Before anything runs, every expanded config is loaded (unknown keys and bad values name the run),
run names are checked to be unique, finished runs whose saved config differs are refused, and the
base runs and datasets of the runs to do are loaded. Then each run executes in its own process:
plain local processes pinned to their share of the cores (`--jobs N`), or submitit jobs (its
`LocalExecutor`, or Slurm). A run that fails is recorded with its error and the sweep goes on;
`<out>/results.csv` is rewritten (atomically) each time a run ends.
"""

from __future__ import annotations

import csv
import importlib
import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from dt_eva.config import config_diff, load_config, read_yaml_mapping
from dt_eva.runs.guard import check_resume_compatible, check_run_name, plan_run_dir
from dt_eva.runs.layout import LOCK, RunPaths
from dt_eva.utils.io import atomic_write_text, read_metrics

RESULTS = "results.csv"
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
# results.csv column -> config key, per kind (the settings a study compares)
FIELDS = {
    "finetune": {"task": "task", "method": "method", "rank": "rank", "rho": "rho", "seed": "seed",
                 "lr": "optim.lr", "steps": "train.steps"},
    "pretrain": {"seed": "seed", "lr": "optim.lr", "steps": "train.steps", "batch_size": "train.batch_size"},
}


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# --- the sweep file ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """`set` these keys for the runs whose grid values match `when` (a list value matches any item)."""

    when: dict[str, Any]
    set: dict[str, Any]

    def matches(self, values: dict[str, Any]) -> bool:
        return _matches(self.when, values)


def _matches(condition: dict[str, Any], values: dict[str, Any]) -> bool:
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


# --- expansion ----------------------------------------------------------------------------------------
@dataclass
class SweepRun:
    """One run of a sweep: its name, grid values, config overrides and (once checked) config and status."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    run_dir: Path
    config: Any = None
    status: str = "new"  # new | restart (ours, never checkpointed: starts over) | resume | done

    @property
    def resume(self) -> bool:
        return self.status in ("resume", "restart")


def expand(spec: SweepSpec) -> list[SweepRun]:
    """Every combination of the grid, in grid order, with its overrides (no config loaded yet)."""
    keys = list(spec.grid)
    labels = _labels(keys)
    runs, seen = [], {}
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        if any(_matches(condition, values) for condition in spec.excludes):
            continue
        name = "+".join(f"{labels[k]}={_format(v)}" for k, v in values.items())
        check_run_name(name, key="run name")
        if name in seen:
            raise ValueError(f"{spec.path}: grid values {seen[name]} and {values} give the same run name {name!r}; "
                             "make the values differ in letters, digits or ._+=@-")
        seen[name] = values
        settings = {**spec.fixed, **values}
        for rule in spec.rules:
            if rule.matches(values):
                settings.update(rule.set)
        run_dir = spec.out / RUNS / name
        settings.update({"name": name, "run_dir": str(run_dir), "train.progress": False})
        runs.append(SweepRun(name, values, [f"{k}={json.dumps(v)}" for k, v in settings.items()], run_dir))
    if not runs:
        raise ValueError(f"{spec.path}: exclude: leaves out every combination of the grid; nothing to run")
    return runs


def _labels(keys: list[str]) -> dict[str, str]:
    """Grid key -> its label in run names: the last part of the dotted key, unless two keys share it."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves)}


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ".".join(_format(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+=@-]", "-", str(value))


def load_configs(spec: SweepSpec, runs: list[SweepRun]) -> None:
    """Build every run's config; a bad key or value is an error that names the run."""
    cls = _load(KINDS[spec.kind][0])
    for run in runs:
        try:
            run.config = load_config(cls, spec.base, run.overrides)
        except (ValueError, FileNotFoundError) as e:
            raise _naming(e, f"{spec.path}: run {run.name}: {e}") from None


def plan_statuses(spec: SweepSpec, runs: list[SweepRun]) -> None:
    """new / restart / resume / done for each run, from its directory; refuses a folder that is not our
    run, a finished run whose saved config differs from the requested one (the sweep file changed under
    it) and an interrupted one that could not resume."""
    cls = _load(KINDS[spec.kind][0])
    for run in runs:
        try:
            run.status = _status(spec.kind, cls, run)
        except (ValueError, FileNotFoundError) as e:
            raise _naming(e, f"{spec.path}: run {run.name}: {e}") from None


def _status(kind: str, cls: type, run: SweepRun) -> str:
    paths = RunPaths(run.run_dir)
    if not paths.root.is_dir() or all(p.name == LOCK for p in paths.root.iterdir()):
        return "new"
    plan = plan_run_dir(paths.root, kind, resume=True)  # refuses folders that are not our runs
    saved = load_config(cls, paths.config) if paths.config.is_file() else None
    if paths.summary.is_file():
        diff = config_diff(saved, run.config) if saved is not None else {"config.yaml": ("missing", "")}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"it finished in {paths.root} with another config ({changes}); restore the sweep's "
                             "settings, or give the sweep another out: (or delete that run)")
        return "done"
    if plan == "resume":
        if saved is not None:
            check_resume_compatible(saved, run.config, paths.root)
        return "resume"
    return "restart"


def check_inputs(spec: SweepSpec, runs: list[SweepRun]) -> None:
    """Load each distinct base run and dataset the runs need (and check their methods) with the drivers'
    own checks and messages, so a missing one stops the sweep before anything starts."""
    checks: dict[tuple, tuple[str, Callable[[], Any]]] = {}
    for run in runs:  # each input once, named by the first run that needs it
        for key, check in _input_checks(spec.kind, run.config).items():
            checks.setdefault(key, (run.name, check))
    for name, check in checks.values():
        try:
            check()
        except (ValueError, FileNotFoundError) as e:
            raise _naming(e, f"{spec.path}: run {name}: {e}") from None


def _input_checks(kind: str, cfg: Any) -> dict[tuple, Callable[[], Any]]:
    if kind == "pretrain":
        load_data = _load("dt_eva.experiments.pretrain:load_pretrain_dataset")
        return {("data", cfg.data.path, json.dumps(cfg.data.tasks)): lambda: load_data(cfg)}
    resolve_method = _load("dt_eva.methods.registry:resolve_method")
    load_base = _load("dt_eva.runs.base:load_pretrained_base")
    return {("method", cfg.method): lambda: resolve_method(cfg.method),
            ("base", cfg.checkpoint): lambda: load_base(cfg.checkpoint),
            ("data", cfg.data.path, cfg.task): lambda: _finetune_data(cfg)}


def _naming(error: Exception, message: str) -> Exception:
    """The same kind of user error, with a message that names the sweep and the run."""
    return FileNotFoundError(message) if isinstance(error, FileNotFoundError) else ValueError(message)


def _finetune_data(cfg: Any) -> Any:
    from dt_eva.envs import resolve_task
    from dt_eva.runs.policy import load_task_dataset

    return load_task_dataset(cfg.data.path, resolve_task(cfg.task))


# --- one run, in a worker process -----------------------------------------------------------------
@dataclass(frozen=True)
class RunJob:
    """What a worker needs to run one sweep run (picklable: it travels to submitit / Slurm jobs)."""

    name: str
    kind: str
    base: str | None
    overrides: tuple[str, ...]
    resume: bool
    cwd: str
    cores: tuple[int, ...] | None = None  # pin the process to these CPUs (local launchers)
    threads: int | None = None  # torch / OpenMP threads


def run_job(job: RunJob) -> str | None:
    """Run one sweep run in this process; None when it finished, else its error (one line). The traceback
    goes to stderr (the run's log). Called in a fresh process."""
    os.chdir(job.cwd)  # the sweep's paths are relative to where it was started
    if job.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, job.cores)
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(job.threads)
    try:
        import torch

        if job.threads:
            torch.set_num_threads(job.threads)
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all"
        print(f"dt-eva sweep: run {job.name} on cores {cores} with {torch.get_num_threads()} torch thread(s)",
              flush=True)
        config_ref, driver_ref = KINDS[job.kind]
        cfg = load_config(_load(config_ref), job.base, job.overrides)
        _load(driver_ref)(cfg, resume=job.resume)
        return None
    except BaseException as e:  # the sweep records it and goes on (Ctrl-C / SIGTERM: TrainingInterrupted)
        traceback.print_exc()
        return " ".join(f"{type(e).__name__}: {e}".split())


def core_slots(jobs: int, cores: Iterable[int] | None = None) -> list[tuple[int, ...]]:
    """Split the usable CPUs into `jobs` disjoint sets (shared round-robin when jobs > CPUs)."""
    available = sorted(cores if cores is not None else _usable_cores())
    if jobs >= len(available):
        return [(available[i % len(available)],) for i in range(jobs)]
    share = len(available) // jobs
    return [tuple(available[i * share:(i + 1) * share]) for i in range(jobs)]


def _usable_cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


# --- launchers: start runs, tell when they end --------------------------------------------------------
# What a run imports; a fork server imports it once, so that each run does not pay ~5 s of CPU for it.
PRELOAD = ["dt_eva.experiments.finetune", "dt_eva.experiments.pretrain", "dt_eva.evaluation", "dt_eva.envs",
           "torch.utils.tensorboard", "matplotlib.pyplot"]


class ProcessLauncher:
    """Each run in a fresh local process, pinned to one slot's cores, its output in `<out>/logs/<name>.log`.
    The processes fork from multiprocessing's fork server, which has only imported `PRELOAD` (no torch
    state of the sweep, no threads); where there is none, they start from scratch (spawn)."""

    def __init__(self, jobs: int, logs: Path) -> None:
        import multiprocessing

        self.capacity, self.logs, self.slots = jobs, logs, core_slots(jobs)
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(PRELOAD)
        else:
            self.ctx = multiprocessing.get_context("spawn")

    def placement(self, slot: int) -> tuple[tuple[int, ...] | None, int | None]:
        """The cores and threads of the run in `slot`."""
        return self.slots[slot], len(self.slots[slot])

    def start(self, jobs: list[RunJob]) -> list[Any]:
        self.logs.mkdir(parents=True, exist_ok=True)
        handles = []
        for job in jobs:
            receive, send = self.ctx.Pipe(duplex=False)
            process = self.ctx.Process(target=_process_main, args=(job, send, str(self.logs / f"{job.name}.log")),
                                       name=f"dt-eva-sweep:{job.name}")
            process.start()
            send.close()
            handles.append((process, receive))
        return handles

    def poll(self, handle: Any) -> tuple[bool, str | None]:
        process, receive = handle
        if receive.poll():
            error = receive.recv()
            process.join()
            return True, error
        if process.is_alive():
            return False, None
        process.join()
        return True, _exit_message(process.exitcode)

    def wait(self, handles: list[Any], timeout: float) -> None:
        from multiprocessing.connection import wait

        wait([h[0].sentinel for h in handles] + [h[1] for h in handles], timeout)

    def stop(self, handles: list[Any]) -> None:
        """Let each run save a checkpoint and stop (a later sweep resumes it). After Ctrl-C in a terminal
        the runs got the SIGINT too: give them time, since a second signal stops a run without saving."""
        deadline = time.monotonic() + 10
        for process, _ in handles:
            process.join(max(deadline - time.monotonic(), 0))
        for process, _ in handles:
            if process.is_alive():
                process.terminate()  # SIGTERM: checkpoint, then stop
        for process, _ in handles:
            process.join(120)
            if process.is_alive():
                process.kill()


def _process_main(job: RunJob, send: Any, log: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    error = run_job(job)
    sys.stdout.flush()
    sys.stderr.flush()
    send.send(error)


def _exit_message(code: int | None) -> str:
    if code is not None and code < 0:
        return f"the run's process was killed by signal {-code}"
    return f"the run's process ended with exit code {code} before reporting"


class SubmititLauncher:
    """Runs as submitit jobs: `cluster="local"` (its LocalExecutor, on this machine) or `"slurm"`."""

    def __init__(self, cluster: str, folder: Path, jobs: int, slurm: dict[str, Any]) -> None:
        try:
            import submitit
        except ImportError:
            raise ValueError("--launcher local / slurm needs submitit: pip install 'dt-eva[cluster]'") from None
        # Locally at most `jobs` at a time, pinned like ProcessLauncher; on Slurm every run is submitted at
        # once (one array) and `jobs` caps how many run together.
        self.cluster = cluster
        self.capacity = jobs if cluster == "local" else None
        self.slots = core_slots(jobs) if cluster == "local" else None
        self.threads = slurm.get("cpus_per_task")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--launcher slurm: sbatch is not on this machine's PATH; run the sweep on a Slurm "
                             "login node (or use --launcher processes / local here)")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        minutes = slurm.get("time") or 7 * 24 * 60
        params: dict[str, Any] = {"timeout_min": minutes, "name": "dt-eva-sweep"}
        if cluster == "slurm":
            params.update(slurm_partition=slurm.get("partition"), gpus_per_node=slurm.get("gpus") or 0,
                          cpus_per_task=slurm.get("cpus_per_task"))
            params["slurm_array_parallelism"] = slurm.get("parallel")
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def placement(self, slot: int) -> tuple[tuple[int, ...] | None, int | None]:
        if self.slots is None:  # Slurm: the job's cgroup holds its CPUs
            return None, self.threads
        return self.slots[slot], len(self.slots[slot])

    def start(self, jobs: list[RunJob]) -> list[Any]:
        with self.executor.batch():  # one Slurm array per batch of runs
            handles = [self.executor.submit(run_job, job) for job in jobs]
        return handles

    def poll(self, handle: Any) -> tuple[bool, str | None]:
        if not handle.done():
            return False, None
        error = handle.exception()
        if error is not None:  # the job itself died (killed, timed out, node failure)
            lines = [line for line in str(error).splitlines() if line.strip()]
            return True, f"submitit job {handle.job_id} failed: {lines[-1] if lines else type(error).__name__}"
        return True, handle.result()

    def wait(self, handles: list[Any], timeout: float) -> None:
        time.sleep(min(timeout, 1.0 if self.cluster == "local" else 10.0))

    def stop(self, handles: list[Any]) -> None:
        if self.cluster == "local":
            for job in handles:
                job.cancel(check=False)
        # Slurm jobs keep running on the cluster; a later `dt-eva sweep` finds their results


# --- results.csv ----------------------------------------------------------------------------------
class ResultsTable:
    """`<out>/results.csv`: one row per run, rewritten atomically whenever a run ends. Rows of runs that
    ended are read from their directories once (torch-free: summary.json, eval.json, metrics.jsonl)."""

    def __init__(self, spec: SweepSpec, runs: list[SweepRun]) -> None:
        self.path, self.kind, self.runs = spec.out / RESULTS, spec.kind, runs
        self.grid_keys = [k for k in spec.grid if k not in FIELDS[spec.kind].values()]
        self.rows = {r.name: self._row(r, "done" if r.status == "done" else "pending", None) for r in runs}

    def record(self, run: SweepRun, error: str | None) -> None:
        self.rows[run.name] = self._row(run, "failed" if error else "done", error)
        self.write()

    def failed(self) -> list[tuple[str, str]]:
        return [(name, row["error"]) for name, row in self.rows.items() if row["status"] == "failed"]

    def write(self) -> None:
        rows = [self.rows[r.name] for r in self.runs]
        head = ["name", "status", *self.grid_keys, *FIELDS[self.kind], "final_loss", "heldout_loss", "success_any",
                "success_final"]
        curves = sorted({k for row in rows for k in row if "@" in k}, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))
        tail = ["total_rank", "adapter_ranks", "eva_init_seconds", "seconds", "error", "run_dir"]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=head + curves + tail, lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: _cell(row.get(k)) for k in writer.fieldnames} for row in rows])
        atomic_write_text(self.path, text.getvalue())

    def _row(self, run: SweepRun, status: str, error: str | None) -> dict[str, Any]:
        row: dict[str, Any] = {"name": run.name, "status": status, "error": error, "run_dir": str(run.run_dir)}
        row.update({k: _get(run.config, k) for k in self.grid_keys})
        row.update({col: _get(run.config, key) for col, key in FIELDS[self.kind].items()})
        if status == "done":
            row.update(read_run_results(run.run_dir))
        return row


def read_run_results(run_dir: str | Path) -> dict[str, Any]:
    """The measured values of a finished run: final / held-out loss, success (final evaluation and per
    evaluated step), EVA ranks and init time, seconds. Missing files or keys give empty values."""
    paths = RunPaths(run_dir)
    summary, evaluation = _read_json(paths.summary), _read_json(paths.eval)
    mean = evaluation.get("mean") or {}
    ranks = summary.get("adapter_ranks")
    out = {"final_loss": summary.get("final_loss"), "seconds": summary.get("seconds"),
           "success_any": mean.get("success_any"), "success_final": mean.get("success_final"),
           "total_rank": summary.get("total_rank"), "eva_init_seconds": summary.get("eva_init_seconds"),
           "adapter_ranks": json.dumps(ranks, separators=(",", ":")) if ranks else None}
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_metrics(paths.metrics):  # a resumed run logs some steps twice: the later line wins
        by_step.setdefault(int(record["step"]), {}).update(record)
    for step in sorted(by_step):
        for key, column in (("eval/success_any", "success_any"), ("heldout/loss", "heldout_loss")):
            if key in by_step[step]:
                out[f"{column}@{step}"] = by_step[step][key]
                if column == "heldout_loss":
                    out["heldout_loss"] = by_step[step][key]  # the last step that has it
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


# --- planning and running -------------------------------------------------------------------------------
@dataclass
class SweepPlan:
    spec: SweepSpec
    runs: list[SweepRun]

    @property
    def todo(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status != "done"]


@dataclass
class SweepResult:
    results: Path
    runs: int
    ran: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def plan_sweep(path: str | Path, out: str | Path | None = None) -> SweepPlan:
    """Read, expand and check a sweep (every error before anything starts); decide each run's status."""
    spec = load_sweep(path, out)
    runs = expand(spec)
    load_configs(spec, runs)
    plan_statuses(spec, runs)
    check_inputs(spec, [r for r in runs if r.status != "done"])
    return SweepPlan(spec, runs)


def run_sweep(path: str | Path, *, jobs: int = 1, launcher: str = "processes", out: str | Path | None = None,
              progress: bool = True, slurm: dict[str, Any] | None = None) -> SweepResult:
    """Run every run of the sweep that is not finished; returns where the table is and what failed.

    launcher: "processes" (local processes, `jobs` at a time, each pinned to its share of the cores),
    "local" (submitit's LocalExecutor, the same way) or "slurm" (submitit; `slurm` holds partition,
    time (minutes), gpus, cpus_per_task; `jobs` caps how many run at once).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    plan = plan_sweep(path, out)
    spec, todo = plan.spec, plan.todo
    backend = make_launcher(launcher, spec.out, jobs, slurm or {}) if todo else None
    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.out / "sweep.yaml", spec.path.read_text(encoding="utf-8"))  # what made the table
    table = ResultsTable(spec, plan.runs)
    table.write()
    if todo:
        execute(todo, spec, backend, table, progress)
    return SweepResult(table.path, len(plan.runs), len(todo), table.failed())


def make_launcher(name: str, out: Path, jobs: int, slurm: dict[str, Any]) -> Any:
    """The launcher, made after every check (submitit creates its folder)."""
    if name == "processes":
        return ProcessLauncher(jobs, out / LOGS)
    if name in ("local", "slurm"):
        if name == "slurm" and not slurm.get("time"):
            raise ValueError("--launcher slurm needs --time (the wall-clock limit of one run, e.g. --time 24:00:00): "
                             "submitit's default is 5 minutes")
        return SubmititLauncher(name, out / "submitit", jobs, slurm)
    raise ValueError(f"unknown launcher {name!r}; use processes, local or slurm")


def execute(runs: list[SweepRun], spec: SweepSpec, launcher: Any, table: ResultsTable, progress: bool) -> None:
    """Keep `launcher.capacity` runs going until all ended; record each in the table as it ends.
    Ctrl-C stops the running ones (local runs checkpoint first) and re-raises."""
    from tqdm.auto import tqdm

    queue, running = list(runs), {}  # running: slot -> (run, handle)
    capacity = launcher.capacity or len(runs)
    bar = tqdm(total=len(runs), desc=f"sweep {spec.path.stem}", unit="run", disable=not progress, dynamic_ncols=True)
    try:
        while queue or running:
            batch = [(slot, queue.pop(0)) for slot in range(capacity) if slot not in running and queue]
            if batch:
                handles = launcher.start([_job(spec, run, *launcher.placement(slot)) for slot, run in batch])
                running.update({slot: (run, h) for (slot, run), h in zip(batch, handles)})
            launcher.wait([h for _, h in running.values()], timeout=5.0)
            for slot, (run, handle) in list(running.items()):
                finished, error = launcher.poll(handle)
                if finished:
                    del running[slot]
                    table.record(run, error)
                    bar.update(1)
                    bar.set_postfix(failed=len(table.failed()), refresh=True)
    except BaseException:
        launcher.stop([h for _, h in running.values()])
        raise
    finally:
        bar.close()


def _job(spec: SweepSpec, run: SweepRun, cores: tuple[int, ...] | None, threads: int | None) -> RunJob:
    return RunJob(run.name, spec.kind, spec.base, tuple(run.overrides), run.resume, os.getcwd(), cores, threads)


# --- cost estimate (dry run) -------------------------------------------------------------------------
def step_seconds(runs: list[SweepRun]) -> tuple[float | None, int]:
    """Training seconds per step measured on the finished runs (summary.json `seconds / steps`, pooled),
    and how many runs it comes from; (None, 0) when no run has finished."""
    seconds = steps = count = 0
    for run in runs:
        summary = _read_json(RunPaths(run.run_dir).summary) if run.status == "done" else {}
        if summary.get("seconds") and summary.get("steps"):
            seconds, steps, count = seconds + float(summary["seconds"]), steps + int(summary["steps"]), count + 1
    return (seconds / steps if steps else None), count


def steps_left(run: SweepRun) -> int:
    """Updates still to train: all of them, none (done), or after the last logged step (resume; an
    estimate: training restarts from the last checkpoint, at or before it)."""
    total = int(_get(run.config, "train.steps"))
    if run.status == "done":
        return 0
    if run.status == "resume":
        logged = [int(r["step"]) for r in read_metrics(RunPaths(run.run_dir).metrics)]
        return max(total - max(logged, default=0), 0)
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def parse_minutes(text: str | int | None) -> int | None:
    """A Slurm time limit in minutes: `90` (minutes), `90:30` (minutes:seconds), `1:30:00`, `2-12`
    (days-hours), `2-12:30`, `2-12:30:00`; seconds round up."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", str(text).strip())
    parts = [int(p) for p in match.group(2).split(":")] if match else []
    if not match:
        raise ValueError(f"--time {text!r}: use minutes (90), H:MM:SS (1:30:00) or D-HH[:MM[:SS]] (2-00:00:00)")
    if match.group(1) is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return int(match.group(1)) * 1440 + hours * 60 + minutes + (seconds > 0)
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + (parts[2] > 0)
    return parts[0] + (len(parts) == 2 and parts[1] > 0)
