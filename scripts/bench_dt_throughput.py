"""Training throughput of dt_eva's DecisionTransformer vs HF transformers' DecisionTransformerModel.

Both models get the same size (hidden, layers, heads, 4x MLP, GELU), the same token layout
(R, s, a: 3 tokens per timestep), the same sequence length, batch, dtype, dropout, loss (MSE on
actions) and optimizer (AdamW), and run in one process on the same CPU threads. A timed unit is
`steps` full training steps (forward + backward + optimizer step); units of the two models are
interleaved (ABBA order) over `repeats` rounds so that load from other processes hits both alike,
and the median and best tokens/s of each are reported with the ratios ours / HF, by wall clock and by
process CPU time (the latter is robust to a CPU shared with other jobs when run with --threads 1;
the best unit is the one least disturbed by other jobs). HF's model is built from a
`DecisionTransformerConfig` (random init, no downloads) with its default attention implementation.

    python scripts/bench_dt_throughput.py                   # tiny and paper sizes
    python scripts/bench_dt_throughput.py --preset paper --batch-size 32 --repeats 7
    python scripts/bench_dt_throughput.py --threads 1       # on a busy, shared CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from dt_eva.models import DecisionTransformer, DTConfig

PRESETS = {"tiny": (DTConfig.tiny, 64), "paper": (DTConfig.paper, 16)}  # config, default batch size


def make_batch(cfg: DTConfig, batch_size: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = cfg.context_len
    return {
        "states": torch.randn(batch_size, k, cfg.state_dim, generator=g, dtype=dtype),
        "actions": (torch.rand(batch_size, k, cfg.act_dim, generator=g) * 2 - 1).to(dtype),
        "rewards": torch.rand(batch_size, k, 1, generator=g, dtype=dtype),
        "returns_to_go": torch.rand(batch_size, k, 1, generator=g, dtype=dtype),
        "timesteps": torch.randint(0, cfg.max_ep_len - k, (batch_size, 1), generator=g) + torch.arange(k),
    }


def build_ours(cfg: DTConfig, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable]:
    model = DecisionTransformer(cfg).to(dtype).train()

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.loss(batch)

    return model, loss_fn


def build_hf(cfg: DTConfig, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable]:
    from transformers import DecisionTransformerConfig, DecisionTransformerModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # GPT-2 token-id warnings that do not apply to a DT

    hf_cfg = DecisionTransformerConfig(
        state_dim=cfg.state_dim,
        act_dim=cfg.act_dim,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.hidden_size,
        activation_function="gelu",  # same exact-erf GELU as ours (HF's DT default is relu)
        max_ep_len=cfg.max_ep_len,
        n_positions=3 * cfg.context_len,  # GPT-2 position table: only as long as the sequence
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        action_tanh=cfg.action_tanh,
    )
    model = DecisionTransformerModel(hf_cfg).to(dtype).train()

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        _, action_preds, _ = model(
            states=batch["states"],
            actions=batch["actions"],
            rewards=batch["rewards"],
            returns_to_go=batch["returns_to_go"],
            timesteps=batch["timesteps"],
            return_dict=False,
        )
        return F.mse_loss(action_preds.float(), batch["actions"].float())

    return model, loss_fn


def timed_steps(model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                batch: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `steps` full training steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_preset(name: str, batch_size: int | None, steps: int, repeats: int, dtype: torch.dtype) -> float:
    make_cfg, default_batch = PRESETS[name]
    cfg = make_cfg(token_layout="R,s,a", attn_backend="sdpa")
    batch_size = batch_size or default_batch
    batch = make_batch(cfg, batch_size, dtype)
    tokens_per_step = batch_size * cfg.context_len * 3
    torch.manual_seed(0)
    runners = {}
    for label, build in (("dt_eva", build_ours), ("hf", build_hf)):
        model, loss_fn = build(cfg, dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        timed_steps(model, loss_fn, optimizer, batch, 3)  # warm-up: allocator, kernels, optimizer state
        runners[label] = (model, loss_fn, optimizer)
    hf_model = runners["hf"][0]
    print(
        f"[{name}] hidden={cfg.hidden_size} layers={cfg.n_layer} heads={cfg.n_head} K={cfg.context_len} "
        f"tokens/seq={3 * cfg.context_len} batch={batch_size} dtype={str(dtype).removeprefix('torch.')} "
        f"dropout={cfg.dropout} threads={torch.get_num_threads()}\n"
        f"  params: dt_eva={sum(p.numel() for p in runners['dt_eva'][0].parameters()):,} "
        f"hf={sum(p.numel() for p in hf_model.parameters()):,}; "
        f"HF attention implementation: {hf_model.config._attn_implementation}"
    )
    rates: dict[str, list[float]] = {"dt_eva": [], "hf": []}
    cpu_rates: dict[str, list[float]] = {"dt_eva": [], "hf": []}
    for r in range(repeats):
        order = ("dt_eva", "hf") if r % 2 == 0 else ("hf", "dt_eva")  # ABBA against drift
        for label in order:
            wall, cpu = timed_steps(*runners[label], batch, steps)
            rates[label].append(steps * tokens_per_step / wall)
            cpu_rates[label].append(steps * tokens_per_step / cpu)
    median = statistics.median
    for label in ("dt_eva", "hf"):
        xs, cs = rates[label], cpu_rates[label]
        print(f"  {label:6s}: {median(xs):10,.0f} tokens/s wall (median of {repeats}; best {max(xs):,.0f}); "
              f"{median(cs):10,.0f} tokens per CPU-second (median; best {max(cs):,.0f})")
    ratio = median(rates["dt_eva"]) / median(rates["hf"])
    print(f"  ratio dt_eva / hf: {ratio:.2f}x wall (medians), {max(rates['dt_eva']) / max(rates['hf']):.2f}x wall (bests), "
          f"{median(cpu_rates['dt_eva']) / median(cpu_rates['hf']):.2f}x CPU time (medians), "
          f"{max(cpu_rates['dt_eva']) / max(cpu_rates['hf']):.2f}x CPU time (bests)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=[*PRESETS, "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 (tiny), 16 (paper)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed unit")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed units per model")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    for name in PRESETS if args.preset == "both" else (args.preset,):
        bench_preset(name, args.batch_size, args.steps, args.repeats, dtype)


if __name__ == "__main__":
    main()
