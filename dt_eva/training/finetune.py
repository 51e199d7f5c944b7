"""Fine-tuning a pre-trained Decision Transformer on one task with FFT, LoRA-family adapters or AdaLoRA.

`run_finetune(cfg)`:
1. validates everything first (method, task, the pre-training run and its weights, the task's
   dataset and its dimensions, the rank against every target layer, the run directory) so that a
   bad call leaves nothing on disk;
2. for the EVA methods, runs EVA on the task's data (its own seeded sampler) and writes
   `eva/` (result files, `eva.json`, `ranks.png`) in one atomic step;
3. injects the method's adapters into the frozen base and trains with the shared `Trainer`;
   checkpoints hold only what trains (adapters + optimizer, or the whole model for FFT) plus
   which base they belong to (pre-training run, SHA-256 of its `model.pt`, its step);
4. writes `model.pt` (the trained tensors), `adapters/` (our adapter format), `summary.json`,
   the online evaluation `eval.json`, and with `export_merged` a plain DT state dict
   `merged_model.pt` with the adapters folded into the weights.

`load_finetune_model(run_dir)` rebuilds the policy from the pre-training run plus the saved
adapters (or from `merged_model.pt`); `dt_eva.runs.load_run_model` calls it for fine-tuning runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from dt_eva.config import config_diff, config_to_dict, load_config, save_config
from dt_eva.utils.io import atomic_dir, atomic_torch_save, atomic_write_json

from .configs import DataConfig, OptimConfig, TrainConfig
from .methods import (
    EVA_SEED_OFFSET,
    METHODS,
    MethodModel,
    MethodSpec,
    adalora_ranks,
    adalora_allocator_state,
    build_method_model,
    check_rank_fits,
    compute_dt_eva,
    eva_summary,
    load_adalora_allocator_state,
    resolve_method,
)

KIND = "finetune"
ADAPTERS_DIR = "adapters"
EVA_DIR = "eva"
EVA_SUMMARY_FILE = "eva.json"
RANKS_PLOT_FILE = "ranks.png"
MERGED_MODEL_FILE = "merged_model.pt"
TOKEN_TYPE_NAMES = ("state", "rtg", "action", "reward")

# Keys a resumed run may change (cadence, device, the final evaluation, the merged export).
RESUME_MUTABLE_KEYS = (
    "train.log_every",
    "train.ckpt_every",
    "train.eval_every",
    "train.eval_tasks",
    "train.eval_episodes",
    "train.device",
    "train.precision",
    "train.progress",
    "export_merged",
)


# --- configuration ---------------------------------------------------------------------------------


@dataclass
class EvaSettings:
    """How EVA reads the fine-tuning task's data.

    token_types: which tokens' activations enter each layer's SVD (state, rtg, action, reward).
    batch_size:  windows per EVA batch; each contributes context_len x len(token_types) rows.
    tau:         convergence threshold on the cosine of successive component estimates.
    max_batches: cap on EVA batches (hitting it warns and keeps the latest estimates).
    adjust_alpha: scale each layer's alpha by rank_i / rank so alpha / rank stays uniform.
    """

    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPE_NAMES))
    batch_size: int = 16
    tau: float = 0.99
    max_batches: int = 100
    adjust_alpha: bool = False

    def __post_init__(self) -> None:
        unknown = [t for t in self.token_types if t not in TOKEN_TYPE_NAMES]
        if unknown or not self.token_types:
            raise ValueError(
                f"eva.token_types {self.token_types!r} must be a non-empty list out of {list(TOKEN_TYPE_NAMES)}"
            )
        if self.batch_size < 1:
            raise ValueError(f"eva.batch_size must be >= 1, got {self.batch_size}")
        if self.max_batches < 1:
            raise ValueError(f"eva.max_batches must be >= 1, got {self.max_batches}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"eva.tau must be in [0, 1], got {self.tau}")


@dataclass
class AdaLoraSettings:
    """AdaLoRA (through PEFT): start every target at `init_rank` and prune to `rank` on average.

    init_rank: 0 = ceil(1.5 * rank) (PEFT's default ratio 12 : 8).
    tinit / tfinal: fractions of `train.steps` before pruning starts / after the budget is final.
    """

    init_rank: int = 0
    tinit: float = 0.1
    tfinal: float = 0.2
    delta_t: int = 10
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.init_rank < 0:
            raise ValueError(f"adalora.init_rank must be >= 0 (0 = 1.5 x rank), got {self.init_rank}")
        if not (0 <= self.tinit < 1 and 0 <= self.tfinal < 1 and self.tinit + self.tfinal < 1):
            raise ValueError(
                f"adalora.tinit ({self.tinit}) and adalora.tfinal ({self.tfinal}) are fractions of train.steps "
                "in [0, 1) that must leave room for pruning (tinit + tfinal < 1)"
            )
        if self.delta_t < 1:
            raise ValueError(f"adalora.delta_t must be >= 1, got {self.delta_t}")


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """`TrainConfig` with fine-tuning defaults; `eval_episodes=0` skips the final online evaluation.

    `eval_tasks` is ignored: a fine-tuning run is evaluated on its own task.
    """

    steps: int = 100_000
    eval_episodes: int = 30

    def __post_init__(self) -> None:
        if self.eval_episodes < 0:
            raise ValueError(f"train.eval_episodes must be >= 0 (0 = no evaluation), got {self.eval_episodes}")
        episodes = self.eval_episodes
        self.eval_episodes = max(episodes, 1)  # TrainConfig requires >= 1; 0 is our "skip"
        try:
            super().__post_init__()
        finally:
            self.eval_episodes = episodes


def _cw10_data() -> DataConfig:
    return DataConfig(path="data/cw10", tasks=None)


@dataclass
class FinetuneConfig:
    """A fine-tuning run; presets `configs/finetune/{tiny,paper}.yaml`.

    checkpoint: the pre-training run directory. task: a Meta-World task (`hammer` or `hammer-v3`).
    method: one of `METHODS` (fft, lora, dora, eva, eva_dora, pissa, olora, adalora, lora_redist,
    eva_whiten). rank / rho: LoRA rank and EVA's redistribution factor. alpha: LoRA alpha (the
    paper uses 1). adapter_dropout: dropout on adapter inputs. dropout: the DT's dropout while
    fine-tuning (null keeps the pre-trained model's). name / run_dir: "" derive them from the
    pre-training run, task, method, rank and seed. export_merged: also write `merged_model.pt`.
    """

    checkpoint: str = ""
    task: str = "hammer"
    method: str = "eva"
    rank: int = 8
    rho: float = 2.0
    alpha: float = 1.0
    adapter_dropout: float = 0.0
    dropout: Optional[float] = None
    eva: EvaSettings = field(default_factory=EvaSettings)
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    name: str = ""
    run_dir: str = ""
    seed: int = 0
    export_merged: bool = False
    data: DataConfig = field(default_factory=_cw10_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.rho >= 1:
            raise ValueError(f"rho must be >= 1 (1 keeps EVA's ranks uniform), got {self.rho}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) or null, got {self.dropout}")

    def default_name(self) -> str:
        """`<pretrain run>-<task>-<method>-r<rank>[-rho<rho>]-s<seed>`."""
        from dt_eva.envs import resolve_task, short_name

        spec = resolve_method(self.method)
        base = Path(self.checkpoint).name or "pretrain"
        rho = f"-rho{self.rho:g}" if spec.eva else ""
        return f"{base}-{short_name(resolve_task(self.task))}-{spec.name}-r{self.rank}{rho}-s{self.seed}"

    @property
    def resolved_name(self) -> str:
        return self.name or self.default_name()

    @property
    def resolved_run_dir(self) -> Path:
        """`run_dir`, else `<directory of the pre-training run>/<name>` (fine-tuning runs sit next to it)."""
        if self.run_dir:
            return Path(self.run_dir)
        return Path(self.checkpoint).parent / self.resolved_name


# --- the pre-trained base --------------------------------------------------------------------------


@dataclass
class PretrainedBase:
    """A pre-training run's model: its config, weights and identity."""

    run_dir: Path
    model_cfg: Any  # DTConfig
    state: dict[str, torch.Tensor]
    sha256: str
    step: int | None
    data: DataConfig

    def identity(self) -> dict[str, Any]:
        return {"path": str(self.run_dir), "sha256": self.sha256, "step": self.step}

    def build(self, dropout: float | None = None) -> nn.Module:
        """A fresh `DecisionTransformer` with the pre-trained weights (dropout optionally replaced)."""
        from dt_eva.models import DecisionTransformer

        model_cfg = self.model_cfg if dropout is None else dataclasses.replace(self.model_cfg, dropout=float(dropout))
        model = DecisionTransformer(model_cfg)
        try:
            model.load_state_dict(self.state)
        except RuntimeError as e:
            raise ValueError(
                f"the weights in {self.run_dir / 'model.pt'} do not fit the model described by "
                f"{self.run_dir / 'config.yaml'}: {e}"
            ) from None
        return model


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained_base(checkpoint: str | Path) -> PretrainedBase:
    """Read a finished pre-training run (`config.yaml` + `model.pt`), with clear errors when it is
    missing, unfinished, corrupt or not a pre-training run."""
    from dt_eva.runs import run_kind
    from dt_eva.training.checkpoint import load_state_dict_file
    from dt_eva.training.pretrain import PretrainConfig

    if not str(checkpoint):
        raise ValueError("no pre-training run given: pass --checkpoint runs/<pretrain run> (or checkpoint=...)")
    run_dir = Path(checkpoint)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"pre-training run {run_dir} does not exist; pass the directory written by `dt-eva pretrain` "
            "(e.g. --checkpoint runs/mt40-tiny)"
        )
    if run_kind(run_dir) != "pretrain":
        raise ValueError(f"{run_dir} is a fine-tuning run; --checkpoint must be a pre-training run directory")
    config_path, weights_path = run_dir / "config.yaml", run_dir / "model.pt"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {run_dir} is not a complete `dt-eva pretrain` run")
    if not weights_path.is_file():
        hint = (
            "the run has a checkpoint but did not finish: continue it with `dt-eva pretrain ... --resume`"
            if (run_dir / "checkpoints" / "last.pt").is_file()
            else "the run saved no weights"
        )
        raise FileNotFoundError(f"{weights_path} is missing: {hint}")
    try:
        cfg = load_config(PretrainConfig, config_path)
    except ValueError as e:
        raise ValueError(f"{config_path} is not a valid pre-training config: {e}") from None
    state = load_state_dict_file(weights_path)  # names the file when it is corrupt
    step = None
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            step = int(json.loads(summary_path.read_text(encoding="utf-8")).get("steps"))
        except (ValueError, TypeError, json.JSONDecodeError):
            step = None
    base = PretrainedBase(run_dir, cfg.model, state, file_sha256(weights_path), step, cfg.data)
    base.build()  # fail now, naming the files, if the weights do not fit the config
    return base


