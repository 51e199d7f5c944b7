"""`run_demo`: the whole pipeline at tiny scale, as library calls.

collect (scripted experts + action noise) -> pre-train a tiny DT on a few MT40 tasks -> fine-tune it
on one CW10 task with LoRA and with EVA -> evaluate the pre-trained model and both fine-tuned ones
online -> a report (Table 6 layout) comparing them.

Everything lands in `workdir`; re-running reuses what is there: a complete dataset or finished run
is skipped, an interrupted run is resumed from its last checkpoint, an evaluation is redone only
when it is missing or older than the model. A workdir made with other settings is an error (it
would silently mix experiments), except the fine-tuning task: `--task` adds runs next to the others.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dt_eva.utils.io import atomic_write_json

DEFAULT_WORKDIR = "runs/demo"
DEFAULT_FAST_WORKDIR = "runs/demo-fast"
DEMO_METHODS = ("lora", "eva")
_SETTINGS_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every stage. `default()` is budgeted for 15 minutes on 2 dedicated CPU cores
    (collect ~1 min, pre-train ~5-6 min, two fine-tunings ~1.5-2 min each, three evaluations
    ~1 min, report seconds); `fast()` is a smoke run of a minute or two.
    """

    preset: str
    # window-close: a CW10 task the scripted expert solves reliably, and whose skill (moving a
    # window handle) the pre-training set shares through window-open, so a tiny DT can pick it up
    # within a few hundred updates.
    task: str = "window-close"
    # MT40 tasks the tiny DT is pre-trained on: a handful that share skills with the CW10 tasks
    # (reaching, pushing, opening/closing, pressing) keeps the pre-training short enough for a CPU.
    pretrain_tasks: tuple[str, ...] = (
        "reach-v3", "window-open-v3", "drawer-close-v3", "door-open-v3",
        "button-press-v3", "faucet-open-v3", "handle-press-v3", "plate-slide-v3",
    )  # fmt: skip
    pretrain_episodes: int = 24  # per task
    finetune_episodes: int = 48
    noise_levels: tuple[float, ...] = (0.0, 0.3, 0.6)
    random_prefixes: tuple[int, ...] = (0, 40)  # leading random steps: spreads returns for conditioning
    pretrain_steps: int = 2000
    finetune_steps: int = 600
    batch_size: int = 32
    rank: int = 8
    rho: float = 2.0
    eva_max_batches: int = 20  # cap on EVA's SVD batches (16 windows each)
    eval_episodes: int = 20
    seed: int = 0
    workers: int = 2

    @classmethod
    def default(cls, task: str | None = None) -> "DemoSettings":
        return cls(preset="default", **({"task": task} if task else {}))

    @classmethod
    def fast(cls, task: str | None = None) -> "DemoSettings":
        """A smoke run: the same stages with a few dozen updates and a few episodes (checks the
        pipeline, not the method)."""
        return cls(
            preset="fast",
            pretrain_tasks=("reach-v3", "window-open-v3"),
            pretrain_episodes=4,
            finetune_episodes=4,
            noise_levels=(0.0, 0.5),
            random_prefixes=(0,),
            pretrain_steps=60,
            finetune_steps=30,
            batch_size=16,
            eva_max_batches=4,
            eval_episodes=4,
            **({"task": task} if task else {}),
        )

    def identity(self) -> dict[str, Any]:
        """The settings a workdir is tied to (all but the fine-tuning task)."""
        d = dataclasses.asdict(self)
        d.pop("task")
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from demo.json


@dataclass
class DemoPaths:
    workdir: Path
    task: str  # full name, e.g. "window-close-v3"

    @property
    def pretrain_data(self) -> Path:
        return self.workdir / "data" / "pretrain"

    @property
    def finetune_data(self) -> Path:
        return self.workdir / "data" / "finetune"

    @property
    def pretrain_run(self) -> Path:
        return self.workdir / "pretrain"

    def finetune_run(self, method: str) -> Path:
        return self.workdir / f"{_short(self.task)}-{method}"

    @property
    def report(self) -> Path:
        return self.workdir / f"report-{_short(self.task)}"


