"""The one training loop shared by pre-training and fine-tuning.

`Trainer` runs AdamW updates on batches from a sampler, with linear warm-up + cosine decay, gradient
clipping, bf16 autocast where the device has it, DistributedDataParallel under torchrun, metrics to
`metrics.jsonl` + TensorBoard, a tqdm bar, periodic online evaluation through a callback, and
checkpoints that let an interrupted run continue bit-for-bit (on CPU) from `checkpoints/last.pt`.

What differs between pre-training and the fine-tuning methods is one object, the `Trainable`
(`WholeModel` for pre-training, `dt_eva.methods.MethodModel` for fine-tuning): the model, its loss,
what a checkpoint holds of it, an after-step hook and extra checkpoint state. Evaluation comes in as
one callback, `eval_fn(model, step) -> dict[str, float]`, called every `train.eval_every` steps, and an
optional cheap one, `probe_fn` (e.g. a held-out loss), called every `train.probe_every` steps in between.
The files the loop writes (`files.last_checkpoint`, `files.metrics`, `files.tensorboard`) come from
the caller: a `dt_eva.runs.RunPaths`.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .configs import OptimConfig, TrainConfig
from .distributed import DistContext, all_gather_objects, all_reduce_mean, any_rank, barrier
from .metrics import MetricsLogger
from .optim import build_optimizer, weight_decay_param_groups
from dt_eva.utils.precision import autocast, check_resolved, cpu_model, precision_name
from .schedule import build_scheduler


class TrainerFiles(Protocol):
    """Where the loop writes (`dt_eva.runs.RunPaths` is one)."""

    last_checkpoint: Path
    metrics: Path
    tensorboard: Path


class Trainable(Protocol):
    """What the loop trains: `model` plus the method-specific parts of training it."""

    model: nn.Module

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...  # what checkpoints and model.pt hold of the model

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def after_step(self, step: int) -> None: ...  # after optimizer.step(), before grads are cleared

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...


class WholeModel:
    """A `Trainable` for a plain model with a `.loss(batch)`: every parameter trains and is saved."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.loss(batch)  # type: ignore[operator]

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)

    def after_step(self, step: int) -> None:
        pass

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class BatchSampler(Protocol):
    """What the loop needs from a sampler (`dt_eva.data.WindowSampler` is one)."""

    def sample(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None) -> None:
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written yet"
        super().__init__(
            f"non-finite loss ({loss}) at step {step}; training stopped and {kept}. "
            "Lower optim.lr, keep optim.grad_clip > 0, or check the dataset for extreme values."
        )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM: a checkpoint of the last completed step was saved, resume with `--resume`."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(f"interrupted after step {step}; checkpoint saved to {checkpoint}; continue with --resume")


@dataclass
class TrainResult:
    """What `Trainer.fit` did."""

    steps: int  # total updates done (including those before a resume)
    start_step: int  # the step this session started from (0 unless resumed)
    final_loss: float  # mean loss over the last logging window
    seconds: float  # training wall time over all sessions (evaluation and checkpoint time included)
    tokens_per_s: float  # this session's mean training throughput (all ranks together)
    last_eval: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    precision: str = "fp32"
    machines: list[str] = field(default_factory=list)  # the CPUs of the sessions that trained it, in order


