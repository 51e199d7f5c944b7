"""dt-eva demo: the real pipeline end to end at the --fast size, re-use on a second run, resume, errors."""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest

from dt_eva.cli import main
from dt_eva.demo import DemoSettings, run_demo


def _artifacts(workdir: Path, task: str) -> list[Path]:
    return [
        workdir / "data" / "pretrain" / "reach-v3" / "observations.npy",
        workdir / "data" / "finetune" / f"{task}-v3" / "observations.npy",
        workdir / "pretrain" / "model.pt",
        workdir / "pretrain" / "checkpoints" / "last.pt",
        workdir / "pretrain" / "eval.json",
        workdir / f"{task}-lora" / "model.pt",
        workdir / f"{task}-lora" / "checkpoints" / "last.pt",
        workdir / f"{task}-lora" / "eval.json",
        workdir / f"{task}-eva" / "model.pt",
        workdir / f"{task}-eva" / "checkpoints" / "last.pt",
        workdir / f"{task}-eva" / "eva" / "result.json",
        workdir / f"{task}-eva" / "eval.json",
        workdir / f"report-{task}" / "report.md",
        workdir / f"report-{task}" / "table6_success_any.csv",
        workdir / f"report-{task}" / "curves" / f"finetune-{task}.png",
    ]


@pytest.mark.slow
def test_fast_demo_runs_end_to_end_then_reuses_and_resumes(tmp_path: Path, capsys):
    workdir = tmp_path / "demo"
    log: list[str] = []
    result = run_demo(workdir, fast=True, progress=False, log=log.append)
    task = result["task"].removesuffix("-v3")

    artifacts = _artifacts(workdir, task)
    missing = [str(p) for p in artifacts if not p.is_file()]
    assert not missing, missing
    assert [s.status for s in result["stages"]] == ["done"] * len(result["stages"])
    with open(workdir / f"report-{task}" / "table6_success_any.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"pretrained", "lora", "eva"}
    for row in rows.values():
        assert 0.0 <= float(row[f"{task}-v3_mean"]) <= 1.0
    assert "| LoRA | r=8 |" in result["table"] and "| EVA | r=8, rho=2 |" in result["table"]
    assert str(workdir / "pretrain") in log[-1] and "report.md" in log[-1]  # the summary names the artifacts

    # second run through the CLI: nothing is recollected, retrained or re-evaluated
    mtimes = {p: p.stat().st_mtime_ns for p in artifacts if "report-" not in str(p)}
    capsys.readouterr()
    assert main(["demo", "--fast", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| LoRA | r=8 |" in out and "skipped (finished run reused)" in out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # an interrupted EVA run (checkpoint written, final files not yet) is resumed, the rest reused
    eva_run = workdir / f"{task}-eva"
    for name in ("summary.json", "model.pt", "eval.json"):
        (eva_run / name).unlink()
    again = run_demo(workdir, fast=True, progress=False, log=lambda _: None)
    status = {s.name: s.status for s in again["stages"]}
    assert status[f"fine-tune EVA on {task}"] == "resumed from checkpoint"
    assert status[f"fine-tune LoRA on {task}"].startswith("skipped")
    assert status["pre-train tiny DT"].startswith("skipped")
    assert status["evaluate EVA"] == "done"
    assert (eva_run / "model.pt").is_file() and (eva_run / "eval.json").is_file()
    lora_ckpt = workdir / f"{task}-lora" / "checkpoints" / "last.pt"
    assert lora_ckpt.stat().st_mtime_ns == mtimes[lora_ckpt]


def test_workdir_of_other_settings_is_refused(tmp_path: Path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    fast = DemoSettings.fast()
    (workdir / "demo.json").write_text(__import__("json").dumps(fast.identity()))
    with pytest.raises(ValueError, match=r"other settings \(differing: .*rank"):
        run_demo(workdir, settings=dataclasses.replace(fast, rank=4), log=lambda _: None)
    assert sorted(os.listdir(workdir)) == ["demo.json"]  # nothing was started


def test_bad_task_is_refused_before_any_work(tmp_path: Path):
    with pytest.raises(ValueError, match="not one of hammer, push-wall"):
        run_demo(tmp_path / "d", fast=True, task="reach", log=lambda _: None)
    with pytest.raises(ValueError):
        run_demo(tmp_path / "d", fast=True, task="no-such-task", log=lambda _: None)
    assert not (tmp_path / "d").exists()
