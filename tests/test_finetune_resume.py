"""Fine-tuning runs survive SIGKILL and resume exactly, for every kind of trained state (full model,
DoRA magnitudes, PiSSA residual bases, AdaLoRA's rank allocator), refuse a changed config, and
train under torchrun with 2 processes. All through the real CLI, on the committed legacy fixture
(a real 2-task dataset and a tiny pre-trained DT)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# the killed process is SIGKILLed by itself while drawing its Nth training batch: a real kill -9 at a
# deterministic point (after the checkpoint of step 10, in the middle of step 14)
KILL_AT_DRAW = """
import os, signal, sys
from dt_eva.data import WindowSampler
original, drawn = WindowSampler.sample, [0]
def sample(self):
    if self.batch_size == 8:
        drawn[0] += 1
        if drawn[0] == 14:
            os.kill(os.getpid(), signal.SIGKILL)
    return original(self)
WindowSampler.sample = sample
from dt_eva.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft-resume")
    shutil.copytree(LEGACY / "data", root / "data")
    shutil.copytree(LEGACY / "runs" / "pre", root / "runs" / "pre")
    return root


def finetune_args(method: str, name: str, *extra: str) -> list[str]:
    return ["finetune", "--checkpoint", "runs/pre", "--task", "hammer", "--method", method, "--name", name,
            "data.path=data/tiny", "rank=2", "train.steps=24", "train.batch_size=8", "train.log_every=1",
            "train.ckpt_every=10", "train.eval_episodes=0", "train.progress=false", "train.device=cpu",
            "optim.warmup_steps=2", "optim.lr=3e-3", "adalora.tinit=0.2", "adalora.tfinal=0.2", "adalora.delta_t=2",
            "eva.batch_size=4", "eva.tau=0.9", *extra]


def run_cli(ws: Path, args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "dt_eva.cli", *args]
    return subprocess.run(cmd, cwd=ws, env=ENV, capture_output=True, text=True, timeout=300)


def losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fft", "dora", "pissa", "adalora"])
def test_sigkill_then_resume_equals_the_uninterrupted_run(ws, method):
    straight = run_cli(ws, finetune_args(method, f"{method}-straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run_cli(ws, finetune_args(method, f"{method}-killed"), script=KILL_AT_DRAW)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = ws / "runs" / f"{method}-killed"
    assert not (run / "summary.json").exists() and max(losses(run)) == 13  # steps 11-13 are replayed
    resumed = run_cli(ws, finetune_args(method, f"{method}-killed", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = losses(ws / "runs" / f"{method}-straight")
    assert sorted(expected) == list(range(1, 25)) and losses(run) == expected
    a = torch.load(ws / "runs" / f"{method}-straight" / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 10
    if method == "adalora":  # the allocator pruned to the same ranks
        assert summary["adapter_ranks"] == json.loads(
            (ws / "runs" / f"{method}-straight" / "summary.json").read_text())["adapter_ranks"]


def test_resume_refuses_a_changed_config_and_keeps_the_run(ws):
    first = run_cli(ws, finetune_args("lora", "lora-cfg", "train.steps=4"))
    assert first.returncode == 0, first.stderr[-2000:]
    before = (ws / "runs/lora-cfg/model.pt").read_bytes()
    again = run_cli(ws, finetune_args("lora", "lora-cfg", "train.steps=4", "optim.lr=1e-2", "--resume"))
    assert again.returncode == 1 and "cannot resume" in again.stderr and "optim.lr" in again.stderr
    assert (ws / "runs/lora-cfg/model.pt").read_bytes() == before


@pytest.mark.slow
def test_finetune_under_torchrun_with_two_processes(ws):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dt_eva.cli",
           *finetune_args("eva", "eva-ddp", "train.steps=12")]
    done = subprocess.run(cmd, cwd=ws, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = ws / "runs" / "eva-ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 12
    assert sorted(losses(run)) == list(range(1, 13))  # rank 0 alone logs
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rank_states"]) == 2 and ckpt["rank_states"][0]["sampler"] != ckpt["rank_states"][1]["sampler"]
    assert (run / "eva" / "result.json").is_file()


@pytest.mark.slow
def test_a_setup_error_on_rank_0_stops_every_rank(ws):
    # rank 0 finds the run directory taken by a folder that is not a run; rank 1 must not wait forever
    (ws / "runs" / "taken").mkdir()
    (ws / "runs" / "taken" / "notes.txt").write_text("mine")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dt_eva.cli",
           *finetune_args("eva", "taken", "train.steps=4")]
    done = subprocess.run(cmd, cwd=ws, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and "not a dt-eva run" in done.stderr
    assert (ws / "runs" / "taken" / "notes.txt").read_text() == "mine"