# --- validation helpers ----------------------------------------------------------------------------


def _resolve_task(task: str) -> str:
    from dt_eva.envs import resolve_task

    return resolve_task(task)  # unknown -> ValueError listing the valid names


def load_task_dataset(cfg: FinetuneConfig, task: str) -> Any:
    """The task's data from `data.path`; a missing dataset or task says which collect to run."""
    from dt_eva.data import load_dataset
    from dt_eva.envs import short_name

    collect = f"dt-eva collect --tasks {short_name(task)} --episodes 50 --out {cfg.data.path}"
    path = Path(cfg.data.path)
    if not path.is_dir():
        raise FileNotFoundError(f"fine-tuning dataset {path} does not exist; create it with `{collect}`")
    try:
        return load_dataset(path, tasks=[task])
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Create the fine-tuning data with `{collect}`") from None
    except ValueError as e:
        if task in str(e) and "no data for" in str(e):
            raise ValueError(f"{e}. Collect it with `{collect}` (or set data.path to a dataset holding {task})") from None
        raise


def check_dataset_fits(dataset: Any, base: PretrainedBase, data_path: str) -> None:
    """The dataset's state / action sizes must be those the pre-trained model was built for."""
    want = (base.model_cfg.state_dim, base.model_cfg.act_dim)
    have = (int(dataset.state_dim), int(dataset.act_dim))
    if have != want:
        raise ValueError(
            f"dataset {data_path} has state_dim={have[0]}, act_dim={have[1]} but the pre-trained model in "
            f"{base.run_dir} expects state_dim={want[0]}, act_dim={want[1]}; fine-tune on data of the same "
            "environment family as the pre-training data"
        )