@dataclass
class StageRecord:
    name: str
    status: str  # "done", "resumed from checkpoint" or "skipped (...)"
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process and its finished children (all threads)
    path: str


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class _Stages:
    log: Callable[[str], None]
    records: list[StageRecord] = field(default_factory=list)

    def run(self, name: str, path: Path, work: Callable[[], str]) -> None:
        self.log(f"\n=== [{len(self.records) + 1}] {name} -> {path} ===")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        status = work()
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        self.records.append(StageRecord(name, status, seconds, cpu, str(path)))
        self.log(f"=== {name}: {status} in {seconds:.1f} s (CPU {cpu:.1f} s) ===")


def _short(task: str) -> str:
    return task[:-3] if task.endswith("-v3") else task


def _check_workdir(workdir: Path, settings: DemoSettings) -> None:
    """Tie the workdir to the settings (all but the task); a mismatch would mix experiments."""
    path = workdir / _SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings.identity():
            changed = sorted(k for k in set(saved) | set(settings.identity())
                             if saved.get(k) != settings.identity().get(k))
            raise ValueError(
                f"{workdir} holds a demo made with other settings (differing: {', '.join(changed)}; "
                f"preset {saved.get('preset')!r} there, {settings.preset!r} now). Use another --workdir "
                f"(the default for --fast is {DEFAULT_FAST_WORKDIR}) or delete {workdir}"
            )
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, settings.identity())


def pretrain_config(settings: DemoSettings, paths: DemoPaths, progress: bool = True) -> Any:
    """The demo's `PretrainConfig`: `DTConfig.tiny()` and the tiny preset's recipe, scaled down."""
    from dt_eva.config import load_config
    from dt_eva.training import PretrainConfig

    steps = settings.pretrain_steps
    overrides = [
        "name=demo-pretrain",
        f"run_dir={paths.pretrain_run}",
        f"seed={settings.seed}",
        f"data.path={paths.pretrain_data}",
        f"data.tasks=[{', '.join(settings.pretrain_tasks)}]",
        "model.hidden_size=128", "model.n_layer=3", "model.n_head=4", "model.context_len=20", "model.dropout=0.1",
        "optim.lr=3e-4", f"optim.warmup_steps={max(1, steps // 10)}", "optim.min_lr=1e-5",
        f"train.steps={steps}",
        f"train.batch_size={settings.batch_size}",
        f"train.log_every={max(1, min(50, steps // 20))}",
        f"train.ckpt_every={max(1, steps // 5)}",
        "train.eval_every=0",
        "train.device=cpu",
        f"train.progress={str(progress).lower()}",
    ]
    return load_config(PretrainConfig, None, overrides)


def finetune_config(settings: DemoSettings, paths: DemoPaths, method: str, progress: bool = True) -> Any:
    """The demo's `FinetuneConfig` for `method` (same recipe for LoRA and EVA: only the init differs)."""
    from dt_eva.config import load_config
    from dt_eva.training.finetune import FinetuneConfig

    steps = settings.finetune_steps
    overrides = [
        f"name=demo-{_short(paths.task)}-{method}",
        f"run_dir={paths.finetune_run(method)}",
        f"seed={settings.seed}",
        f"checkpoint={paths.pretrain_run}",
        f"task={paths.task}",
        f"method={method}",
        f"rank={settings.rank}",
        f"rho={settings.rho}",
        f"data.path={paths.finetune_data}",
        "optim.lr=1e-3", f"optim.warmup_steps={max(1, steps // 10)}", "optim.min_lr=1e-5",
        f"train.steps={steps}",
        f"train.batch_size={settings.batch_size}",
        f"train.log_every={max(1, min(25, steps // 20))}",
        f"train.ckpt_every={max(1, steps // 4)}",
        "train.eval_every=0",
        "train.eval_episodes=0",  # evaluated by the demo's own stage, with the same settings for every run
        f"eva.max_batches={settings.eva_max_batches}",
        "train.device=cpu",
        f"train.progress={str(progress).lower()}",
    ]
    return load_config(FinetuneConfig, None, overrides)


