"""Why AdaLoRA learns slowly in a short fine-tune: the size of the weight update it makes, against LoRA's.

Fine-tunes the study's base model on one CW10 task with LoRA, AdaLoRA and AdaLoRA without its orthogonal
regulariser, at one learning rate, and every `--every` updates measures the weight update each method
has made so far: ||W_merged - W_base||_F over the adapted layers (through a `probe_fn` of the real
training loop). The gradient norm comes from the runs' own metrics. Prints a table and writes
`<out>/update_scale.json`.

    python scripts/adalora_update_scale.py --steps 200 --lr 4e-3          # ~2 min on one core

Reading (docs/results.md, "AdaLoRA"): PEFT's AdaLoRA starts with E = 0 and A, B ~ N(0, 0.02), and scales
its update by alpha / r_init; under Adam each entry of E moves by about lr per update, so the update
B diag(E) A grows with the (small) norms of A's and B's rows, while LoRA's B moves by lr per entry
against a Kaiming-initialised A.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch

from dt_eva.config import load_config
from dt_eva.experiments.common import distributed_session, holding
from dt_eva.experiments.finetune import finish_finetune, prepare_finetune
from dt_eva.runs.configs import FinetuneConfig
from dt_eva.utils.io import atomic_write_text, read_metrics

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"lora": ["method=lora"], "adalora": ["method=adalora"],
            "adalora, no orth. reg.": ["method=adalora", "adalora.orth_reg_weight=0.0"]}


def update_norm(setup, base_state: dict[str, torch.Tensor]) -> float:
    """||W_merged - W_base||_F over every weight the method changed (the adapted layers)."""
    merged = setup.method_model.merged_state_dict()
    total = sum(float((merged[k].float() - w.float()).pow(2).sum()) for k, w in base_state.items()
                if k in merged and merged[k].shape == w.shape)
    return math.sqrt(total)


def run_variant(name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name.replace(" ", "_").replace(",", "").replace(".", "")
    cfg = load_config(FinetuneConfig, REPO / "configs/finetune/tiny.yaml", [
        f"checkpoint={args.base}", f"data.path={args.data}", f"task={args.task}", f"run_dir={run_dir}",
        f"optim.lr={args.lr}", f"train.steps={args.steps}", f"train.log_every={args.every}", "train.eval_episodes=0",
        f"train.probe_every={args.every}", "train.progress=false", "train.device=cpu", "rank=8", "alpha=1.0",
        *overrides])
    norms: dict[int, float] = {}

    def prepare(cfg, resume=False, force=False, dist=None):
        setup = prepare_finetune(cfg, resume=resume, force=force, dist=dist)
        base_state = {k: v.detach().clone() for k, v in setup.base.state.items()}

        def probe(model, step):
            norms[step] = update_norm(setup, base_state)
            return {"update/fro": norms[step]}

        setup.trainer.probe_fn = probe
        return setup

    with distributed_session(cfg.train.device) as dist:
        setup = prepare(cfg, dist=dist)
        with holding(setup.run):
            finish_finetune(setup, setup.trainer.fit(resume=setup.resume))
    logged: dict[int, dict] = {}
    for record in read_metrics(run_dir / "metrics.jsonl"):  # a step's training and probe lines
        logged.setdefault(record["step"], {}).update(record)
    return {str(step): {"update_fro": norms[step], "grad_norm": logged[step].get("grad_norm"),
                        "loss": logged[step].get("loss")} for step in sorted(norms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="studies/cw10-tiny/base/mt40-tiny")
    parser.add_argument("--data", default="data/cw10-tiny")
    parser.add_argument("--task", default="push")
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", default="", help="folder for update_scale.json (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_variant(name, overrides, args, Path(tmp)) for name, overrides in VARIANTS.items()}
    steps = list(next(iter(results.values())))
    print(f"task {args.task}, lr {args.lr:g}, {args.steps} updates: ||W - W_base||_F (grad norm) at each step")
    print(f"{'update':>7}  " + "  ".join(f"{name:>26}" for name in results))
    for step in steps:
        cells = [f"{r[step]['update_fro']:12.4f} ({r[step]['grad_norm']:.4f})" for r in results.values()]
        print(f"{step:>7}  " + "  ".join(f"{c:>26}" for c in cells))
    first, last = steps[0], steps[-1]
    lora, ada = results["lora"], results["adalora"]
    print(f"SUMMARY update LoRA/AdaLoRA at step {first}: {lora[first]['update_fro'] / ada[first]['update_fro']:.1f}x, "
          f"at step {last}: {lora[last]['update_fro'] / ada[last]['update_fro']:.1f}x")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "update_scale.json", json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
