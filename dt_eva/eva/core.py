"""`compute_eva`: EVA's data-driven LoRA initialisation for any torch model (paper section 3)."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from dt_eva.eva import distributed as dist_utils
from dt_eva.eva.capture import (
    InputProbe,
    default_forward,
    layer_input,
    model_device,
    module_training_flags,
    move_to_device,
    restore_training_flags,
    select_rows,
)
from dt_eva.eva.config import EvaConfig
from dt_eva.eva.isvd import IncrementalSVD
from dt_eva.eva.matching import TargetModules, adaptable_in_features, match_modules
from dt_eva.eva.redistribute import redistribute_ranks
from dt_eva.eva.result import EvaResult

ForwardFn = Callable[[nn.Module, Any], Any]
TokenMaskFn = Callable[[Any], Tensor]


class _StopForward(Exception):
    """Raised by the last hook that needs data in this batch: the rest of the forward is wasted work."""


class _Group:
    """Layers that read the very same input tensor share one incremental SVD, fed by the first one."""

    def __init__(self, members: list[str], module: nn.Module, svd: IncrementalSVD) -> None:
        self.members = members
        self.module = module
        self.svd = svd
        self.handle: Any = None
        self.expected_calls = 1
        self.similarity: Tensor | None = None  # |cos| of each component with the previous batch's
        self.converged = False

    @property
    def name(self) -> str:
        return self.members[0]


def compute_eva(
    model: nn.Module,
    batches: Iterable[Any],
    config: EvaConfig | None = None,
    target_modules: TargetModules = None,
    forward_fn: ForwardFn | None = None,
    token_mask_fn: TokenMaskFn | None = None,
) -> EvaResult:
    """Run EVA on `model` over `batches` and return per-layer ranks and LoRA A initialisations.

    model:          any nn.Module; run in eval mode under no_grad, its training flags restored after.
    batches:        any iterable (DataLoader, list, generator), consumed once, never stored.
    config:         `EvaConfig` (default `EvaConfig()`).
    target_modules: PEFT-style selection (see `match_modules`); default every nn.Linear / Conv1D.
    forward_fn:     `forward_fn(model, batch)`; default model(**batch) / model(*batch) / model(batch).
                    Tensors of the batch are first moved to the model's device.
    token_mask_fn:  `token_mask_fn(batch) -> bool tensor` over the activations' leading dims
                    (e.g. [B, T]) selecting the rows that enter the SVD.

    After every batch the current estimates are redistributed over the budget N * rank; a layer has
    converged when each component it is allocated has |cos| >= tau with its previous estimate, and
    then stops being hooked (it is hooked again if a later redistribution gives it more rank).
    Stops when all layers converged, the batches run out or `config.max_batches` is reached
    (the last two warn and name the unconverged layers). Under torch.distributed each rank passes
    its own batches and the same config (seed included; a ValueError otherwise); the activation
    rows of all ranks are gathered and every rank computes, and returns, the identical result.
    """
    config = EvaConfig() if config is None else config
    if not isinstance(config, EvaConfig):
        raise ValueError(f"config must be an EvaConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(batches, (Tensor, str, bytes)) or not hasattr(batches, "__iter__"):
        raise ValueError(
            f"batches must be an iterable of batches (DataLoader, list, generator), got {type(batches).__name__}"
        )
    _check_same_config_on_every_rank(config)
    targets = match_modules(model, target_modules)
    start = time.perf_counter()
    flags = module_training_flags(model)
    model.eval()
    run = _EvaRun(model, targets, config, forward_fn or default_forward, token_mask_fn)
    try:
        with torch.no_grad():
            result = run.run(iter(batches))
    finally:
        run.remove_hooks()
        restore_training_flags(model, flags)
    result.seconds = time.perf_counter() - start
    return dist_utils.broadcast_object(result)


def _check_same_config_on_every_rank(config: EvaConfig) -> None:
    """Every rank factorises the same gathered rows and must reach the same estimate, so the config
    (the randomized SVD's seed included) must be equal on every rank; only the data differ per rank.
    A differing config would be hidden by the final broadcast of rank 0's result, so refuse it."""
    settings = {k: v for k, v in config.to_dict().items() if k != "progress"}
    every = dist_utils.all_gather_object(settings)
    differing = [k for k in settings if any(other[k] != settings[k] for other in every)]
    if differing:  # the same verdict on every rank, so all of them raise
        values = "; ".join(
            f"rank {i}: " + ", ".join(f"{k}={other[k]!r}" for k in differing) for i, other in enumerate(every)
        )
        raise ValueError(
            f"EvaConfig differs between ranks ({values}); pass the same EvaConfig on every rank (one EVA seed "
            "for all ranks) and let only the batches differ per rank"
        )


class _EvaRun:
    def __init__(
        self,
        model: nn.Module,
        targets: list[tuple[str, nn.Module]],
        config: EvaConfig,
        forward_fn: ForwardFn,
        token_mask_fn: TokenMaskFn | None,
    ) -> None:
        self.model = model
        self.targets = targets
        self.modules = dict(targets)
        self.config = config
        self.forward_fn = forward_fn
        self.token_mask_fn = token_mask_fn
        self.device = model_device(model)
        self.max_components = {n: min(config.num_components, adaptable_in_features(m)) for n, m in targets}
        self.budget = len(targets) * config.rank
        self.groups: list[_Group] = []
        self.group_of: dict[str, _Group] = {}
        self.ranks: dict[str, int] = {}
        self.mask: Tensor | None = None
        self.calls_expected = 0
        self.calls_seen = 0
        self._probe_handles: list[Any] = []

    # ---- main loop ---------------------------------------------------------------------------
    def run(self, batches: Iterable[Any]) -> EvaResult:
        cfg = self.config
        bar = self._progress_bar()
        num_batches = 0
        reason = "max_batches"
        try:
            while num_batches < cfg.max_batches:
                try:
                    batch, exhausted = next(batches), False
                except StopIteration:
                    batch, exhausted = None, True
                if dist_utils.any_rank_stopped(exhausted):
                    reason = "batches ran out"
                    break
                batch = move_to_device(batch, self.device)
                self.mask = self._token_mask(batch, num_batches)
                previous = {g.name: g.svd.components for g in self.groups if g.handle is not None}
                if not self.groups:
                    self._probe_first_batch(batch)
                else:
                    self._forward(batch)
                num_batches += 1
                self.mask = None
                del batch
                self._update_convergence(previous)
                if bar is not None:
                    done = sum(len(g.members) for g in self.groups if g.converged)
                    bar.update(1)
                    bar.set_description(f"EVA: {done}/{len(self.targets)} layers converged")
                if all(g.converged for g in self.groups):
                    reason = ""
                    break
        finally:
            if bar is not None:
                bar.close()
        if num_batches == 0:
            raise ValueError("batches is empty: compute_eva needs at least one batch of model inputs")
        unconverged = [m for g in self.groups if not g.converged for m in g.members]
        if unconverged:
            why = f"max_batches={cfg.max_batches} was reached" if reason == "max_batches" else "the batches ran out"
            warnings.warn(
                f"EVA stopped after {num_batches} batches because {why} before {len(unconverged)} layer(s) converged "
                f"(tau={cfg.tau}): {', '.join(unconverged)}. Their latest estimates are used; pass more batches, "
                "raise max_batches or lower tau.",
                stacklevel=3,
            )
        return self._result(num_batches)

    def _progress_bar(self) -> Any:
        if not self.config.progress or not dist_utils.is_main_process():
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional for library users
            return None
        return tqdm(total=self.config.max_batches, desc="EVA", leave=False)

    def _token_mask(self, batch: Any, index: int) -> Tensor | None:
        if self.token_mask_fn is None:
            return None
        mask = self.token_mask_fn(batch)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"token_mask_fn must return a bool tensor over the activations' leading dims, got {got}")
        if not bool(mask.any()):
            raise ValueError(
                f"token_mask_fn selected no rows in batch {index} (the mask is all False); every batch must keep "
                "at least one token for the SVD"
            )
        return mask

    # ---- first batch: find shared inputs, then feed it to the SVDs ----------------------------
    def _probe_first_batch(self, batch: Any) -> None:
        names = [n for n, _ in self.targets]
        probe = InputProbe(names, lambda name, x: select_rows(name, x, self.mask))
        try:
            for name, module in self.targets:
                self._probe_handles.append(module.register_forward_hook(probe.hook(name), with_kwargs=True))
            self.forward_fn(self.model, batch)
        finally:
            for h in self._probe_handles:
                h.remove()
            self._probe_handles.clear()
        uncalled = probe.uncalled()
        if uncalled:
            raise ValueError(
                f"target layers {uncalled} were not called in the forward pass, so EVA has no activations for them; "
                "exclude them from target_modules or check forward_fn"
            )
        # every rank must build the same groups, or the collectives below would pair up wrongly
        groups = dist_utils.broadcast_object(probe.shared_input_groups())
        cfg = self.config
        for members in groups:
            svd = IncrementalSVD(
                self.max_components[members[0]],
                center=cfg.center,
                method=cfg.svd,
                oversample=cfg.oversample,
                power_iters=cfg.power_iters,
                seed=cfg.seed,
            )
            group = _Group(members, self.modules[members[0]], svd)
            group.expected_calls = len(probe.keys[members[0]])
            self.groups.append(group)
            for m in members:
                self.group_of[m] = group
        for group in self.groups:
            for rows in probe.rows_of(group.name):
                group.svd.update(dist_utils.gather_rows(rows))
        probe.clear()
        for group in self.groups:
            self._hook(group)

    # ---- later batches -----------------------------------------------------------------------
    def _hook(self, group: _Group) -> None:
        def on_forward(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = layer_input(group.name, args, kwargs)
            group.svd.update(dist_utils.gather_rows(select_rows(group.name, x, self.mask)))
            self.calls_seen += 1
            if self.calls_seen == self.calls_expected:
                raise _StopForward

        group.handle = group.module.register_forward_hook(on_forward, with_kwargs=True)

    def _unhook(self, group: _Group) -> None:
        if group.handle is not None:
            group.handle.remove()
            group.handle = None

    def remove_hooks(self) -> None:
        for h in self._probe_handles:
            h.remove()
        self._probe_handles.clear()
        for g in self.groups:
            self._unhook(g)

    def _forward(self, batch: Any) -> None:
        self.calls_seen = 0
        self.calls_expected = sum(g.expected_calls for g in self.groups if g.handle is not None)
        try:
            self.forward_fn(self.model, batch)
        except _StopForward:
            pass

    def _update_convergence(self, previous: dict[str, Tensor | None]) -> None:
        for g in self.groups:
            if g.name in previous or g.similarity is None:
                g.similarity = g.svd.similarity(previous.get(g.name))
        candidates = {
            n: self.group_of[n].svd.explained_variance_ratio[: self.max_components[n]] for n, _ in self.targets
        }
        self.ranks = redistribute_ranks(candidates, self.budget)
        tau = self.config.tau
        flags = []
        for g in self.groups:
            need = max(self.ranks[m] for m in g.members)
            flags.append(bool((g.similarity[:need] >= tau).all()) and g.svd.components.shape[0] >= need)
        agreed = dist_utils.all_ranks_true(torch.tensor(flags, dtype=torch.bool)).tolist()
        for g, ok in zip(self.groups, agreed):
            g.converged = ok
            if ok:
                self._unhook(g)
            elif g.handle is None:
                self._hook(g)  # a redistribution gave it rank it has not converged on

    def _result(self, num_batches: int) -> EvaResult:
        ranks, comps, svals, evr, cand, conv, shared, samples = {}, {}, {}, {}, {}, {}, {}, {}
        for name, _ in self.targets:
            g = self.group_of[name]
            r = self.ranks[name]
            ratio = g.svd.explained_variance_ratio[: self.max_components[name]].detach().cpu()
            ranks[name] = r
            comps[name] = g.svd.components[:r].detach().cpu().clone()
            svals[name] = g.svd.singular_values[:r].detach().cpu().clone()
            evr[name] = ratio[:r].clone()
            cand[name] = ratio.clone()
            conv[name] = g.converged
            samples[name] = g.svd.num_samples
            if name != g.name:
                shared[name] = g.name
        return EvaResult(
            ranks=ranks,
            components=comps,
            singular_values=svals,
            explained_variance_ratio=evr,
            candidate_explained_variance_ratio=cand,
            converged=conv,
            num_batches=num_batches,
            seconds=0.0,
            config=self.config,
            shared_inputs=shared,
            num_samples=samples,
            budget=self.budget,
        )