def _train(run_dir: Path, cfg: Any, cls: type, runner: Callable[..., Path], mutable: tuple[str, ...]) -> str:
    """Skip a finished run with the same config, otherwise start or resume it."""
    from dt_eva.config import config_diff, load_config

    if (run_dir / "summary.json").is_file() and (run_dir / "model.pt").is_file():
        saved = load_config(cls, run_dir / "config.yaml")
        changed = {k: v for k, v in config_diff(saved, cfg).items() if k not in mutable}
        if changed:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{run_dir} is a finished run with another config ({lines}); delete it or use "
                             "another --workdir")
        return "skipped (finished run reused)"
    resuming = (run_dir / "checkpoints" / "last.pt").is_file()
    runner(cfg, resume=True)  # resume=True also starts a fresh run when there is nothing to resume
    return "resumed from checkpoint" if resuming else "done"


def _evaluate(run_dir: Path, task: str, settings: DemoSettings, target_return: float | None,
              progress: bool) -> str:
    """Evaluate on `task` unless eval.json already holds it with these settings, newer than the model."""
    from dt_eva.evaluation import evaluate_run

    eval_path, model_path = run_dir / "eval.json", run_dir / "model.pt"
    tasks = [task]
    if eval_path.is_file():
        saved = json.loads(eval_path.read_text())
        same = saved.get("episodes") == settings.eval_episodes and saved.get("seed") == settings.seed
        fresh = eval_path.stat().st_mtime >= model_path.stat().st_mtime
        if same and fresh:
            if task in saved.get("tasks", {}):
                return "skipped (eval.json up to date)"
            tasks = sorted(set(saved["tasks"]) | {task})  # keep earlier --task results in eval.json
    evaluate_run(run_dir, tasks=tasks, episodes=settings.eval_episodes, seed=settings.seed,
                 target_return=target_return, progress=progress)
    return "done"


