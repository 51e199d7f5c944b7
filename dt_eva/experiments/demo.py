"""`run_demo`: the whole pipeline at tiny scale, as one experiment.

collect (scripted experts + action noise) -> pre-train the tiny DT on a few MT40 tasks -> fine-tune
it on one CW10 task with LoRA and with EVA -> evaluate the three models online (success, with a
Wilson interval over episodes) and on held-out episodes (action MSE, with its standard error) ->
a report (Table 6 layout).

The runs are the tiny presets (`configs/pretrain/tiny.yaml`, `configs/finetune/tiny.yaml`) with only
the demo's sizes changed: tasks, data paths, steps (and, for `fast()`, the batch and EVA's batch cap).
So there is one tiny model, and a demo run can be repeated with `dt-eva pretrain -c ...`.

Everything lands in `workdir`; running the demo again reuses what is there:
- a dataset: `collect_dataset` verifies complete tasks and skips them (other settings: its error);
- a training run: reused when it finished and its saved config has the same hash as the requested
  one (`config_hash`); resumed when it stopped after a checkpoint; a run made with another config is
  an error, found for every run before any stage starts (the demo never mixes experiments);
- an evaluation: reused when the SHA-256 of the weights and the evaluation settings hash the same.
`--task` adds runs for another task next to the others.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dt_eva
from dt_eva.config import load_config
from dt_eva.data import collect_dataset, load_dataset
from dt_eva.envs import CW10, EPISODE_LENGTH, resolve_task, short_name
from dt_eva.evaluation.offline import heldout_batches
from dt_eva.evaluation.offline import heldout_loss as offline_loss
from dt_eva.experiments.evaluate import evaluate_run, run_autocast_dtype
from dt_eva.experiments.finetune import run_finetune
from dt_eva.experiments.pretrain import run_pretrain
from dt_eva.methods.registry import resolve_method
from dt_eva.reporting import build_report, mean_se, wilson_interval
from dt_eva.runs.base import file_sha256
from dt_eva.runs.configs import FinetuneConfig, PretrainConfig
from dt_eva.runs.guard import config_hash, stable_hash
from dt_eva.runs.layout import RunPaths
from dt_eva.runs.marker import read_meta
from dt_eva.runs.policy import load_run_model, target_returns
from dt_eva.runs.status import Rerun, plan_run
from dt_eva.utils.io import atomic_write_json, load_json_object

DEFAULT_WORKDIR = "runs/demo"
DEFAULT_FAST_WORKDIR = "runs/demo-fast"
DEMO_METHODS = ("lora", "eva")
PRESETS = Path(dt_eva.__file__).resolve().parent.parent / "configs"  # the tiny presets of the source tree
STUDY_LINE = ("This is one small comparison (one task, one seed, one budget); the CW10 study (docs/results.md) "
              "is where methods are compared with several seeds and tasks.")
# Study II's verdicts in one line (docs/results.md).
STUDY_VERDICT = ("CW10 study II (pre-registered; 8 tasks x 12 seeds = 96 pairs, 100 unseen layouts each, fp32): "
                 "success at any step, EVA - LoRA -0.002 [-0.018, +0.015], EVA+DoRA - DoRA -0.006 [-0.022, +0.009], "
                 "EVA - FFT -0.012 [-0.028, +0.004]; verdict for all three: no difference as large as 0.04. "
                 "See docs/results.md.")


# --- settings and paths ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSettings:
    """The demo's sizes; the model and training recipe are the tiny presets'. `default()` keeps the
    earlier demo's budget (8-11 min measured on 2 cores, docs/benchmarks.md "Demo"): as many updates,
    each no dearer than before; `fast()` is a smoke run."""

    preset: str
    # window-close: a CW10 task the scripted expert solves reliably, and whose skill (moving a
    # window handle) the pre-training set shares through window-open, so a tiny DT can pick it up
    # within a few hundred updates.
    task: str = "window-close"
    # MT40 tasks that share skills with the CW10 tasks (reaching, pushing, opening/closing, pressing):
    # a handful keeps the pre-training short enough for a CPU.
    pretrain_tasks: tuple[str, ...] = (
        "reach-v3", "window-open-v3", "drawer-close-v3", "door-open-v3",
        "button-press-v3", "faucet-open-v3", "handle-press-v3", "plate-slide-v3",
    )  # fmt: skip
    pretrain_episodes: int = 24  # per task
    finetune_episodes: int = 48
    heldout_episodes: int = 12  # of the fine-tuning task, on other goal layouts: the held-out loss
    noise_levels: tuple[float, ...] = (0.0, 0.3, 0.6)
    random_prefixes: tuple[int, ...] = (0, 40)  # leading random steps: spreads returns for conditioning
    pretrain_steps: int = 2000
    finetune_steps: int = 600
    batch_size: int | None = None  # None: the presets' (64 pre-training, 32 fine-tuning)
    eva_max_batches: int | None = None  # None: the preset's cap on EVA's SVD batches
    eval_episodes: int = 20
    seed: int = 0
    workers: int = 2

    @classmethod
    def default(cls, task: str | None = None) -> "DemoSettings":
        return cls(preset="default", **({"task": task} if task else {}))

    @classmethod
    def fast(cls, task: str | None = None) -> "DemoSettings":
        """The same stages with a few dozen updates and a few episodes (checks the pipeline, not the method)."""
        return cls(
            preset="fast", pretrain_tasks=("reach-v3", "window-open-v3"), pretrain_episodes=4, finetune_episodes=4,
            heldout_episodes=2, noise_levels=(0.0, 0.5), random_prefixes=(0,), pretrain_steps=60, finetune_steps=30,
            batch_size=16, eva_max_batches=4, eval_episodes=4, **({"task": task} if task else {}),
        )

    def datasets(self) -> dict[str, tuple[list[str], int, int]]:
        """name -> (tasks, episodes per task, collection seed). "heldout" takes the next seed, so its
        episodes play other goal layouts than the fine-tuning data's."""
        return {"pretrain": (list(self.pretrain_tasks), self.pretrain_episodes, self.seed),
                "finetune": ([self.task], self.finetune_episodes, self.seed),
                "heldout": ([self.task], self.heldout_episodes, self.seed + 1)}


