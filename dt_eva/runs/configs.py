"""The configs of the two kinds of run: the schema of a run directory's `config.yaml`.

`PretrainConfig` (`dt-eva pretrain`, presets `configs/pretrain/*.yaml`) and `FinetuneConfig`
(`dt-eva finetune`, presets `configs/finetune/*.yaml`). They live with the run directory because
loading any run (`load_run_model`) needs them, and no experiment code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dt_eva.eva.config import EvaConfig
from dt_eva.methods.registry import resolve_method
from dt_eva.models import TOKEN_TYPES
from dt_eva.models.config import SCALE_KEYS, DTConfig
from dt_eva.runs.guard import check_run_name
from dt_eva.training.configs import DataConfig, OptimConfig, TrainConfig
from dt_eva.utils.checks import check_number, check_seed


@dataclass
class PretrainConfig:
    """A pre-training run; the YAML presets are `configs/pretrain/{tiny,paper}.yaml`."""

    name: str = "pretrain"
    run_dir: str = ""  # the run directory; "" = runs/<name>
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: DTConfig = field(default_factory=DTConfig.paper)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        if not self.run_dir:
            check_run_name(self.name)
        # the model carries the data's scaling; `data.*` is the one key for it (config.yaml of every
        # version has it there, so a run of any version loads with the scales it trained with)
        _check_model_scales(self.model, self.data)
        self.model = dataclasses.replace(self.model, **{name: getattr(self.data, name) for name in SCALE_KEYS})

    @property
    def resolved_run_dir(self) -> Path:
        """`run_dir`, else `runs/<name>`."""
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


def _check_model_scales(model: DTConfig, data: DataConfig) -> None:
    """Refuse a model scale set in Python (`DTConfig(rtg_scale=...)`) that disagrees with `data.*`,
    which sets it: silently overwriting it would train in units the caller did not ask for."""
    for name, key in SCALE_KEYS.items():
        given, wanted = getattr(model, name), getattr(data, name)
        if given != DTConfig.__dataclass_fields__[name].default and given != wanted:
            raise ValueError(f"model.{name}={given:g} disagrees with {key}={wanted:g}: {key} is the one setting "
                             f"for it and the model takes it from there; set {key}={given:g} instead")


@dataclass
class EvaSettings:
    """How EVA reads the fine-tuning task's data: the `eva:` section of a fine-tuning config.

    token_types: which tokens' activations enter each layer's SVD (state, rtg, action, reward).
    batch_size:  windows per EVA batch; each contributes context_len x len(token_types) rows.
    tau:         convergence threshold on the cosine of successive component estimates.
    max_batches: cap on EVA batches (hitting it warns and keeps the latest estimates).
    adjust_alpha: scale each layer's alpha by rank_i / rank so alpha / rank stays uniform.

    `tau` and `max_batches` are `EvaConfig`'s: their defaults and checks live there, and
    `eva_config` is the one way from this section to the `EvaConfig` that reaches the SVD.
    """

    token_types: list[str] = field(default_factory=lambda: list(TOKEN_TYPES))
    batch_size: int = 16
    tau: float = EvaConfig.tau
    max_batches: int = EvaConfig.max_batches
    adjust_alpha: bool = False

    def __post_init__(self) -> None:
        unknown = [t for t in self.token_types if t not in TOKEN_TYPES]
        if unknown or not self.token_types:
            raise ValueError(
                f"eva.token_types {self.token_types!r} must be a non-empty list out of {list(TOKEN_TYPES)}"
            )
        if self.batch_size < 1:
            raise ValueError(f"eva.batch_size must be >= 1, got {self.batch_size}")
        try:
            self.eva_config()
        except ValueError as error:  # EvaConfig's check, named by the config key
            raise ValueError(f"eva.{str(error).removeprefix('EvaConfig: ')}") from None

    def eva_config(self, rank: int = EvaConfig.rank, rho: float = EvaConfig.rho, seed: int = EvaConfig.seed,
                   progress: bool = EvaConfig.progress) -> EvaConfig:
        """The `EvaConfig` of a run with these settings (rank, rho and seed are the run's own keys)."""
        return EvaConfig(rank=rank, rho=float(rho), tau=float(self.tau), max_batches=self.max_batches, seed=seed,
                         progress=progress)


@dataclass
class AdaLoraSettings:
    """AdaLoRA (through PEFT): start every target at `init_rank` and prune to `rank` on average.

    init_rank: 0 = rank + 4 (the paper, appendix B: "always start initial ranks with r+4").
    tinit / tfinal: fractions of `train.steps` before pruning starts / after the budget is final.
    """

    init_rank: int = 0
    tinit: float = 0.1
    tfinal: float = 0.2
    delta_t: int = 10
    orth_reg_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.init_rank < 0:
            raise ValueError(f"adalora.init_rank must be >= 0 (0 = rank + 4), got {self.init_rank}")
        if not (0 <= self.tinit < 1 and 0 <= self.tfinal < 1 and self.tinit + self.tfinal < 1):
            raise ValueError(
                f"adalora.tinit ({self.tinit}) and adalora.tfinal ({self.tfinal}) are fractions of train.steps "
                "in [0, 1) that must leave room for pruning (tinit + tfinal < 1)"
            )
        if self.delta_t < 1:
            raise ValueError(f"adalora.delta_t must be >= 1, got {self.delta_t}")
        check_number("adalora.orth_reg_weight", self.orth_reg_weight, low=0)


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
    heldout_path: a dataset holding other episodes of the task (e.g. collected with another seed);
    the action MSE on all of them is logged as `heldout/loss` at every evaluation step and, with
    `train.probe_every` N, every N steps in between (a cheap, low-noise learning curve).
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
    heldout_path: str = ""  # a dataset with other episodes of the task: its action MSE is logged as heldout/loss
    data: DataConfig = field(default_factory=_cw10_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        check_seed("seed", self.seed)
        check_number("rho", self.rho, low=1, hint=" (1 keeps EVA's ranks uniform)")
        check_number("alpha", self.alpha, low=0, low_open=True)
        if not 0.0 <= self.adapter_dropout < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1), got {self.adapter_dropout}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) or null, got {self.dropout}")
        if self.name:
            check_run_name(self.name)
        if self.data.tasks:
            raise ValueError(f"data.tasks={self.data.tasks!r} has no effect in fine-tuning: the run trains on task= "
                             "only; remove data.tasks (or set it to null)")
        if self.train.eval_tasks:
            raise ValueError(f"train.eval_tasks={self.train.eval_tasks!r} has no effect in fine-tuning: the run is "
                             "evaluated on its task=; remove train.eval_tasks")

    def default_name(self) -> str:
        """`<pretrain run>-<task>-<method>-r<rank>[-rho<rho>]-s<seed>`."""
        from dt_eva.envs import resolve_task, short_name  # lazy: dt_eva.envs loads gymnasium (0.7 s)

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