def _check_run_dir_free(path: Path, resume: bool, force: bool) -> None:
    """The side-effect-free part of `prepare_run_dir`'s rules, checked before any expensive work."""
    from .rundir import describe_run_dir, is_run_dir

    if path.exists() and not path.is_dir():
        raise ValueError(f"run directory {path} exists and is a file; choose another name= or run_dir=")
    if not path.exists() or not any(path.iterdir()) or resume or force:
        if path.exists() and any(path.iterdir()) and not is_run_dir(path):
            raise ValueError(
                f"{path} exists, is not empty and is not a dt-eva run directory; refusing to use or delete it. "
                "Choose another name= or run_dir="
            )
        return
    if not is_run_dir(path):
        raise ValueError(
            f"{path} exists, is not empty and is not a dt-eva run directory; refusing to use or delete it. "
            "Choose another name= or run_dir="
        )
    raise ValueError(
        f"run directory {path} already holds {describe_run_dir(path)}; pass --resume to continue it, "
        "--force to delete it and start over, or choose another name="
    )


def _check_resume_compatible(cfg: FinetuneConfig, run_dir: Path, base: PretrainedBase) -> None:
    """A resumed run must keep its config and its pre-trained base."""
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = load_config(FinetuneConfig, saved_path)
        changed = {k: v for k, v in config_diff(saved, cfg).items() if k not in RESUME_MUTABLE_KEYS}
        if changed:
            lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"cannot resume {run_dir}: the config differs from its saved config.yaml in {lines}. "
                "Resume with the same settings, or start a new run (another name=, or --force)"
            )
    meta_path = run_dir / "meta.json"
    if meta_path.is_file():
        recorded = json.loads(meta_path.read_text(encoding="utf-8")).get("base", {})
        _check_same_base(recorded, base, f"{run_dir}")