@dataclass(frozen=True)
class DemoPaths:
    workdir: Path
    task: str  # full name, e.g. "window-close-v3"

    data = property(lambda self: self.workdir / "data")
    pretrain_run = property(lambda self: self.workdir / "pretrain")
    report = property(lambda self: self.workdir / f"report-{short_name(self.task)}")

    def finetune_run(self, method: str) -> Path:
        return self.workdir / f"{short_name(self.task)}-{method}"

    def model_runs(self) -> dict[str, Path]:
        """The compared models: "pretrained" (no fine-tuning) and one per method."""
        return {"pretrained": self.pretrain_run, **{m: self.finetune_run(m) for m in DEMO_METHODS}}

    def result(self, model: str) -> Path:
        """The demo's record of one model's evaluation (success per episode, held-out loss)."""
        return self.workdir / "results" / short_name(self.task) / f"{model}.json"


def _settings(fast: bool, task: str | None, settings: DemoSettings | None) -> DemoSettings:
    if settings is None:
        full = resolve_task(task) if task else None
        settings = DemoSettings.fast(full) if fast else DemoSettings.default(full)
    full_task = resolve_task(settings.task)
    if full_task not in CW10:
        raise ValueError(f"the demo fine-tunes on a CW10 task; {full_task} is not one of "
                         f"{', '.join(short_name(t) for t in CW10)}")
    return dataclasses.replace(settings, task=full_task)


