"""Benchmark dt_eva's EVA against PEFT's reference implementation on a small GPT-2.

Part 1 (speed + agreement): one run each of `peft.tuners.lora.eva.get_eva_state_dict` and
`dt_eva.eva.compute_eva` on the same randomly initialised GPT2LMHeadModel (4 layers, hidden 256),
the same token batches in the same order (Zipf-distributed random tokens, fixed seed), the same
rank / rho / tau and targets. Prints wall time to convergence, their ratio, batches used, the
per-layer mean |cos| of matching components and the rank allocation of both.

Part 2 (memory): peak RSS growth of compute_eva while it runs for 10, 20, 40, 80 batches (tau=1
so it never converges early), each in a fresh subprocess; batches come from a generator.

    nice python scripts/bench_eva.py            # needs the peft extra
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings


def build_model(args: argparse.Namespace):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=args.layers, n_embd=args.hidden, n_head=args.heads, vocab_size=args.vocab,
        n_positions=args.seq, bos_token_id=0, eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg).eval()


def make_batch(args: argparse.Namespace, index: int):
    """Batch `index` of the stream: Zipf(1.1) token ids, so activations have a decaying spectrum."""
    import torch

    g = torch.Generator().manual_seed(1000 + index)
    ranks = torch.arange(1, args.vocab + 1, dtype=torch.float64)
    probs = ranks.pow(-1.1)
    ids = torch.multinomial(probs / probs.sum(), args.batch * args.seq, replacement=True, generator=g)
    ids = ids.view(args.batch, args.seq)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


TARGETS = ["c_attn", "c_proj", "c_fc"]


def run_compare(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.config import EvaConfig as PeftEvaConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    from dt_eva.eva import EvaConfig, compute_eva

    torch.set_num_threads(args.threads)
    model = build_model(args)
    batches = [make_batch(args, i) for i in range(args.num_batches)]
    with torch.no_grad():
        model(**batches[0])  # warm-up: first-call allocations count for neither side

    peft_calls = 0

    def counting_forward(m, inputs):
        nonlocal peft_calls
        peft_calls += 1
        return m(**inputs)

    peft_cfg = LoraConfig(
        r=args.rank, target_modules=TARGETS, init_lora_weights="eva",
        eva_config=PeftEvaConfig(rho=args.rho, tau=args.tau),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        peft_sd = get_eva_state_dict(model, batches, peft_config=peft_cfg, forward_fn=counting_forward,
                                     show_progress_bar=False)
        peft_s = time.perf_counter() - t0

    cfg = EvaConfig(rank=args.rank, rho=args.rho, tau=args.tau, max_batches=args.num_batches, progress=False)
    t0 = time.perf_counter()
    ours = compute_eva(model, batches, cfg, target_modules=TARGETS,
                       token_mask_fn=lambda b: b["attention_mask"].bool())
    ours_s = time.perf_counter() - t0

    layers = {}
    for name in ours.ranks:
        a, b = ours.components[name], peft_sd[name].float()
        k = min(a.shape[0], b.shape[0])
        cos = torch.nn.functional.cosine_similarity(a[:k], b[:k], dim=1).abs() if k else torch.zeros(0)
        layers[name] = {"rank_ours": ours.ranks[name], "rank_peft": int(b.shape[0]),
                        "mean_abs_cos": float(cos.mean()) if k else float("nan"), "converged": ours.converged[name]}
    return {
        "peft_seconds": peft_s, "ours_seconds": ours_s, "ratio": ours_s / peft_s,
        "peft_forward_calls": peft_calls, "ours_batches": ours.num_batches, "layers": layers,
    }


def run_memory_child(args: argparse.Namespace) -> dict:
    import torch

    from dt_eva.eva import EvaConfig, compute_eva

    torch.set_num_threads(args.threads)
    model = build_model(args)
    with torch.no_grad():
        model(**make_batch(args, 0))
    rss_before = _rss_bytes()
    cfg = EvaConfig(rank=args.rank, rho=args.rho, tau=1.0, max_batches=args.memory_batches, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tau=1 never converges: the cap warning is expected here
        stream = (make_batch(args, i) for i in range(args.memory_batches))
        result = compute_eva(model, stream, cfg, target_modules=TARGETS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"batches": result.num_batches, "peak_rss_growth_mb": (peak - rss_before) / 2**20}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--num-batches", type=int, default=200, help="batches available (PEFT cycles over them)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rho", type=float, default=2.0)
    p.add_argument("--tau", type=float, default=0.99)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    p.add_argument("--memory-sizes", default="10,20,40,80")
    p.add_argument("--memory-batches", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--skip-compare", action="store_true")
    args = p.parse_args()

    if args.memory_batches:  # child process of the memory part
        print(json.dumps(run_memory_child(args)))
        return 0

    from dt_eva.utils.precision import cpu_model

    # every figure names its CPU and date (docs/benchmarks.md)
    print(f"machine: {cpu_model()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()[0]:.1f}")

    print(f"model: GPT2LMHeadModel layers={args.layers} hidden={args.hidden} vocab={args.vocab}; "
          f"batches {args.batch}x{args.seq} tokens; rank={args.rank} rho={args.rho} tau={args.tau}; "
          f"torch threads={args.threads}")
    if not args.skip_compare:
        res = run_compare(args)
        print(f"\nPEFT get_eva_state_dict: {res['peft_seconds']:.2f} s, {res['peft_forward_calls']} forward calls")
        print(f"dt_eva compute_eva:      {res['ours_seconds']:.2f} s, {res['ours_batches']} batches")
        print(f"time ratio ours/PEFT:    {res['ratio']:.3f}  (target <= 0.5)")
        print(f"\n{'layer':<28} {'rank ours':>9} {'rank peft':>9} {'mean|cos|':>9}")
        for name, row in res["layers"].items():
            print(f"{name:<28} {row['rank_ours']:>9} {row['rank_peft']:>9} {row['mean_abs_cos']:>9.4f}")
        same = sum(r["rank_ours"] == r["rank_peft"] for r in res["layers"].values())
        diff = sum(abs(r["rank_ours"] - r["rank_peft"]) for r in res["layers"].values())
        cos = [r["mean_abs_cos"] for r in res["layers"].values() if r["mean_abs_cos"] == r["mean_abs_cos"]]
        print(f"rank allocation: {same}/{len(res['layers'])} layers identical, sum |diff| = {diff}; "
              f"mean over layers of mean|cos| = {sum(cos) / len(cos):.4f}")

    print("\npeak RSS growth of compute_eva vs batches processed (fresh process each):")
    for n in [int(s) for s in args.memory_sizes.split(",")]:
        cmd = [sys.executable, __file__, "--memory-batches", str(n)] + _passthrough(args)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(f"  {row['batches']:>4} batches: {row['peak_rss_growth_mb']:7.1f} MiB")
    return 0


def _passthrough(args: argparse.Namespace) -> list[str]:
    keys = ["layers", "hidden", "heads", "vocab", "seq", "batch", "rank", "rho", "threads"]
    return [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]


if __name__ == "__main__":
    raise SystemExit(main())
