"""Training throughput of dt_eva's DecisionTransformer: fp32 vs bf16 autocast, and against HF transformers.

Default (`--compare precision`): our DT trained as `dt_eva.training.Trainer` trains it (autocast
forward + MSE loss, backward, gradient clipping, fused AdamW) in fp32 and in bf16 autocast, same size
and batch, timed units interleaved (ABBA) over `--repeats` rounds. Reported: tokens/s (medians), the
ratio bf16 / fp32, and the nominal MFU of each: 3 x forward matmul FLOPs of the full model (every
token through every linear layer of every block, full T x T attention; embeddings and head left out)
per second, over the matmul peak of the same dtype measured in this run (`--peak-size`^2 matmuls
on this process's threads). bf16 runs only where `precision: auto` would pick it (native bf16
matmuls), unless `--force-bf16`.

`--compare hf`: our DT vs HF's `DecisionTransformerModel` (same size, layout R,s,a, dtype, dropout,
loss, plain AdamW), units interleaved ABBA, medians and bests by wall clock and by process CPU time.

    python scripts/bench_dt_throughput.py --threads 1                      # paper and tiny sizes, fp32 vs bf16
    python scripts/bench_dt_throughput.py --preset tiny --threads 1 --repeats 6
    python scripts/bench_dt_throughput.py --compare hf --preset tiny --threads 1
    python scripts/bench_dt_throughput.py --device cuda                    # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from dt_eva.models import DecisionTransformer, DTConfig

PRESETS = {"tiny": (DTConfig.tiny, 64), "paper": (DTConfig.paper, 16)}  # config, default batch size (--compare hf)
# --compare precision: the sizes issue 9 names (the tiny preset of configs/pretrain/tiny.yaml: context 10)
PRECISION_PRESETS = {
    "paper": (lambda: DTConfig.paper(), 8),
    "tiny": (lambda: DTConfig.tiny(context_len=10), 64),
}


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int, seconds: float = 0.5) -> float:
    """FLOP/s of repeated `size`^2 matmuls in `dtype` (at least 2 timed, about `seconds` long)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    sync(device)
    count, start = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
        sync(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def forward_matmul_flops(cfg: DTConfig, batch_size: int) -> float:
    """Nominal forward matmul FLOPs: every token through every block's linear layers, full attention."""
    t = cfg.context_len * cfg.tokens_per_step
    h = cfg.hidden_size
    per_token_per_layer = 2 * 12 * h * h + 2 * 2 * t * h  # qkv, proj, fc, mlp.proj; QK^T and AV
    return batch_size * t * cfg.n_layer * per_token_per_layer


def train_units(model, optimizer, batch, dtype, device, steps):
    from dt_eva.utils.precision import autocast

    params = [p for p in model.parameters() if p.requires_grad]

    def unit() -> tuple[float, float]:
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                loss = model.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.25)
            optimizer.step()
        sync(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    return unit


def bench_precision(name: str, args, device: torch.device, peaks: dict, run_bf16: bool) -> str:
    from dt_eva.training.configs import OptimConfig
    from dt_eva.training.optim import build_optimizer, weight_decay_param_groups

    make_cfg, default_batch = PRECISION_PRESETS[name]
    cfg = make_cfg()
    batch_size = args.batch_size or default_batch
    batch = {k: v.to(device) for k, v in make_batch(cfg, batch_size, torch.float32).items()}
    tokens = batch_size * cfg.context_len * cfg.tokens_per_step
    flops = 3 * forward_matmul_flops(cfg, batch_size)
    labels = ["fp32"] + (["bf16"] if run_bf16 else [])
    units = {}
    for label in labels:
        torch.manual_seed(0)
        model = DecisionTransformer(cfg).to(device).train()
        opt = build_optimizer(weight_decay_param_groups(model, 0.01), OptimConfig(lr=1e-4))
        units[label] = train_units(model, opt, batch, None if label == "fp32" else torch.bfloat16, device, args.steps)
        units[label]()  # warm-up: allocator, kernels, optimizer state
    print(f"[{name}] hidden={cfg.hidden_size} layers={cfg.n_layer} K={cfg.context_len} layout={cfg.token_layout} "
          f"tokens/seq={cfg.context_len * cfg.tokens_per_step} batch={batch_size} dropout={cfg.dropout} "
          f"params={model.num_parameters():,} nominal train GFLOP/step={flops / 1e9:.1f}")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.repeats):
        for label in labels if r % 2 == 0 else labels[::-1]:  # ABBA against drift
            wall, _ = units[label]()
            rates[label].append(args.steps / wall)
    med = {label: statistics.median(v) for label, v in rates.items()}
    for label in labels:
        mfu = flops * med[label] / peaks[label]
        print(f"  {label}: {med[label] * tokens:10,.0f} tokens/s ({1e3 / med[label]:.1f} ms/step, median of "
              f"{args.repeats}; best {max(rates[label]) * tokens:,.0f}); nominal MFU {mfu:.2f} of the {label} peak")
    summary = f"{name}: fp32 MFU {flops * med['fp32'] / peaks['fp32']:.2f}"
    if run_bf16:
        ratio = med["bf16"] / med["fp32"]
        target = {"paper": 1.8, "tiny": 1.6}[name]
        summary += (f", bf16 MFU {flops * med['bf16'] / peaks['bf16']:.2f}"
                    f"{' (target >= 0.8)' if name == 'paper' else ''}, bf16 / fp32 = {ratio:.2f}x (target >= {target})")
        print(f"  ratio bf16 / fp32: {ratio:.2f}x (tokens/s medians)")
    else:
        summary += ", bf16 skipped (no native bf16 here)"
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=["precision", "hf"], default="precision")
    parser.add_argument("--preset", choices=[*PRESETS, "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: paper 8 / tiny 64 (precision); paper 16 / tiny 64 (hf)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed unit")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed units per variant")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="--compare hf only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-size", type=int, default=1024, help="matmul size for the measured peaks")
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 even without native bf16 matmuls")
    args = parser.parse_args()
    from dt_eva.utils.precision import cpu_model

    # every figure names its CPU and date (docs/benchmarks.md)
    print(f"machine: {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(PRESETS) if args.preset == "both" else [args.preset]
    if args.compare == "hf":
        dtype = getattr(torch, args.dtype)
        for name in names:
            bench_preset(name, args.batch_size, args.steps, args.repeats, dtype)
        return

    from dt_eva.utils.precision import cpu_native_bf16_features, resolve_precision

    device = torch.device(args.device)
    native = resolve_precision("auto", device) is not None
    run_bf16 = native or args.force_bf16
    peaks = {"fp32": matmul_peak(torch.float32, device, args.peak_size)}
    # without native bf16 a full-size bf16 matmul takes seconds: measure a smaller one, just to show it
    peaks["bf16"] = matmul_peak(torch.bfloat16, device, args.peak_size if run_bf16 else 256, 0.2)
    where = f"{device.type}" + (f" (native bf16 features: {cpu_native_bf16_features() or 'none'})" if device.type == "cpu" else "")
    print(f"device {where}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; "
          f"measured matmul peak fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s "
          f"(bf16 / fp32 = {peaks['bf16'] / peaks['fp32']:.2f}); precision auto -> {'bf16' if native else 'fp32'}")
    summaries = [bench_precision(name, args, device, peaks, run_bf16) for name in ("paper", "tiny") if name in names]
    # the peaks again: on a shared machine the load changes; MFU above used the first measurement
    again = {"fp32": matmul_peak(torch.float32, device, args.peak_size)}
    if run_bf16:
        again["bf16"] = matmul_peak(torch.bfloat16, device, args.peak_size)
    print("matmul peak re-measured at the end: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s (start {peaks[k] / 1e9:.1f})" for k, v in again.items())
          + " -- if they differ much, the machine's load changed and the MFU figures are unreliable")
    print("SUMMARY bench_dt_throughput: " + "; ".join(summaries))


if __name__ == "__main__":
    main()
