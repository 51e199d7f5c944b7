"""Hostile inputs and faults, round two (issue 16, items 12-18, 21, 23 and the smaller ones on inputs).

Each test reproduces a defect found by handing the real `dt-eva` entry point (`dt_eva.cli.main`) or
the public API a bad value, a crafted file or a full disk, on the committed legacy fixture's dataset.
Every bad input must give a one-line error that names the file or key, and leave nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dt_eva.cli import main

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
TRAIN = ["train.batch_size=8", "train.log_every=1", "train.eval_every=0", "train.progress=false", "train.device=cpu",
         "optim.warmup_steps=1"]
TINY = ["model.hidden_size=16", "model.n_layer=1", "model.n_head=2", "model.context_len=5", *TRAIN]
DEEP = "[" * 100_000  # deeper than Python's recursion limit


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A working folder with the legacy fixture's dataset; the tests run `dt-eva` inside it."""
    shutil.copytree(LEGACY / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny pre-training run and an EVA fine-tuning run on it (made once; tests copy them)."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(LEGACY / "data", root / "data")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert pretrain("name=pre") == 0
        assert finetune("--method", "eva", "--name", "ft") == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def runs(trained, ws) -> Path:
    """The trained runs, copied into the working folder."""
    shutil.copytree(trained / "runs", ws / "runs")
    return ws / "runs"


def pretrain(*args: str) -> int:
    return main(["pretrain", "data.path=data/tiny", *TINY, "train.steps=2", "train.ckpt_every=1", *args])


def finetune(*args: str) -> int:
    return main(["finetune", "--checkpoint", "runs/pre", "--task", "hammer", "data.path=data/tiny", *TRAIN,
                 "rank=2", "train.steps=2", "train.ckpt_every=1", "train.eval_episodes=0", "eva.batch_size=4",
                 "eva.tau=0.9", *args])


def error_line(capsys) -> str:
    """The error `dt-eva` printed: one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# 12. a number that passes `> 0` (inf) or compares false (NaN) is refused before the run folder exists --------
@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1"),
    ("optim.weight_decay=nan", "optim.weight_decay must be a finite number >= 0, got nan"),
    ("optim.eps=nan", "optim.eps must be a finite number > 0, got nan"),
    ("optim.betas=[2,0.999]", "optim.betas[0] must be a finite number in [0, 1), got 2.0"),
    ("optim.betas=[0.9,1]", "optim.betas[1] must be a finite number in [0, 1), got 1.0"),
    ("data.rtg_scale=inf", "data.rtg_scale must be a finite number > 0, got inf"),
    ("data.reward_scale=nan", "data.reward_scale must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.grad_clip=nan", "optim.grad_clip must be a finite number >= 0, got nan (0 = no clipping)"),
    ("optim.grad_clip=inf", "optim.grad_clip must be a finite number >= 0, got inf"),
    ("train.eval_tasks=[bogus]", "unknown Meta-World task 'bogus'"),
])
def test_bad_numbers_are_refused_before_the_pretrain_folder_exists(ws, capsys, override, message):
    assert pretrain("name=bad", override) == 1
    assert message in error_line(capsys)
    assert not (ws / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("alpha=nan", "alpha must be a finite number > 0, got nan"),
    ("alpha=inf", "alpha must be a finite number > 0, got inf"),
    ("rho=inf", "rho must be a finite number >= 1, got inf"),
    ("seed=-1", "seed must be an integer in [0, 2**32), got -1"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("adalora.orth_reg_weight=nan", "adalora.orth_reg_weight must be a finite number >= 0, got nan"),
])
def test_bad_numbers_are_refused_before_the_finetune_folder_exists(runs, capsys, override, message):
    before = sorted(p.name for p in runs.iterdir())
    assert finetune("--method", "lora", "--name", "bad", override) == 1
    assert message in error_line(capsys)
    assert sorted(p.name for p in runs.iterdir()) == before


def test_a_dataset_listing_an_unknown_task_is_refused_before_the_folder_exists(ws, capsys):
    meta_path = ws / "data/tiny/metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["tasks"] = ["hammer-v3", "bogus-v3"]
    meta_path.write_text(json.dumps(meta))
    (ws / "data/tiny/reach-v3").rename(ws / "data/tiny/bogus-v3")
    assert pretrain("name=bad") == 1
    err = error_line(capsys)
    assert f"{meta_path.relative_to(ws)}: 'tasks' lists ['bogus-v3'], which are not Meta-World task names" in err
    assert not (ws / "runs").exists()


def test_returns_to_go_edited_mid_episode_is_detected(ws):
    from dt_eva.data import load_dataset

    path = ws / "data/tiny/hammer-v3/returns_to_go.npy"
    rtg = np.load(path)
    rtg[1, 100] += 5.0  # first and last step still agree with the rewards
    np.save(path, rtg)
    with pytest.raises(ValueError, match=r"returns_to_go.npy: does not match the reverse cumulative sum of "
                                         r"rewards.npy \(first at episode 1, step 100\)"):
        load_dataset(ws / "data/tiny")


def test_a_rewards_file_holding_text_is_not_called_pickled(ws):
    from dt_eva.data import load_dataset

    (ws / "data/tiny/hammer-v3/rewards.npy").write_text("0.5 0.5 0.5\n")
    with pytest.raises(ValueError) as info:
        load_dataset(ws / "data/tiny")
    message = str(info.value)
    assert "hammer-v3/rewards.npy: not a .npy array: it holds no NumPy .npy header (text" in message
    assert "pickle" not in message


# 13. an unknown train.device is a one-line error, not a traceback ---------------------------------------------
def test_an_unknown_train_device_is_a_one_line_error(runs, capsys):
    assert pretrain("name=dev", "train.device=banana") == 1
    assert "train.device='banana' is not a torch device; use cpu, cuda, cuda:N or auto" in error_line(capsys)
    assert finetune("--method", "lora", "--name", "dev", "train.device=banana") == 1
    assert "train.device='banana' is not a torch device" in error_line(capsys)
    assert not (runs / "dev").exists()