def _check_same_base(recorded: dict[str, Any], base: PretrainedBase, where: str) -> None:
    if recorded.get("sha256") and recorded["sha256"] != base.sha256:
        raise ValueError(
            f"{where} was fine-tuned from {recorded.get('path')} (model.pt SHA-256 {recorded['sha256'][:12]}..., "
            f"step {recorded.get('step')}), but {base.run_dir / 'model.pt'} now has SHA-256 {base.sha256[:12]}... "
            f"(step {base.step}): the pre-trained base changed, so the saved adapters do not belong to it. "
            "Restore that base model, or start a new fine-tuning run (--force)"
        )


# --- building the model of a method ----------------------------------------------------------------


def _rank_to_check(cfg: FinetuneConfig, spec: MethodSpec) -> tuple[int, str]:
    """The largest rank the method will ask of any single target layer, and how to name it."""
    if spec.eva:
        from dt_eva.eva import EvaConfig

        return EvaConfig(rank=cfg.rank, rho=float(cfg.rho)).num_components, f"EVA's components per layer round(rho * rank) = round({cfg.rho:g} * {cfg.rank})"
    if spec.kind == "adalora":
        return adalora_ranks(cfg)[0], "AdaLoRA's initial rank"
    return cfg.rank, "rank"


# --- EVA artefacts -----------------------------------------------------------------------------------


def run_eva(cfg: FinetuneConfig, spec: MethodSpec, base: PretrainedBase, dataset: Any, task: str,
            device: torch.device, seed: int | None = None) -> Any:
    """EVA on the pre-trained DT with the task's data (the model is a throw-away copy)."""
    model = base.build(cfg.dropout).to(device)
    return compute_dt_eva(
        model,
        dataset,
        task,
        rank=cfg.rank,
        rho=cfg.rho,
        token_types=cfg.eva.token_types,
        batch_size=cfg.eva.batch_size,
        tau=cfg.eva.tau,
        max_batches=cfg.eva.max_batches,
        seed=cfg.seed if seed is None else seed,
        whiten=spec.whiten,
        rtg_scale=cfg.data.rtg_scale,
        reward_scale=cfg.data.reward_scale,
        device=device,
        progress=cfg.train.progress,
    )