def run_demo(
    workdir: str | Path | None = None,
    fast: bool = False,
    task: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Run (or continue) the demo in `workdir`; returns what was made and where.

    `settings` overrides the preset chosen by `fast` (for custom sizes). Returns
    `{"workdir", "task", "settings", "dataset": {...}, "runs": {"pretrain", "lora", "eva"},
    "report": build_report(...) result, "table": Markdown, "stages": [StageRecord], "seconds"}`.
    """
    from dt_eva.envs import CW10, resolve_task
    from dt_eva.reporting.tables import method_label

    full_task = resolve_task(task) if task else None
    if settings is None:
        settings = DemoSettings.fast(full_task) if fast else DemoSettings.default(full_task)
    full_task = resolve_task(settings.task)
    if full_task not in CW10:
        raise ValueError(f"the demo fine-tunes on a CW10 task; {full_task} is not one of "
                         f"{', '.join(_short(t) for t in CW10)}")
    workdir = Path(workdir or (DEFAULT_FAST_WORKDIR if settings.preset == "fast" else DEFAULT_WORKDIR))
    paths = DemoPaths(workdir, full_task)
    _check_workdir(workdir, settings)
    started = time.perf_counter()
    stages = _Stages(log)
    log(f"dt-eva demo ({settings.preset}): pre-train on {len(settings.pretrain_tasks)} MT40 tasks, fine-tune on "
        f"{_short(full_task)} with LoRA and EVA (rank {settings.rank}, rho {settings.rho:g}); workdir {workdir}")

    from dt_eva.data import collect_dataset, load_dataset

    def collect(out: Path, tasks: list[str], episodes: int) -> Callable[[], str]:
        def work() -> str:
            meta = collect_dataset(out, tasks, episodes, settings.noise_levels, seed=settings.seed,
                                   workers=settings.workers, progress=progress,
                                   random_prefixes=settings.random_prefixes)
            run = meta.get("run", {})
            return "skipped (dataset complete)" if not run.get("collected") else "done"
        return work

    stages.run("collect pre-training data", paths.pretrain_data,
               collect(paths.pretrain_data, list(settings.pretrain_tasks), settings.pretrain_episodes))
    stages.run("collect fine-tuning data", paths.finetune_data,
               collect(paths.finetune_data, [full_task], settings.finetune_episodes))

    from dt_eva.training import PretrainConfig, run_pretrain
    from dt_eva.training.pretrain import RESUME_MUTABLE_KEYS

    pre_cfg = pretrain_config(settings, paths, progress)
    stages.run("pre-train tiny DT", paths.pretrain_run,
               lambda: _train(paths.pretrain_run, pre_cfg, PretrainConfig, run_pretrain, RESUME_MUTABLE_KEYS))

    from dt_eva.training.finetune import RESUME_MUTABLE_KEYS as FT_MUTABLE_KEYS
    from dt_eva.training.finetune import FinetuneConfig, run_finetune

    for method in DEMO_METHODS:
        ft_cfg = finetune_config(settings, paths, method, progress)
        run_dir = paths.finetune_run(method)
        stages.run(f"fine-tune {method_label(method)} on {_short(full_task)}", run_dir,
                   lambda c=ft_cfg, d=run_dir: _train(d, c, FinetuneConfig, run_finetune, FT_MUTABLE_KEYS))

    # the pre-trained model has no data of the fine-tuning task: condition on the same target return
    target = float(load_dataset(paths.finetune_data, tasks=[full_task]).max_return(full_task))
    stages.run("evaluate pre-trained DT (no fine-tuning)", paths.pretrain_run,
               lambda: _evaluate(paths.pretrain_run, full_task, settings, target, progress))
    for method in DEMO_METHODS:
        run_dir = paths.finetune_run(method)
        stages.run(f"evaluate {method_label(method)}", run_dir,
                   lambda d=run_dir: _evaluate(d, full_task, settings, None, progress))

    from dt_eva.reporting import build_report

    report: dict[str, Any] = {}

    def make_report() -> str:
        report.update(build_report([paths.pretrain_run] + [paths.finetune_run(m) for m in DEMO_METHODS],
                                   paths.report))
        return "done"

    stages.run("report", paths.report, make_report)
    seconds = time.perf_counter() - started
    table = "\n".join(report["tables"][n] for n in ("table6_success_any", "table6_success_final")
                      if n in report["tables"])
    result = {
        "workdir": str(workdir),
        "task": full_task,
        "settings": dataclasses.asdict(settings),
        "dataset": {"pretrain": str(paths.pretrain_data), "finetune": str(paths.finetune_data)},
        "runs": {"pretrain": str(paths.pretrain_run), **{m: str(paths.finetune_run(m)) for m in DEMO_METHODS}},
        "report": report,
        "table": table,
        "stages": stages.records,
        "seconds": seconds,
    }
    log("\n" + format_summary(result))
    return result


def format_summary(result: dict[str, Any]) -> str:
    """The closing text: comparison table, stage times and where every artifact is."""
    runs = result["runs"]
    lines = [f"=== dt-eva demo finished in {result['seconds']:.0f} s ({result['settings']['preset']} preset) ===", "",
             result["table"], "Stages:"]
    width = max(len(s.name) for s in result["stages"])
    for s in result["stages"]:
        lines.append(f"  {s.name:<{width}}  {s.seconds:7.1f} s  (CPU {s.cpu_seconds:7.1f} s)  {s.status}")
    report_dir = result["report"]["out_dir"]
    lines += [
        "", "Artifacts:",
        f"  datasets           {result['dataset']['pretrain']}  {result['dataset']['finetune']}  (metadata.json, "
        "<task>/*.npy)",
        f"  pre-trained DT     {runs['pretrain']}  (model.pt, config.yaml, metrics.jsonl, tb/, eval.json)",
        f"  LoRA fine-tuning   {runs['lora']}  (model.pt, metrics.jsonl, tb/, eval.json)",
        f"  EVA fine-tuning    {runs['eva']}  (model.pt, eva/ ranks + ranks.png, metrics.jsonl, tb/, eval.json)",
        f"  report             {report_dir}/report.md  (tables as .md/.csv, curves/*.png, heatmaps/*.png)",
        "", f"Re-run `dt-eva demo` to reuse all of this; `dt-eva report {result['workdir']}` rebuilds the report; "
        f"`tensorboard --logdir {result['workdir']}` shows the curves.",
    ]
    return "\n".join(lines)