class _LossModule(nn.Module):
    """Wraps `loss_fn(model, batch)` as a forward, so DDP's gradient hooks see every loss call."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


@dataclass
class _Window:
    """The steps since the last log line: per-step losses (checked for finiteness in batches, so the
    device is synced only at log / checkpoint / evaluation steps), grad norms, tokens, wall clock."""

    pending: list[torch.Tensor] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, tokens: int) -> None:
        self.pending.append(loss)
        self.grad_norms.append(grad_norm)
        self.tokens += tokens

    def reset(self) -> None:
        self.losses, self.grad_norms, self.tokens = [], [], 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.started = time.perf_counter()


class Trainer:
    """One training run writing to `files`; see the module docstring for the `Trainable` and the callback.

    `train.batch_size` is the global batch: under DDP each rank's sampler must draw
    `batch_size / world_size` windows (the caller builds the sampler; see `local_batch_size`).
    """

    def __init__(
        self,
        trainable: Trainable,
        sampler: BatchSampler,
        optim: OptimConfig,
        train: TrainConfig,
        files: TrainerFiles,
        *,
        autocast_dtype: torch.dtype | None,
        dist: DistContext | None = None,
        eval_fn: Callable[[nn.Module, int], Mapping[str, float]] | None = None,
        probe_fn: Callable[[nn.Module, int], Mapping[str, float]] | None = None,
        tokens_per_sample: int | None = None,
        find_unused_parameters: bool = False,
        tensorboard: bool = True,
    ) -> None:
        self.dist = dist or DistContext()
        self.device = self.dist.device
        self.trainable = trainable
        self.model = trainable.model.to(self.device)
        self.sampler = sampler
        self.optim_cfg = optim
        self.train_cfg = train
        self.files = files
        self.checkpoint_path = Path(files.last_checkpoint)
        self.eval_fn = eval_fn
        self.probe_fn = probe_fn
        self.tokens_per_sample = tokens_per_sample
        self.tensorboard = tensorboard
        # the driver resolved `train.precision` once for the run; the loop takes the dtype, never the option
        self.autocast_dtype = check_resolved(autocast_dtype)
        self.machines = [cpu_model()]
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts outside autocast
            torch.backends.cudnn.allow_tf32 = True

        groups = weight_decay_param_groups(self.model, optim.weight_decay)
        self.optimizer = build_optimizer(groups, optim, fused=True if self.device.type == "cuda" else None)
        self.scheduler = build_scheduler(self.optimizer, optim.lr, optim.warmup_steps, train.steps, optim.min_lr)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.loss_module = self._loss_module(trainable, find_unused_parameters)

        self.step = 0
        self._elapsed_before = 0.0  # training seconds of earlier sessions (from the checkpoint)
        self._last_loss = float("nan")
        self._last_eval: dict[str, float] = {}
        self._stop_signal: int | None = None

    def _loss_module(self, trainable: Trainable, find_unused_parameters: bool) -> nn.Module:
        """The trainable's loss as a module, wrapped in DistributedDataParallel under DDP."""
        loss_module: nn.Module = _LossModule(self.model, trainable.loss)
        if not self.dist.enabled:
            return loss_module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(loss_module, device_ids=device_ids,
                                       find_unused_parameters=find_unused_parameters)

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state of this rank (the model part from `trainable.state_dict()`)."""
        state = {
            "step": self.step,
            "model": self.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "elapsed": self._elapsed(),
            "last_loss": self._last_loss,
            "world_size": self.dist.world_size,
            "machines": list(self.machines),
        }
        extra = self.trainable.extra_state()
        if extra:
            state["extra"] = extra
        return state

    def save_checkpoint(self) -> Path:
        """Write `checkpoints/last.pt` (rank 0) with every rank's sampler and RNG state; collective."""
        rank_state = {"sampler": self.sampler.state_dict(), "rng": capture_rng_state()}
        rank_states = all_gather_objects(self.dist, rank_state)
        if self.dist.is_main:
            save_checkpoint({**self.state_dict(), "rank_states": rank_states}, self.checkpoint_path)
        barrier(self.dist)
        return self.checkpoint_path

    def load_checkpoint(self, path: str | Path | None = None) -> int:
        """Restore model, optimizer, scheduler, sampler, RNG and extra state; returns the step."""
        path = Path(path) if path is not None else self.checkpoint_path
        state = load_checkpoint(path, map_location="cpu")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {saved_world} process(es) but this job has "
                f"{self.dist.world_size}; resume with the same number of processes (the per-rank data "
                "streams cannot be split differently and continue exactly)"
            )
        self.trainable.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.trainable.load_extra_state(state.get("extra", {}))
        mine = state["rank_states"][self.dist.rank]
        self.sampler.load_state_dict(mine["sampler"])
        restore_rng_state(mine["rng"])
        self.step = int(state["step"])
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self._last_loss = float(state.get("last_loss", float("nan")))
        earlier = [str(m) for m in state.get("machines", [])]
        here = cpu_model()
        self.machines = earlier if earlier and earlier[-1] == here else [*earlier, here]
        return self.step

    def save_model(self, path: str | Path) -> None:
        """Write the final weights (`trainable.state_dict()`) atomically (rank 0 only)."""
        if self.dist.is_main:
            from dt_eva.utils.io import atomic_torch_save

            atomic_torch_save(self.trainable.state_dict(), path)
        barrier(self.dist)

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train to `train.steps` updates; with `resume`, continue from `checkpoints/last.pt` if present.

        Raises `NonFiniteLossError` (no checkpoint written for the bad steps) and
        `TrainingInterrupted` after saving a checkpoint on SIGINT / SIGTERM.
        """
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
        start_step = self.step
        logger = MetricsLogger(self.files.metrics, self.files.tensorboard if self.tensorboard else None, start_step) \
            if self.dist.is_main else None
        bar = self._progress_bar(start_step)
        self._session_start = time.perf_counter()
        window = _Window()
        session = _Window()  # the whole session: tokens and pure training seconds
        self.model.train()
        old_handlers = self._install_signal_handlers()
        try:
            while self.step < self.train_cfg.steps:
                t0 = time.perf_counter()
                loss, grad_norm, tokens = self._update(self.step + 1)
                self.step += 1
                window.add(loss, grad_norm, tokens)
                session.tokens += tokens
                session.seconds += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                self._after_step(window, logger, bar)
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        return TrainResult(
            steps=self.step, start_step=start_step, final_loss=self._last_loss, seconds=self._elapsed(),
            tokens_per_s=session.tokens * self.dist.world_size / max(session.seconds, 1e-9),
            last_eval=self._last_eval, world_size=self.dist.world_size, precision=precision_name(self.autocast_dtype),
            machines=list(self.machines),
        )

    def _after_step(self, window: "_Window", logger: MetricsLogger | None, bar: Any) -> None:
        """Log, evaluate, checkpoint or stop, as the cadence of `train` says for this step."""
        cfg, step = self.train_cfg, self.step
        is_last = step == cfg.steps
        do_log = step % cfg.log_every == 0 or is_last
        do_ckpt = step % cfg.ckpt_every == 0 or is_last
        # Decided identically on every rank: the loss check below is a collective under DDP.
        at_eval_step = cfg.eval_every > 0 and (step % cfg.eval_every == 0 or is_last)
        stop = self._stop_requested(at_log_step=do_log)
        if window.pending and (do_log or do_ckpt or at_eval_step or stop):
            window.losses.extend(self._checked_losses(window.pending, step))
            window.pending = []
        if do_log:
            self._log(window, logger, bar)
        if at_eval_step and self.eval_fn is not None:  # rank 0 only
            self._last_eval = self._evaluate(self.eval_fn, step, logger)
            window.restart_clock()
        elif cfg.probe_every > 0 and step % cfg.probe_every == 0 and self.probe_fn is not None:
            self._evaluate(self.probe_fn, step, logger)
            window.restart_clock()
        if do_ckpt or stop:
            self.save_checkpoint()
            window.restart_clock()
        if stop and not is_last:
            raise TrainingInterrupted(step, self.checkpoint_path)

    def _stop_requested(self, at_log_step: bool) -> bool:
        """Whether a SIGINT / SIGTERM asks the loop to stop after this step. In one process that is read
        every step; under DDP the ranks agree on it (an all-reduce and a host sync) at log steps only, so
        there a stop takes effect at the next log step (at most `train.log_every` steps later)."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        return at_log_step and any_rank(self.dist, self._stop_signal is not None)

    def _log(self, window: "_Window", logger: MetricsLogger | None, bar: Any) -> None:
        self._last_loss = sum(window.losses) / len(window.losses)
        if logger is not None:
            elapsed = time.perf_counter() - window.started
            scalars = {
                "loss": self._last_loss,
                "lr": self._lr_of_last_update(),
                "grad_norm": float(torch.stack(window.grad_norms).float().mean()),
                "tokens_per_s": window.tokens * self.dist.world_size / max(elapsed, 1e-9),
            }
            logger.log(self.step, scalars, tb_prefix="train/")
            if bar is not None:
                bar.set_postfix(loss=f"{self._last_loss:.4f}", lr=f"{scalars['lr']:.2e}")
        window.reset()

    def _update(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimizer update; returns (loss, grad norm) as device tensors (no host sync) and tokens."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in self.sampler.sample().items()}
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.autocast_dtype):
            loss = self.loss_module(batch)
        loss.backward()
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.trainable.after_step(step)
        return loss.detach().float(), grad_norm.detach(), self._tokens_in(batch)

    def _tokens_in(self, batch: Mapping[str, torch.Tensor]) -> int:
        states = batch.get("states")
        if states is None:
            return 0
        samples = int(states.shape[0])
        if self.tokens_per_sample is not None:
            return samples * self.tokens_per_sample
        return samples * int(states.shape[1]) if states.dim() > 2 else samples

    def _checked_losses(self, pending: list[torch.Tensor], step: int) -> list[float]:
        """Mean-over-ranks losses of the pending steps as floats; raise on the first non-finite one."""
        losses = all_reduce_mean(self.dist, torch.stack(pending)).cpu().tolist()
        first_step = step - len(losses) + 1
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                kept = self.checkpoint_path if self.checkpoint_path.is_file() else None
                raise NonFiniteLossError(first_step + i, value, kept)
        return losses

    def _lr_of_last_update(self) -> float:
        # The scheduler has already moved on to the next update; report the rate this one used.
        factor = self.scheduler.lr_lambdas[0](self.step - 1)
        return self.optimizer.param_groups[0]["initial_lr"] * factor

    def evaluate(self, step: int) -> dict[str, float]:
        """Run the evaluation callback now (rank 0; eval mode, its own RNG), without logging it."""
        return self._evaluate(self.eval_fn, step, None) if self.eval_fn is not None else {}

    def _evaluate(self, fn: Callable[[nn.Module, int], Mapping[str, float]], step: int,
                  logger: MetricsLogger | None) -> dict[str, float]:
        """Rank 0 runs `fn` (`eval_fn` or `probe_fn`) in eval mode with its own RNG, so training randomness
        is unaffected. Its wall time is logged beside its results (`eval/seconds` or `probe/seconds`)."""
        result: dict[str, float] = {}
        if self.dist.is_main:
            rng = capture_rng_state()
            self.model.eval()
            started = time.perf_counter()
            try:
                with torch.no_grad():
                    result = {k: float(v) for k, v in fn(self.model, step).items()}
            finally:
                self.model.train()
                restore_rng_state(rng)
            if logger is not None and result:
                timing = "eval/seconds" if fn is self.eval_fn else "probe/seconds"
                logger.log(step, {**result, timing: time.perf_counter() - started})
        return result

    def _elapsed(self) -> float:
        start = getattr(self, "_session_start", None)
        return self._elapsed_before + (time.perf_counter() - start if start is not None else 0.0)

    def _progress_bar(self, start_step: int):
        if not (self.dist.is_main and self.train_cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.train_cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    # --- signals ----------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """First SIGINT/SIGTERM: finish the current step, checkpoint, stop. A second one: stop now."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._stop_signal = None
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        return old

    def _restore_signal_handlers(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
