"""The training loop: schedule, parameter groups, loss falls, hooks, non-finite losses, run
directories, load_run_model, and (in subprocesses) exact resume after SIGKILL, Ctrl-C, and DDP.

Everything runs a tiny DT on a real 2-task dataset collected once per session.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from dt_eva.config import load_config
from dt_eva.models import DecisionTransformer, DTConfig
from dt_eva.experiments.pretrain import prepare_pretrain, run_pretrain
from dt_eva.runs.configs import PretrainConfig
from dt_eva.training import (
    NonFiniteLossError,
    Trainer,
    WholeModel,
    build_scheduler,
    warmup_cosine_lr,
    weight_decay_param_groups,
)
from dt_eva.training.checkpoint import load_checkpoint
from dt_eva.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
# Subprocesses: one thread each, so two runs on a busy 2-core machine compute identically and fast.
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY_MODEL = ["model.hidden_size=32", "model.n_layer=1", "model.n_head=2", "model.context_len=5", "model.dropout=0.1"]


@pytest.fixture(scope="session")
def dataset_path(tmp_path_factory) -> Path:
    from dt_eva.data import collect_dataset

    path = tmp_path_factory.mktemp("train-data") / "two-tasks"
    collect_dataset(path, ["reach", "push"], episodes=4, noise_levels=[0.0, 0.3], seed=0, workers=1, progress=False)
    return path


def overrides(dataset_path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.path={dataset_path}",
        f"run_dir={run_dir}",
        "name=test",
        *TINY_MODEL,
        "train.batch_size=16",
        "train.eval_every=0",
        "train.progress=false",
        "train.device=cpu",
        "optim.lr=1e-3",
        "optim.warmup_steps=5",
        "optim.min_lr=1e-4",
        *extra,
    ]


def tiny_cfg(dataset_path: Path, run_dir: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", overrides(dataset_path, run_dir, *extra))


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


# --- schedule and optimizer ---------------------------------------------------------------------------
def test_schedule_matches_closed_form_and_drives_the_optimizer():
    base, warm, total, floor = 1e-3, 10, 50, 1e-5

    def reference(t: int) -> float:
        if t < warm:
            return base * (t + 1) / warm
        return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * (t - warm) / (total - warm)))

    param = nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=base)
    sched = build_scheduler(opt, base, warm, total, floor)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert used == pytest.approx([reference(t) for t in range(total)], rel=1e-12, abs=0)
    assert used[warm - 1] == pytest.approx(base) and used[0] == pytest.approx(base / warm)
    assert warmup_cosine_lr(total, base, warm, total, floor) == pytest.approx(floor)


def test_no_weight_decay_on_exactly_biases_norms_and_embeddings():
    model = DecisionTransformer(DTConfig.tiny(learned_pos_embedding=True))
    groups = {g["name"]: g for g in weight_decay_param_groups(model, 0.01)}
    expected_no_decay = set()
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            is_embedding = isinstance(module, nn.Embedding) or mname.split(".")[-1].startswith("embed")
            if pname == "bias" or isinstance(module, nn.LayerNorm) or is_embedding or full.startswith("embed"):
                expected_no_decay.add(full)
    assert set(groups["no_decay"]["names"]) == expected_no_decay
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.01
    decay = set(groups["decay"]["names"])
    assert decay.isdisjoint(expected_no_decay)
    assert decay | expected_no_decay == {n for n, _ in model.named_parameters()}
    # every weight matrix of the transformer and the action head is decayed, nothing else
    assert decay == {
        n for n, p in model.named_parameters() if n.endswith("weight") and (n.startswith("blocks.") or n.startswith("action_head")) and p.dim() == 2
    }
    assert any(n.startswith("embed_timestep") for n in expected_no_decay)
    assert any(n.startswith("embed_state") for n in expected_no_decay)


# --- the loop in-process -------------------------------------------------------------------------------
def test_loss_falls_and_hooks_run(dataset_path, tmp_path):
    cfg = tiny_cfg(dataset_path, tmp_path / "run", "train.steps=120", "train.log_every=10", "train.ckpt_every=60",
                   "train.eval_every=40", "train.eval_tasks=[reach]")
    setup = prepare_pretrain(cfg)
    calls: dict[str, list] = {"after": [], "eval": []}
    extra = {"budget": 0}

    def eval_fn(model, step):
        calls["eval"].append((step, model.training))
        torch.rand(100)  # consumes RNG: must not change the training stream
        return {"eval/success_any": 0.25}

    class Counting(WholeModel):
        def after_step(self, step):
            calls["after"].append(step)
            assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)  # grads still there
            extra["budget"] += 1

        def extra_state(self):
            return dict(extra)

    trainer = Trainer(
        Counting(setup.trainer.model), setup.trainer.sampler, cfg.optim, cfg.train, setup.paths,
        autocast_dtype=setup.trainer.autocast_dtype, eval_fn=eval_fn, tensorboard=True,
    )
    result = trainer.fit()
    assert result.steps == 120 and calls["after"] == list(range(1, 121))
    assert calls["eval"] == [(40, False), (80, False), (120, False)]  # eval mode during evaluation
    assert trainer.model.training
    curve = losses(setup.run_dir)
    assert sorted(curve) == list(range(10, 121, 10))
    assert curve[120] < 0.7 * curve[10], curve
    records = read_metrics(setup.run_dir / "metrics.jsonl")
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert [r["step"] for r in records if "eval/success_any" in r] == [40, 80, 120]
    ckpt = load_checkpoint(setup.run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 120 and ckpt["extra"] == {"budget": 120}
    assert list((setup.run_dir / "tb").iterdir()), "TensorBoard events expected"

    # The same run without the RNG-consuming evaluation gives the same losses.
    cfg2 = tiny_cfg(dataset_path, tmp_path / "run2", "train.steps=120", "train.log_every=10", "train.ckpt_every=60")
    setup2 = prepare_pretrain(cfg2)
    setup2.trainer.fit()
    assert losses(setup2.run_dir) == curve


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset_path, tmp_path):
    # lr 1e9 from the first update: the weights blow up and the loss turns NaN a step or two later.
    cfg = tiny_cfg(dataset_path, tmp_path / "run", "train.steps=50", "train.log_every=5", "train.ckpt_every=1",
                   "optim.lr=1e9", "optim.min_lr=1e9", "optim.warmup_steps=0")
    setup = prepare_pretrain(cfg)
    with pytest.raises(NonFiniteLossError) as err:
        setup.trainer.fit()
    bad = err.value.step
    assert f"at step {bad}" in str(err.value) and "last.pt" in str(err.value)
    assert bad >= 2
    ckpt = load_checkpoint(setup.run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == bad - 1  # the state after the last update whose loss was finite
    assert max(losses(setup.run_dir), default=0) < bad
    assert not (setup.run_dir / "model.pt").exists()


def test_existing_run_dir_needs_resume_or_force(dataset_path, tmp_path):
    cfg = tiny_cfg(dataset_path, tmp_path / "run", "train.steps=3", "train.log_every=1")
    run_dir = run_pretrain(cfg)
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()
    assert json.loads((run_dir / "meta.json").read_text())["kind"] == "pretrain"
    with pytest.raises(ValueError, match=r"already holds a finished run.*--resume.*--force"):
        run_pretrain(cfg)
    with pytest.raises(ValueError, match=r"cannot resume.*optim.lr"):
        run_pretrain(tiny_cfg(dataset_path, tmp_path / "run", "train.steps=3", "optim.lr=5e-4"), resume=True)
    run_pretrain(cfg, force=True)
    assert len(losses(run_dir)) == 3  # the old metrics are gone, not appended to
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("x")
    with pytest.raises(ValueError, match="not a dt-eva run"):
        run_pretrain(tiny_cfg(dataset_path, tmp_path / "other", "train.steps=3"), force=True)
    assert (tmp_path / "other" / "precious.txt").exists()


def test_load_run_model(dataset_path, tmp_path):
    from dt_eva.data import load_dataset
    from dt_eva.runs import load_run_model

    run_dir = run_pretrain(tiny_cfg(dataset_path, tmp_path / "run", "train.steps=4", "train.ckpt_every=2"))
    model, info = load_run_model(run_dir)
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not model.training and info["kind"] == "pretrain" and info["weights"].endswith("model.pt")
    ds = load_dataset(dataset_path)
    assert info["target_returns"] == {t: ds.max_return(t) for t in ds.tasks}
    assert info["rtg_scale"] == 200.0 and info["config"]["model"]["hidden_size"] == 32

    (run_dir / "model.pt").unlink()  # falls back to the last checkpoint
    model2, info2 = load_run_model(run_dir)
    assert info2["step"] == 4 and all(torch.equal(v, saved[k]) for k, v in model2.state_dict().items())
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoints/last.pt is corrupt"):
        load_run_model(run_dir)
    (run_dir / "model.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"model.pt is corrupt"):
        load_run_model(run_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run_model(tmp_path / "nope")


# --- subprocesses: SIGKILL + resume, Ctrl-C, DDP ---------------------------------------------------------
RESUME_ARGS = ["train.steps=80", "train.log_every=1", "train.ckpt_every=20"]


def cli(dataset_path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dt_eva.cli", "pretrain", "--config", str(REPO / "configs/pretrain/tiny.yaml"),
            *overrides(dataset_path, run_dir, *RESUME_ARGS), *extra]


def wait_for(proc: subprocess.Popen, condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before the test could interrupt it:\n{proc.stderr.read()}"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(dataset_path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(cli(dataset_path, run_dir), env=SUB_ENV, check=True, capture_output=True, text=True)
    return run_dir


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(dataset_path, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli(dataset_path, run_dir), env=SUB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "last.pt"
    # kill -9 after the first checkpoint, a few steps past it (those steps must be replayed, not duplicated)
    wait_for(proc, lambda: ckpt.is_file() and max(losses(run_dir), default=0) >= 25)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 20 <= killed_at < 80

    done = subprocess.run(cli(dataset_path, run_dir, "--resume"), env=SUB_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = losses(uninterrupted)
    assert sorted(expected) == list(range(1, 81))
    assert losses(run_dir) == expected  # exact equality, every step, before and after the kill
    a = torch.load(uninterrupted / "model.pt", weights_only=True)
    b = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] == killed_at


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(dataset_path, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli(dataset_path, run_dir), env=SUB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: max(losses(run_dir), default=0) >= 5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "--resume" in stderr and "Traceback" not in stderr
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert step == max(losses(run_dir)) and step < 80
    done = subprocess.run(cli(dataset_path, run_dir, "--resume"), env=SUB_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "final loss" in done.stdout
    assert losses(run_dir) == losses(uninterrupted)


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(dataset_path, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "dist_train_worker.py"), str(out),
           *overrides(dataset_path, run_dir, "train.steps=80", "train.log_every=10", "train.ckpt_every=40",
                      # evaluation at steps that are neither log nor checkpoint steps (25, 75) too
                      "train.eval_every=25", "train.eval_tasks=[reach]", "train.eval_episodes=1")]
    done = subprocess.run(cmd, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["backend"] for r in ranks] == ["gloo", "gloo"] and ranks[0]["world_size"] == 2
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert all(torch.equal(a[k], b[k]) for k in a), "ranks diverged"
    # the stop flag's all-reduce (and its host sync) runs at log steps only, on every rank alike
    assert ranks[0]["stop_checks"] == ranks[1]["stop_checks"] == list(range(10, 81, 10))
    curve = losses(run_dir)
    assert sorted(curve) == list(range(10, 81, 10))  # only rank 0 logs
    # rank 0 evaluated online while rank 1 waited; eval.json holds the final evaluation
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval/success_any" in r] == [25, 50, 75, 80]
    assert json.loads((run_dir / "eval.json").read_text())["episodes"] == 1
    assert curve[80] < 0.8 * curve[10], curve
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert len(ckpt["rank_states"]) == 2 and ckpt["rank_states"][0]["sampler"] != ckpt["rank_states"][1]["sampler"]
