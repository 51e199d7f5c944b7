"""The run-directory contract (issue 7): nothing is ever executed, lost, escaped or mixed.

Each test reproduces a failure found by trying bad inputs and faults against the CLI, through the
real `dt-eva` entry point (`dt_eva.cli.main`) on a real dataset (the committed legacy fixture's).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dt_eva.cli import main

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
TRAIN = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.progress=false", "train.device=cpu",
         "optim.warmup_steps=1"]
TINY = ["model.hidden_size=16", "model.n_layer=1", "model.n_head=2", "model.context_len=5", *TRAIN]


class Payload:
    """Unpickling this runs `open(marker, "w")`: the shape of a code-running checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A working folder with the legacy fixture's dataset; the tests run `dt-eva` inside it."""
    shutil.copytree(LEGACY / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pretrain(*args: str) -> int:
    return main(["pretrain", "data.path=data/tiny", *TINY, "train.steps=2", "train.ckpt_every=1", *args])


def finetune(*args: str) -> int:
    return main(["finetune", "--checkpoint", "runs/pre", "--task", "hammer", "data.path=data/tiny", *TRAIN,
                 "rank=2", "train.steps=2", "train.ckpt_every=1", "train.eval_episodes=0", "eva.batch_size=4",
                 "eva.tau=0.9", *args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): sha(p) for p in sorted(path.rglob("*")) if p.is_file()}


# 1. a checkpoint or weights file that carries a code-running payload is refused on every path ----------
def test_code_running_checkpoints_are_refused_everywhere(ws, capsys):
    assert pretrain("name=pre") == 0
    assert finetune("--method", "eva", "--name", "ft") == 0
    marker = ws / "PAYLOAD_RAN"

    def plant(path: Path) -> None:
        original = torch.load(path, weights_only=True) if path.suffix == ".pt" else None
        torch.save({"format": 2, "payload": Payload(marker), **(original or {})}, path)

    # evaluate falls back to checkpoints/last.pt when model.pt is missing
    (ws / "runs/pre/model.pt").rename(ws / "model.bak")
    plant(ws / "runs/pre/checkpoints/last.pt")
    capsys.readouterr()
    assert main(["evaluate", "--run", "runs/pre", "--episodes", "1", "--no-progress"]) == 1
    assert "refusing to load" in capsys.readouterr().err
    # --resume loads the checkpoint
    assert pretrain("name=pre", "--resume") == 1
    assert "refusing to load" in capsys.readouterr().err
    # a fine-tuning run's checkpoint on --resume, and its adapter weights on evaluate
    (ws / "model.bak").rename(ws / "runs/pre/model.pt")
    plant(ws / "runs/ft/checkpoints/last.pt")
    assert finetune("--method", "eva", "--name", "ft", "--resume") == 1
    assert "refusing to load" in capsys.readouterr().err
    plant(ws / "runs/ft/model.pt")
    assert main(["evaluate", "--run", "runs/ft", "--episodes", "1", "--no-progress"]) == 1
    assert "refusing to load" in capsys.readouterr().err
    # the pre-trained base a fine-tuning run loads
    plant(ws / "runs/pre/model.pt")
    assert finetune("--method", "lora", "--name", "ft2") == 1
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists(), "the payload ran"
    assert not (ws / "runs/ft2").exists()


# 2. --resume / --force never touch a folder that is not a marked run ------------------------------------
@pytest.mark.parametrize("lookalike", ["config.yaml", "model.pt", "meta.json", "metrics.jsonl", "summary.json",
                                       "checkpoints"])
@pytest.mark.parametrize("flag", ["--resume", "--force"])
def test_a_folder_that_only_looks_like_a_run_is_never_deleted(ws, capsys, lookalike, flag):
    project = ws / "myproject"
    (project / "src").mkdir(parents=True)
    (project / "thesis.tex").write_text("months of work")
    (project / "src" / "main.py").write_text("print(1)")
    if lookalike == "checkpoints":
        (project / "checkpoints").mkdir()
    else:
        (project / lookalike).write_text('{"kind": "pretrain"}' if lookalike == "meta.json" else "x")
    before = tree(project)
    assert pretrain("run_dir=myproject", flag) == 1
    err = capsys.readouterr().err
    assert "myproject" in err and "not a dt-eva run" in err
    assert tree(project) == before


def test_force_deletes_only_what_dt_eva_wrote(ws):
    assert pretrain("name=pre") == 0
    (ws / "runs/pre/my_notes.txt").write_text("keep me")
    assert pretrain("name=pre", "--force") == 0
    assert (ws / "runs/pre/my_notes.txt").read_text() == "keep me"
    assert (ws / "runs/pre/model.pt").is_file()


# 3 + 11. validation happens before anything is created or deleted -----------------------------------------
def test_force_with_a_bad_config_keeps_the_finished_run(ws, capsys):
    assert pretrain("name=pre") == 0
    before = tree(ws / "runs/pre")
    assert pretrain("name=pre", "data.path=data/missing", "--force") == 1
    assert "data/missing" in capsys.readouterr().err
    assert tree(ws / "runs/pre") == before


def test_a_bad_dataset_leaves_no_stub_behind(ws, capsys):
    assert pretrain("name=new", "data.path=data/missing") == 1
    assert not (ws / "runs/new").exists()
    assert pretrain("name=new") == 0  # the corrected retry needs no --force


# 4. run names cannot escape the runs directory -------------------------------------------------------------
@pytest.mark.parametrize("name", ["../proj", "..", ".", "a/b", "/tmp/x", "exp #2", ""])
def test_run_names_are_one_safe_folder_name(ws, capsys, name):
    (ws / "proj").mkdir()
    (ws / "proj/notes.txt").write_text("notes")
    (ws / "config.yaml").write_text("mine: true\n")
    assert pretrain(f"name={name}", "--force") == 1
    assert "not a valid run name" in capsys.readouterr().err
    assert (ws / "proj/notes.txt").read_text() == "notes" and (ws / "config.yaml").read_text() == "mine: true\n"
    assert not (ws / "runs").exists()


# 5. a '#' in an override is not a comment that silently shortens the value ---------------------------------
def test_a_hash_in_an_override_does_not_replace_another_run(ws, capsys):
    assert pretrain("name=exp") == 0
    before = tree(ws / "runs/exp")
    assert pretrain("name=exp #2", "--force") == 1
    assert tree(ws / "runs/exp") == before


# 6. one process per run -------------------------------------------------------------------------------------
def test_a_running_run_is_locked_and_the_lock_dies_with_its_process(ws, capsys):
    assert pretrain("name=twin") == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dt_eva.runs.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('held', flush=True); time.sleep(600)", str(ws / "runs/twin")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(ws / "runs/twin")
        assert pretrain("name=twin", "seed=2", "--force") == 1
        err = capsys.readouterr().err
        assert "in use by another dt-eva process" in err and f"pid {holder.pid}" in err
        assert tree(ws / "runs/twin") == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert pretrain("name=twin", "seed=2", "--force") == 0  # SIGKILL released the lock


def test_two_concurrent_runs_of_one_name_never_mix(ws):
    procs = [subprocess.Popen([sys.executable, "-m", "dt_eva.cli", "pretrain", "data.path=data/tiny", *TINY,
                               "train.steps=30", "train.ckpt_every=10", "name=twin", f"seed={seed}", "--force"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
             for seed in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    if codes == [0, 0]:  # the second started after the first had finished: it replaced it, whole
        pass
    else:
        assert codes == [0, 1], outs
        loser = outs[[p.returncode for p in procs].index(1)][1]
        assert "in use by another dt-eva process" in loser
    from dt_eva.config import load_config
    from dt_eva.runs.configs import PretrainConfig

    import json
    seed = load_config(PretrainConfig, ws / "runs/twin/config.yaml").seed
    summary_seed_run = json.loads((ws / "runs/twin/meta.json").read_text())["command"]
    assert f"seed={seed}" in summary_seed_run  # the config and the marker come from the same process


# 12. --resume of a name that holds no run says so ------------------------------------------------------------
def test_resume_of_a_mistyped_name_is_an_error(ws, capsys):
    assert pretrain("name=pre") == 0
    assert pretrain("name=pree", "--resume") == 1
    assert "nothing to resume" in capsys.readouterr().err
    assert not (ws / "runs/pree").exists()


def test_missing_task_data_hint_is_a_command_collect_accepts(ws, capsys):
    assert pretrain("name=pre") == 0
    capsys.readouterr()
    assert main(["finetune", "--checkpoint", "runs/pre", "--task", "push", "data.path=data/tiny", *TRAIN,
                 "--method", "lora", "rank=2", "train.steps=2"]) == 1
    err = capsys.readouterr().err
    hint = err[err.index("dt-eva collect"):].split("`")[0].split()
    assert hint[:4] == ["dt-eva", "collect", "--tasks", "push"]
    from dt_eva.commands.collect import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(hint[2:])
    from dt_eva.data.collect import task_params
    import json

    meta = json.loads((ws / "data/tiny/metadata.json").read_text())
    assert (args.episodes, args.noise, args.random_prefix, args.seed) == (
        meta["episodes"], meta["noise_levels"], meta["random_prefixes"], meta["seed"])
    assert task_params("push", args.episodes, args.noise, args.random_prefix, args.seed)["seed"] == meta["seed"]


def test_a_forced_bf16_the_cpu_lacks_fails_before_the_run_exists(ws, capsys):
    from dt_eva.utils.precision import cpu_native_bf16_features

    if cpu_native_bf16_features():
        pytest.skip("this CPU has native bf16 matmuls: a forced bf16 is valid here")
    assert pretrain("name=b", "train.precision=bf16") == 1
    assert "bf16" in capsys.readouterr().err and not (ws / "runs/b").exists()
