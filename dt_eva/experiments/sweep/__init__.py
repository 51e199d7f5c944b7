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

The package, one job per module: `spec` (the sweep file), `expand` (grid -> runs), `checks` (configs,
statuses, inputs: every error before anything starts), `worker` (one run in its process, core slots),
`launchers` (local processes, submitit, Slurm), `slurm` (Slurm job states from squeue), `run` (plan_sweep,
run_sweep), `estimate` (the dry run's cost estimate, time limits). The results table is
`dt_eva.runs.results` (torch-free, read by reports).
"""

from dt_eva.experiments.sweep.checks import check_inputs, load_configs, plan_statuses
from dt_eva.experiments.sweep.estimate import format_duration, parse_minutes, step_seconds, steps_left
from dt_eva.experiments.sweep.expand import SweepRun, expand
from dt_eva.experiments.sweep.launchers import ProcessLauncher, SlurmLauncher, SubmititLauncher, make_launcher
from dt_eva.experiments.sweep.run import SweepPlan, SweepResult, execute, plan_sweep, run_sweep
from dt_eva.experiments.sweep.spec import KINDS, LOGS, RESULTS, RUNS, Rule, SweepSpec, load_sweep
from dt_eva.experiments.sweep.worker import RunJob, core_slots, run_job
from dt_eva.runs.results import FIELDS, ResultsTable, read_run_results

__all__ = ["FIELDS", "KINDS", "LOGS", "RESULTS", "RUNS", "ProcessLauncher", "ResultsTable", "Rule", "RunJob",
           "SlurmLauncher", "SubmititLauncher", "SweepPlan", "SweepResult", "SweepRun", "SweepSpec", "check_inputs",
           "core_slots", "execute", "expand", "format_duration", "load_configs", "load_sweep", "make_launcher",
           "parse_minutes", "plan_statuses", "plan_sweep", "read_run_results", "run_job", "run_sweep", "step_seconds",
           "steps_left"]
