"""The checks before anything starts: every run's config, its status from its folder, its inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dt_eva.config import load_config
from dt_eva.experiments.sweep.expand import SweepRun
from dt_eva.experiments.sweep.spec import KINDS, SweepSpec, load_ref
from dt_eva.runs.guard import config_hash
from dt_eva.runs.results import RESULTS, committed_results, measure_mismatch
from dt_eva.runs.status import Rerun, plan_run


def load_configs(spec: SweepSpec, runs: list[SweepRun]) -> None:
    """Build every run's config; a bad key or value is an error that names the run."""
    cls = load_ref(KINDS[spec.kind][0])
    for run in runs:
        try:
            run.config = load_config(cls, spec.base, run.overrides)
        except (ValueError, FileNotFoundError) as e:
            raise _naming(e, f"{spec.path}: run {run.name}: {e}") from None


# a finished run is kept when it measured what the sweep asks for; an interrupted one is resumed
SWEEP_RERUN = Rerun(finished="done", every_key=True,
                    conflict="it finished in {root} with another config ({changes}); restore the sweep's settings, "
                             "or give the sweep another out: (or delete that run)")


def plan_statuses(spec: SweepSpec, runs: list[SweepRun]) -> None:
    """new / restart / resume / done for each run, from its directory; refuses a folder that is not our
    run, a finished run whose saved config differs from the requested one (the sweep file changed under
    it) and an interrupted one that could not resume."""
    committed = committed_results(spec.out / RESULTS)
    for run in runs:
        try:
            run.status = plan_run(run.run_dir, spec.kind, run.config, rerun=SWEEP_RERUN)
            row = committed.get(run.name, {})
            if run.status == "new" and row.get("config_hash") == config_hash(run.config):
                changed = measure_mismatch(row, run.config)
                if changed:  # as a run folder with these changes is refused: the row would be replaced
                    raise ValueError(f"it finished (its row in {spec.out / RESULTS}) measured with other settings "
                                     f"({changed}); restore the sweep's settings, or give the sweep another out: "
                                     "(or delete that row)")
                run.status = "done"  # finished in an earlier session: results.csv keeps its row
        except (ValueError, FileNotFoundError) as e:
            raise _naming(e, f"{spec.path}: run {run.name}: {e}") from None


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
        load_data = load_ref("dt_eva.experiments.pretrain:load_pretrain_dataset")
        return {("data", cfg.data.path, json.dumps(cfg.data.tasks)): lambda: load_data(cfg)}
    resolve_method = load_ref("dt_eva.methods.registry:resolve_method")
    load_base = load_ref("dt_eva.runs.base:load_pretrained_base")
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