def save_eva_artifacts(result: Any, eva_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `eva_dir/` in one atomic step: `result.safetensors` + `result.json` (the `EvaResult`),
    `eva.json` (ranks per layer and module, explained variance, init seconds) and `ranks.png`."""
    from dt_eva.reporting.rank_heatmap import plot_rank_heatmap

    summary = {**eva_summary(result), **(extra or {})}
    with atomic_dir(eva_dir) as tmp:
        result.save(tmp)
        (tmp / EVA_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        task = (extra or {}).get("task")
        title = f"EVA ranks{' on ' + task if task else ''} (total {summary['total_rank']})"
        plot_rank_heatmap(result.ranks, tmp / RANKS_PLOT_FILE, title=title)
    return eva_dir


def load_eva_result(eva_dir: Path) -> Any:
    from dt_eva.eva import EvaResult

    return EvaResult.load(eva_dir)


# --- training ----------------------------------------------------------------------------------------


@dataclass
class FinetuneSetup:
    """Everything `run_finetune` builds before training (exposed for tests and custom drivers)."""

    cfg: FinetuneConfig
    run_dir: Path
    task: str
    spec: MethodSpec
    base: PretrainedBase
    dataset: Any
    method_model: MethodModel
    trainer: Any
    resume: bool
    eva_result: Any = None
    eval_results: dict[int, dict] = field(default_factory=dict)


def prepare_finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False, dist: Any = None) -> FinetuneSetup:
    """Validate, (re)create the run directory, run EVA if needed, and build the `Trainer`."""
    from dt_eva.data import WindowSampler

    from .checkpoint import seed_everything
    from .distributed import DistContext, barrier, rank_seed
    from .loop import Trainer
    from .rundir import prepare_run_dir, write_meta

    if resume and force:
        raise ValueError("--resume and --force contradict each other: pass one of them")
    dist = dist or DistContext(device=torch.device("cpu"))
    # 1. validate everything that can be validated before touching the disk
    spec = resolve_method(cfg.method)
    task = _resolve_task(cfg.task)
    base = load_pretrained_base(cfg.checkpoint)
    dataset = load_task_dataset(cfg, task)
    check_dataset_fits(dataset, base, cfg.data.path)
    if spec.kind != "full":
        from dt_eva.models import DT_ADAPTER_TARGETS

        rank, what = _rank_to_check(cfg, spec)
        check_rank_fits(base.build(), DT_ADAPTER_TARGETS, rank, what=what)
    if spec.kind == "adalora":
        _check_adalora_steps(cfg)
    from .pretrain import local_batch_size

    batch = local_batch_size(cfg.train.batch_size, dist.world_size)
    run_dir = cfg.resolved_run_dir
    _check_run_dir_free(run_dir, resume, force)
    resuming_candidate = resume and (run_dir / "checkpoints" / "last.pt").is_file()
    if resuming_candidate:
        _check_resume_compatible(cfg, run_dir, base)

    # 2. EVA (before the run directory is touched: a failure here leaves nothing behind)
    eva_result = None
    eva_dir = run_dir / EVA_DIR
    if spec.eva:
        if resuming_candidate and (eva_dir / "result.json").is_file():
            eva_result = load_eva_result(eva_dir)
        else:
            eva_result = run_eva(cfg, spec, base, dataset, task, dist.device, seed=rank_seed(cfg.seed, dist.rank))

    # 3. the run directory
    resuming = False
    if dist.is_main:
        resuming = prepare_run_dir(run_dir, resume=resume, force=force)
        save_config(cfg, run_dir / "config.yaml")
        write_meta(run_dir, KIND, {"task": task, "method": spec.name, "base": base.identity(),
                                   "model": config_to_dict(base.model_cfg)})
        if eva_result is not None and not (resuming and (eva_dir / "result.json").is_file()):
            save_eva_artifacts(eva_result, eva_dir, {"task": task, "method": spec.name,
                                                     "token_types": list(cfg.eva.token_types),
                                                     "batch_size": cfg.eva.batch_size})
    barrier(dist)
    resuming = (run_dir / "checkpoints" / "last.pt").is_file() and resume

    # 4. model, sampler, trainer
    seed_everything(cfg.seed)  # adapter init and dropout streams are reproducible
    method_model = build_method_model(cfg, spec, base, eva_result)
    seed_everything(rank_seed(cfg.seed, dist.rank))
    sampler = WindowSampler(
        dataset, base.model_cfg.context_len, batch, rtg_scale=cfg.data.rtg_scale,
        reward_scale=cfg.data.reward_scale, seed=rank_seed(cfg.seed, dist.rank), tasks=[task],
    )
    eval_results: dict[int, dict] = {}
    eval_fn = None
    train_cfg = cfg.train
    if train_cfg.eval_episodes > 0 and train_cfg.eval_every == 0:
        # evaluate once, at the last step, through the loop: metrics.jsonl and TensorBoard get it too
        train_cfg = dataclasses.replace(train_cfg, eval_every=train_cfg.steps)
    if train_cfg.eval_every > 0 and train_cfg.eval_episodes > 0 and dist.is_main:
        eval_fn = _make_eval_fn(cfg, task, dataset, dist.device, eval_results)
    loss_fn, after_step, extra_state, load_extra = _method_hooks(method_model, base)
    trainer = Trainer(
        method_model.model,
        sampler,
        cfg.optim,
        train_cfg,
        run_dir,
        dist=dist,
        loss_fn=loss_fn,
        model_state_fn=lambda m: method_model.state_dict(),
        load_model_state_fn=lambda m, state: method_model.load_state_dict(state),
        eval_fn=eval_fn,
        after_optimizer_step=after_step,
        extra_state_fn=extra_state,
        load_extra_state_fn=load_extra,
        tokens_per_sample=base.model_cfg.context_len * base.model_cfg.tokens_per_step,
        find_unused_parameters=True,
    )
    return FinetuneSetup(cfg, run_dir, task, spec, base, dataset, method_model, trainer, resuming,
                         eva_result, eval_results)


def _check_adalora_steps(cfg: FinetuneConfig) -> None:
    steps = cfg.train.steps
    tinit, tfinal = int(cfg.adalora.tinit * steps), int(cfg.adalora.tfinal * steps)
    if steps <= tinit + tfinal:
        raise ValueError(
            f"AdaLoRA with train.steps={steps} leaves no pruning phase after tinit={tinit} and tfinal={tfinal} "
            "steps; use more steps or smaller adalora.tinit / adalora.tfinal fractions"
        )


def _method_hooks(mm: MethodModel, base: PretrainedBase) -> tuple[Any, Any, Any, Any]:
    """Loss, after-step callback and extra checkpoint state for the method."""

    def extra_state() -> dict[str, Any]:
        state: dict[str, Any] = {"base": base.identity(), "method": mm.spec.name}
        if mm.adalora is not None:
            state["adalora"] = adalora_allocator_state(mm.adalora)
        return state

    def load_extra(state: dict[str, Any]) -> None:
        _check_same_base(state.get("base", {}), base, "the checkpoint")
        if mm.adalora is not None and "adalora" in state:
            load_adalora_allocator_state(mm.adalora, state["adalora"])

    if mm.adalora is None:
        return None, None, extra_state, load_extra
    ada = mm.adalora

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        # PEFT's orthogonal regulariser enters the gradient, while the logged value stays the action
        # MSE so that AdaLoRA's learning curve is comparable with the other methods'.
        reg = ada.orthogonal_regularization()
        return model.loss(batch) + (reg - reg.detach())

    return loss_fn, ada.step, extra_state, load_extra


def _make_eval_fn(cfg: FinetuneConfig, task: str, dataset: Any, device: torch.device,
                  results: dict[int, dict]) -> Callable[[nn.Module, int], dict[str, float]]:
    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        from .pretrain import flatten_eval

        result = evaluate_on_task(model, cfg, task, dataset, device, progress=False)
        results[step] = result
        return flatten_eval(result)

    return eval_fn


def evaluate_on_task(model: nn.Module, cfg: FinetuneConfig, task: str, dataset: Any, device: torch.device,
                     progress: bool = True) -> dict:
    """Online rollouts on the fine-tuning task, conditioned on the task's best dataset return."""
    from dt_eva.evaluation import evaluate_policy

    was_training = model.training
    model.eval()
    try:
        return evaluate_policy(
            model,
            [task],
            episodes=cfg.train.eval_episodes,
            seed=cfg.seed,
            target_returns={task: float(dataset.max_return(task))},
            rtg_scale=cfg.data.rtg_scale,
            reward_scale=cfg.data.reward_scale,
            device=str(device),
            progress=progress,
        )
    finally:
        model.train(was_training)


def run_finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False) -> Path:
    """Fine-tune (or `resume` an interrupted run; `force` replaces an existing one); returns the run dir."""
    from .distributed import init_distributed, shutdown_distributed

    dist = init_distributed(cfg.train.device)
    try:
        setup = prepare_finetune(cfg, resume=resume, force=force, dist=dist)
        result = setup.trainer.fit(resume=setup.resume)
        finish_finetune(setup, result)
        return setup.run_dir
    finally:
        shutdown_distributed(dist)