# --- the run configs: the tiny presets with the demo's sizes -------------------------------------
def _preset(kind: str) -> Path:
    path = PRESETS / kind / "tiny.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"the demo builds on the tiny preset {path}, which is missing: run it from a source "
                                "checkout of dt-eva (pip install -e .)")
    return path


def _cadence(steps: int) -> dict[str, int]:
    """Log and checkpoint cadence for a short run (both resume-mutable: not part of the config hash)."""
    return {"log_every": max(1, min(25, steps // 20)), "ckpt_every": max(1, steps // 4)}


def pretrain_config(settings: DemoSettings, paths: DemoPaths, progress: bool = True) -> PretrainConfig:
    """`configs/pretrain/tiny.yaml` on the demo's tasks and data for `pretrain_steps` updates; no
    evaluation during training (the demo evaluates every model in its own stage, the same way)."""
    cfg = load_config(PretrainConfig, _preset("pretrain"))
    steps = settings.pretrain_steps
    train = dataclasses.replace(cfg.train, steps=steps, batch_size=settings.batch_size or cfg.train.batch_size,
                                eval_every=0, progress=progress, **_cadence(steps))
    data = dataclasses.replace(cfg.data, path=str(paths.data / "pretrain"), tasks=list(settings.pretrain_tasks))
    return dataclasses.replace(cfg, name="demo-pretrain", run_dir=str(paths.pretrain_run), seed=settings.seed,
                               data=data, train=train)


def finetune_config(settings: DemoSettings, paths: DemoPaths, method: str, progress: bool = True) -> FinetuneConfig:
    """`configs/finetune/tiny.yaml` for `method` on the demo's task for `finetune_steps` updates (the
    same recipe for LoRA and EVA: only the initialisation differs)."""
    cfg = load_config(FinetuneConfig, _preset("finetune"))
    steps = settings.finetune_steps
    train = dataclasses.replace(cfg.train, steps=steps, batch_size=settings.batch_size or cfg.train.batch_size,
                                eval_episodes=0, progress=progress, **_cadence(steps))
    eva = cfg.eva if settings.eva_max_batches is None else dataclasses.replace(cfg.eva, max_batches=settings.eva_max_batches)
    return dataclasses.replace(
        cfg, name=f"demo-{short_name(paths.task)}-{method}", run_dir=str(paths.finetune_run(method)),
        seed=settings.seed, checkpoint=str(paths.pretrain_run), task=paths.task, method=method, eva=eva,
        data=dataclasses.replace(cfg.data, path=str(paths.data / "finetune")), train=train,
    )


# --- stage identity: hashes, never file times ------------------------------------------------------
# the demo never mixes experiments: every run of its workdir must have the demo's settings
DEMO_RERUN = Rerun(finished="reuse", needs_model=True, any_saved=True,
                   conflict="{root} holds a {kind} run made with other settings ({changes}); the demo does not mix "
                            "experiments: use another --workdir, or delete {root}")


def plan_training(run_dir: Path, cfg: Any, kind: str) -> str:
    """What the training stage will do: "reuse" (finished, same config), "resume", "restart" (a run
    that never checkpointed) or "new". A run made with other settings is a `ValueError`."""
    return plan_run(run_dir, kind, cfg, rerun=DEMO_RERUN)


def check_fine_tuned_from(run_dir: Path, base_dir: Path) -> None:
    """A fine-tuning run in the workdir must come from the workdir's pre-trained model as it is now."""
    recorded = ((read_meta(run_dir) or {}).get("base") or {}).get("sha256")
    base_model = RunPaths(base_dir).model
    if recorded and (not base_model.is_file() or file_sha256(base_model) != recorded):
        raise ValueError(f"{run_dir} was fine-tuned from another pre-trained model than {base_model} (SHA-256 "
                         f"{recorded[:12]}... recorded); delete {run_dir} to fine-tune the current one")


def plan_runs(configs: dict[str, Any], paths: DemoPaths) -> dict[str, str]:
    """`plan_training` for every run, before any stage starts: a conflict loses nothing."""
    plans = {"pretrain": plan_training(paths.pretrain_run, configs["pretrain"], "pretrain")}
    for method in DEMO_METHODS:
        run_dir = paths.finetune_run(method)
        plans[method] = plan_training(run_dir, configs[method], "finetune")
        if plans[method] != "new":
            check_fine_tuned_from(run_dir, paths.pretrain_run)
    return plans


# --- stages ----------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    name: str
    status: str  # "done", "resumed from checkpoint", "skipped (...)", ...
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process and its finished children (all threads)
    path: str


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Stages:
    log: Callable[[str], None]
    records: list[StageRecord] = field(default_factory=list)

    def run(self, name: str, path: Path, work: Callable[..., str], *args: Any) -> None:
        """`work(*args)` returns the stage's status; its wall and CPU time are recorded."""
        self.log(f"\n=== [{len(self.records) + 1}] {name} -> {path} ===")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        status = work(*args)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        self.records.append(StageRecord(name, status, seconds, cpu, str(path)))
        self.log(f"=== {name}: {status} in {seconds:.1f} s (CPU {cpu:.1f} s) ===")


def collect(out: Path, tasks: list[str], episodes: int, seed: int, settings: DemoSettings, progress: bool) -> str:
    meta = collect_dataset(out, tasks, episodes, settings.noise_levels, seed=seed, workers=settings.workers,
                           progress=progress, random_prefixes=settings.random_prefixes)
    return "done" if meta["run"]["collected"] else "skipped (dataset complete)"


def train(plan: str, cfg: Any, runner: Callable[..., Path]) -> str:
    if plan == "reuse":
        return f"skipped (finished run, config hash {config_hash(cfg)})"
    runner(cfg, resume=plan != "new")
    return {"new": "done", "resume": "resumed from checkpoint", "restart": "restarted (it had no checkpoint)"}[plan]


def heldout_loss(run_dir: Path, data_path: Path, task: str) -> dict[str, Any]:
    """Action MSE of the run's policy on held-out episodes of `task`: per episode, the training loss
    (without dropout) over the non-overlapping K-step windows that tile it (`evaluation.offline`)."""
    model, info = load_run_model(run_dir)
    dataset = load_dataset(data_path, tasks=[task])
    k = model.cfg.context_len
    # one batch per episode: its EPISODE_LENGTH // K windows
    batches = heldout_batches(dataset, task, model.cfg, batch_size=EPISODE_LENGTH // k)
    dtype = run_autocast_dtype(run_dir, info)  # the precision the run trained and is evaluated at
    per_episode = [offline_loss(model, [batch], dtype) for batch in batches]
    mse = mean_se(per_episode)
    return {"mse_per_episode": per_episode, "mean": mse.mean, "se": mse.se, "n": mse.n}


def evaluate(name: str, run_dir: Path, paths: DemoPaths, settings: DemoSettings, target: float, progress: bool,
             records: dict[str, dict]) -> str:
    """Online success on the task (`evaluate_run`, every model conditioned on `target`) and the held-out
    loss; reused when the weights (SHA-256) and these settings hash as in the stored record."""
    weights = sorted({file_sha256(RunPaths(paths.pretrain_run).model), file_sha256(RunPaths(run_dir).model)})
    key = {"weights": weights, "task": paths.task, "episodes": settings.eval_episodes, "seed": settings.seed,
           "target_return": target, "heldout": settings.datasets()["heldout"]}
    record_path = paths.result(name)
    saved = _stored_record(record_path)
    if saved is not None:
        if saved.get("hash") == stable_hash(key):
            records[name] = saved
            return f"skipped (same weights and settings, hash {saved['hash']})"
    result = evaluate_run(run_dir, tasks=[paths.task], episodes=settings.eval_episodes, seed=settings.seed,
                          target_return=target, progress=progress)
    records[name] = {"hash": stable_hash(key), "key": key, "run": str(run_dir), **result["tasks"][paths.task],
                     "heldout": heldout_loss(run_dir, paths.data / "heldout", paths.task)}
    atomic_write_json(record_path, records[name])
    return "done"


def _stored_record(path: Path) -> dict[str, Any] | None:
    """An earlier evaluation's record; None when there is none or it is damaged (it is then re-made)."""
    try:
        return load_json_object(path)
    except (OSError, ValueError):
        return None


def make_report(paths: DemoPaths, out: dict[str, Any]) -> str:
    """Table 6 layout, curves and EVA's rank heatmap from the three runs (rebuilt every time: seconds)."""
    out.update(build_report(list(paths.model_runs().values()), paths.report))
    return "done"


# --- uncertainty -----------------------------------------------------------------------------------
def compare(records: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per model: success at any / the final step with its Wilson 95 % interval, and the held-out loss."""
    out: dict[str, dict[str, Any]] = {}
    for name, record in records.items():
        row: dict[str, Any] = {"heldout_mse": {k: record["heldout"][k] for k in ("mean", "se", "n")}}
        for metric in ("success_any", "success_final"):
            per_episode = record[f"{metric}_per_episode"]
            k, n = round(sum(per_episode)), len(per_episode)
            row[metric] = {"rate": k / n, "successes": k, "episodes": n, "interval95": wilson_interval(k, n)}
        out[name] = row
    return out


# --- the experiment --------------------------------------------------------------------------------
def run_demo(
    workdir: str | Path | None = None,
    fast: bool = False,
    task: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run (or continue) the demo in `workdir`; returns what was made and where.

    `settings` replaces the preset chosen by `fast` (custom sizes). Returns `{"workdir", "task",
    "settings", "datasets", "runs", "configs" (hash per run), "comparison" (see `compare`), "report"
    (`build_report`'s result), "stages" ([StageRecord]), "seconds", "summary"}`.
    """
    settings = _settings(fast, task, settings)
    default_dir = DEFAULT_FAST_WORKDIR if settings.preset == "fast" else DEFAULT_WORKDIR
    paths = DemoPaths(Path(workdir or default_dir), settings.task)
    configs = {"pretrain": pretrain_config(settings, paths, progress),
               **{m: finetune_config(settings, paths, m, progress) for m in DEMO_METHODS}}
    plans = plan_runs(configs, paths)  # every conflict is an error before anything is written
    started, stages = time.perf_counter(), Stages(log)
    task_name = short_name(settings.task)
    log(f"dt-eva demo ({settings.preset}): pre-train on {len(settings.pretrain_tasks)} MT40 tasks, fine-tune on "
        f"{task_name} with LoRA and EVA; workdir {paths.workdir}")

    for name, (tasks, episodes, seed) in settings.datasets().items():
        stages.run(f"collect {name} data", paths.data / name,
                   collect, paths.data / name, tasks, episodes, seed, settings, progress)
    stages.run("pre-train tiny DT", paths.pretrain_run, train, plans["pretrain"], configs["pretrain"], run_pretrain)
    for method in DEMO_METHODS:
        stages.run(f"fine-tune {resolve_method(method).label} on {task_name}", paths.finetune_run(method),
                   train, plans[method], configs[method], run_finetune)

    # every model, the pre-trained one included, is conditioned on the best return of the task's data
    target = target_returns(load_dataset(paths.data / "finetune", tasks=[settings.task]), [settings.task])[settings.task]
    records: dict[str, dict] = {}
    for name, run_dir in paths.model_runs().items():
        stages.run(f"evaluate {_label(name)}", run_dir, evaluate, name, run_dir, paths, settings, target, progress,
                   records)
    report: dict[str, Any] = {}
    stages.run("report", paths.report, make_report, paths, report)

    result = {
        "workdir": str(paths.workdir), "task": settings.task, "settings": dataclasses.asdict(settings),
        "datasets": {name: str(paths.data / name) for name in ("pretrain", "finetune", "heldout")},
        "runs": {name: str(d) for name, d in paths.model_runs().items()},
        "configs": {name: config_hash(cfg) for name, cfg in configs.items()},
        "comparison": compare(records), "report": report, "stages": stages.records,
        "seconds": time.perf_counter() - started,
    }
    result["summary"] = format_summary(result, configs)
    log("\n" + result["summary"])
    return result


# --- the closing text ------------------------------------------------------------------------------
def _label(name: str) -> str:
    return "pre-trained DT (no fine-tuning)" if name == "pretrained" else resolve_method(name).label


def _interval(cell: dict[str, Any]) -> str:
    lo, hi = cell["interval95"]
    return f"{cell['rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def format_comparison(result: dict[str, Any], configs: dict[str, Any]) -> list[str]:
    """The comparison table, what its intervals are, and the line that puts it in its place."""
    rows = result["comparison"]
    first = next(iter(rows.values()))
    eval_n, heldout_n = first["success_any"]["episodes"], first["heldout_mse"]["n"]
    lines = [f"{short_name(result['task'])}: success over {eval_n} evaluation episodes (unseen goal layouts) with its "
             f"Wilson 95 % interval; action MSE on {heldout_n} held-out episodes ± standard error.",
             f"  {'model':<34}{'success (any step)':<22}{'success (final step)':<22}held-out action MSE"]
    for name, row in rows.items():
        label = _label(name)
        if name in configs:
            cfg = configs[name]
            label += f" (r={cfg.rank}{f', rho={cfg.rho:g}' if resolve_method(name).eva else ''}, {cfg.train.steps} updates)"
        mse = row["heldout_mse"]
        se = f" ± {mse['se']:.4f}" if mse["se"] is not None else ""
        lines.append(f"  {label:<34}{_interval(row['success_any']):<22}{_interval(row['success_final']):<22}"
                     f"{mse['mean']:.4f}{se}")
    return lines + [STUDY_LINE, STUDY_VERDICT]


def format_summary(result: dict[str, Any], configs: dict[str, Any]) -> str:
    """The closing text: the comparison with its uncertainty, stage times and where every artifact is."""
    runs, data = result["runs"], result["datasets"]
    lines = [f"=== dt-eva demo finished in {result['seconds']:.0f} s ({result['settings']['preset']} preset) ===", ""]
    lines += format_comparison(result, configs) + ["", "Stages:"]
    width = max(len(s.name) for s in result["stages"])
    for s in result["stages"]:
        lines.append(f"  {s.name:<{width}}  {s.seconds:7.1f} s  (CPU {s.cpu_seconds:7.1f} s)  {s.status}")
    lines += [
        "", "Artifacts:",
        f"  datasets           {data['pretrain']}  {data['finetune']}  {data['heldout']}  (metadata.json, <task>/*.npy)",
        f"  pre-trained DT     {runs['pretrained']}  (model.pt, config.yaml, metrics.jsonl, tb/, evaluation records)",
        f"  LoRA fine-tuning   {runs['lora']}  (model.pt, metrics.jsonl, tb/, evaluation records)",
        f"  EVA fine-tuning    {runs['eva']}  (model.pt, eva/ ranks + ranks.png, metrics.jsonl, tb/, evaluation records)",
        f"  comparison         {Path(result['workdir']) / 'results' / short_name(result['task'])}/*.json  "
        "(per-episode success, held-out loss)",
        f"  report             {result['report']['out_dir']}/report.md  (tables as .md/.csv, curves/*.png, heatmaps/*.png)",
        "", f"Re-run `dt-eva demo` to reuse all of this; `dt-eva report {result['workdir']}` rebuilds the report; "
        f"`tensorboard --logdir {result['workdir']}` shows the curves.",
    ]
    return "\n".join(lines)
