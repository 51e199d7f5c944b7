"""Runs and data written by dt-eva 0.1.0, before the run-directory redesign (tests/fixtures/legacy,
made by tests/fixtures/make_legacy_runs.py), still load, resume, evaluate, fine-tune and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dt_eva.cli import main

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_legacy_runs_are_recognised_and_their_policies_load(ws):
    from dt_eva.runs import is_run_dir, load_run_model

    for name in ("pre", "ft-lora", "ft-eva", "unfinished"):
        assert is_run_dir(ws / "runs" / name)
    pre, info = load_run_model("runs/pre")
    saved = torch.load(ws / "runs/pre/model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in pre.state_dict().items())
    assert info["target_returns"].keys() == {"hammer-v3", "reach-v3"}
    for name, method in (("ft-lora", "lora"), ("ft-eva", "eva")):
        model, info = load_run_model(f"runs/{name}")
        assert info["method"] == method and info["weights"].endswith("model.pt")
        adapters = torch.load(ws / "runs" / name / "model.pt", weights_only=True)
        own = model.state_dict()
        assert adapters and set(adapters) <= set(own)
        assert all(torch.equal(own[k], v) for k, v in adapters.items())
    _, info = load_run_model("runs/unfinished")  # no model.pt: the checkpoint of dt-eva 0.1.0 (format 1)
    assert info["weights"].endswith("checkpoints/last.pt") and info["step"] == 3


def test_legacy_unfinished_run_resumes_and_legacy_base_fine_tunes(ws):
    assert main(["pretrain", "-c", "runs/unfinished/config.yaml", "--resume"]) == 0
    assert (ws / "runs/unfinished/model.pt").is_file()
    meta = json.loads((ws / "runs/unfinished/meta.json").read_text())
    assert meta["package"] == "dt-eva" and meta["run_id"] and meta["resumed"]
    assert main(["finetune", "--checkpoint", "runs/pre", "--task", "hammer", "--method", "lora", "--name", "new",
                 "data.path=data/tiny", "rank=2", "train.steps=2", "train.batch_size=8", "train.eval_episodes=0",
                 "train.progress=false", "train.device=cpu", "optim.warmup_steps=1"]) == 0
    assert json.loads((ws / "runs/new/summary.json").read_text())["pretrain"]["sha256"] == json.loads(
        (ws / "runs/ft-lora/meta.json").read_text())["base"]["sha256"]


@pytest.mark.slow
def test_legacy_runs_evaluate_and_report(ws, capsys):
    before = json.loads((ws / "runs/ft-eva/eval.json").read_text())
    assert main(["evaluate", "--run", "runs/ft-lora", "--episodes", "1", "--no-progress"]) == 0
    assert main(["report", "runs", "--out", "report"]) == 0
    out = capsys.readouterr().out
    assert "LoRA" in out and "EVA" in out
    assert json.loads((ws / "runs/ft-eva/eval.json").read_text()) == before  # nothing rewrote it