def finish_finetune(setup: FinetuneSetup, result: Any) -> dict:
    """Write `model.pt`, `adapters/`, `eval.json`, `merged_model.pt` (if asked) and `summary.json`."""
    from .distributed import barrier

    trainer, cfg, run_dir, mm = setup.trainer, setup.cfg, setup.run_dir, setup.method_model
    summary_path = run_dir / "summary.json"
    finished_before = result.start_step == result.steps and summary_path.is_file()
    if trainer.dist.is_main:
        if not finished_before:
            trainer.save_model(run_dir / "model.pt")
            if mm.spec.kind == "adapter":
                from dt_eva.adapters import save_adapters

                save_adapters(mm.model, run_dir / ADAPTERS_DIR)
        if cfg.export_merged and not (run_dir / MERGED_MODEL_FILE).is_file():
            atomic_torch_save(mm.merged_state_dict(), run_dir / MERGED_MODEL_FILE)
        final_eval = setup.eval_results.get(result.steps)
        eval_path = run_dir / "eval.json"
        if final_eval is None and cfg.train.eval_episodes > 0 and not (finished_before and eval_path.is_file()):
            final_eval = evaluate_on_task(mm.model, cfg, setup.task, setup.dataset, trainer.device,
                                          progress=cfg.train.progress)
        if final_eval is not None:
            atomic_write_json(eval_path, final_eval)
        if finished_before:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if final_eval is not None:
                summary["eval"] = final_eval.get("mean")
        else:
            summary = _summary(setup, result, final_eval)
        atomic_write_json(summary_path, summary)
    else:
        summary = {}
    barrier(trainer.dist)
    return summary


def _summary(setup: FinetuneSetup, result: Any, final_eval: dict | None) -> dict[str, Any]:
    cfg, mm = setup.cfg, setup.method_model
    ranks = mm.ranks()
    total_params = sum(p.numel() for p in mm.model.parameters())
    summary: dict[str, Any] = {
        "kind": KIND,
        "name": cfg.resolved_name,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "seconds": result.seconds,
        "task": setup.task,
        "method": mm.spec.name,
        "rank": cfg.rank,
        "rho": cfg.rho,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "trainable_params": mm.trainable_parameters(),
        "total_params": total_params,
        "adapter_ranks": ranks,
        "total_rank": int(sum(ranks.values())),
        "eva_init_seconds": float(setup.eva_result.seconds) if setup.eva_result is not None else None,
        "lr": cfg.optim.lr,
        "tokens_per_s": result.tokens_per_s,
        "world_size": result.world_size,
        "device": str(setup.trainer.device),
        "precision": result.precision,
        "pretrain": setup.base.identity(),
        "eval": (final_eval or {}).get("mean"),
        "resumed_from_step": result.start_step or None,
    }
    return summary


# --- loading a finished run ----------------------------------------------------------------------------


def load_finetune_model(run_dir: str | Path, device: str | torch.device = "cpu",
                        merged: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuning run's policy in eval mode on `device`, and `info` about it.

    The base comes from the pre-training run recorded in `meta.json` (its `model.pt` must be the
    one the run was fine-tuned from: checked by SHA-256); the trained tensors from `model.pt`
    (or, for a run that has not finished, `checkpoints/last.pt`). `merged=True` loads
    `merged_model.pt` into a plain `DecisionTransformer`; `None` does so when the file exists.
    `info` has the keys of `dt_eva.runs.load_run_model` plus `task`, `method`, `ranks`.
    """
    from dt_eva.models import DecisionTransformer

    from .checkpoint import load_checkpoint, load_state_dict_file

    run_dir = Path(run_dir)
    config_path, meta_path = run_dir / "config.yaml", run_dir / "meta.json"
    for path in (config_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {run_dir} is not a complete `dt-eva finetune` run")
    cfg = load_config(FinetuneConfig, config_path)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    spec = resolve_method(cfg.method)
    recorded = meta.get("base", {})
    base = load_pretrained_base(recorded.get("path") or cfg.checkpoint)
    _check_same_base(recorded, base, str(run_dir))

    merged_path = run_dir / MERGED_MODEL_FILE
    use_merged = merged_path.is_file() if merged is None else merged
    step = None
    if use_merged:
        if not merged_path.is_file():
            raise FileNotFoundError(f"{merged_path} does not exist; run the fine-tuning with --export-merged")
        model = DecisionTransformer(base.model_cfg)
        try:
            model.load_state_dict(load_state_dict_file(merged_path))
        except RuntimeError as e:
            raise ValueError(f"{merged_path} does not fit the pre-trained model's config: {e}") from None
        weights_path, ranks = merged_path, {}
    else:
        weights_path = run_dir / "model.pt"
        if weights_path.is_file():
            state = load_state_dict_file(weights_path)
        else:
            weights_path = run_dir / "checkpoints" / "last.pt"
            if not weights_path.is_file():
                raise FileNotFoundError(f"{run_dir} has neither model.pt nor checkpoints/last.pt: no trained weights yet")
            checkpoint = load_checkpoint(weights_path)
            state, step = checkpoint["model"], int(checkpoint["step"])
        eva_result = load_eva_result(run_dir / EVA_DIR) if spec.eva else None
        mm = build_method_model(cfg, spec, base, eva_result)
        try:
            mm.load_state_dict(state)
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"weights in {weights_path} do not fit the {spec.name} model: {e}") from None
        model, ranks = mm.model, mm.ranks()
    model.to(device).eval()

    task = _resolve_task(cfg.task)
    info: dict[str, Any] = {
        "kind": KIND,
        "run_dir": str(run_dir),
        "config": {**config_to_dict(cfg), "model": config_to_dict(base.model_cfg)},
        "weights": str(weights_path),
        "step": step,
        "tasks": [task],
        "task": task,
        "method": spec.name,
        "ranks": ranks,
        "rtg_scale": cfg.data.rtg_scale,
        "reward_scale": cfg.data.reward_scale,
        "target_returns": {},
    }
    try:
        dataset = load_task_dataset(cfg, task)
        info["target_returns"] = {task: float(dataset.max_return(task))}
    except (FileNotFoundError, ValueError) as e:
        info["dataset_error"] = str(e)
    return model, info


def export_merged(run_dir: str | Path) -> Path:
    """Write `merged_model.pt` for a finished fine-tuning run (adapters folded into the weights)."""
    run_dir = Path(run_dir)
    model, info = load_finetune_model(run_dir, merged=False)
    cfg = load_config(FinetuneConfig, run_dir / "config.yaml")
    spec = resolve_method(cfg.method)
    mm = MethodModel(model, spec, info["ranks"])
    atomic_torch_save(mm.merged_state_dict(), run_dir / MERGED_MODEL_FILE)
    return run_dir / MERGED_MODEL_FILE


__all__ = [
    "AdaLoraSettings",
    "EVA_SEED_OFFSET",
    "EvaSettings",
    "FinetuneConfig",
    "FinetuneSetup",
    "FinetuneTrainConfig",
    "METHODS",
    "MethodModel",
    "PretrainedBase",
    "build_method_model",
    "export_merged",
    "load_finetune_model",
    "load_pretrained_base",
    "prepare_finetune",
    "run_finetune",
]
