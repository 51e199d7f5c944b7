"""dt-eva demo: the real pipeline end to end at the fast size, reuse by config hash, refusals, and the
uncertainty it prints (checked against a hand computation from the per-episode results)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dt_eva.cli import main
from dt_eva.config import config_diff, load_config, save_config
from dt_eva.experiments.demo import (
    STUDY_LINE,
    STUDY_VERDICT,
    DemoPaths,
    DemoSettings,
    finetune_config,
    pretrain_config,
    run_demo,
)
from dt_eva.reporting import wilson_interval
from dt_eva.runs.configs import FinetuneConfig, PretrainConfig
from dt_eva.runs.guard import config_hash

REPO = Path(__file__).resolve().parents[1]
Z = 1.959963984540054


def _wilson_by_roots(k: int, n: int) -> tuple[float, float]:
    """The Wilson bounds as the roots in p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    p_hat, c = k / n, Z * Z / n
    roots = np.sort(np.roots([1 + c, -(2 * p_hat + c), p_hat * p_hat]).real)
    return float(max(roots[0], 0.0)), float(min(roots[1], 1.0))


def test_wilson_interval_matches_reference_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)))  # 0.2775
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + Z * Z), 1.0))
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # 0.5 ± 0.2634
    for k, n in ((1, 4), (3, 20), (17, 20), (29, 30)):
        assert wilson_interval(k, n) == pytest.approx(_wilson_by_roots(k, n), abs=1e-9)
    with pytest.raises(ValueError, match="at least one episode"):
        wilson_interval(0, 0)


def test_demo_runs_are_the_tiny_presets_with_only_the_demo_sizes_changed(tmp_path: Path):
    paths = DemoPaths(tmp_path, "window-close-v3")
    pre = pretrain_config(DemoSettings.default(), paths)
    tiny = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "tiny.yaml")
    assert pre.model == tiny.model and pre.optim == tiny.optim  # one tiny model and recipe
    assert set(config_diff(tiny, pre)) <= {"name", "run_dir", "data.path", "data.tasks", "train.steps",
                                           "train.eval_every", "train.log_every", "train.ckpt_every"}
    tiny_ft = load_config(FinetuneConfig, REPO / "configs" / "finetune" / "tiny.yaml")
    for method in ("lora", "eva"):
        ft = finetune_config(DemoSettings.default(), paths, method)
        assert set(config_diff(tiny_ft, ft)) <= {"name", "run_dir", "checkpoint", "task", "method", "data.path",
                                                 "train.steps", "train.eval_episodes", "train.log_every",
                                                 "train.ckpt_every"}


def test_config_hash_survives_a_saved_config_and_ignores_only_resume_mutable_keys(tmp_path: Path):
    paths = DemoPaths(tmp_path, "window-close-v3")
    cfg = finetune_config(DemoSettings.fast(), paths, "eva")
    save_config(cfg, tmp_path / "config.yaml")
    assert config_hash(load_config(FinetuneConfig, tmp_path / "config.yaml")) == config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False, log_every=1))) \
        == config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=31))) != config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, rho=1.0)) != config_hash(cfg)


def _run_files(workdir: Path, task: str) -> dict[Path, int]:
    """mtime_ns of every file the runs and the comparison records hold."""
    dirs = [workdir / "pretrain", workdir / f"{task}-lora", workdir / f"{task}-eva", workdir / "results"]
    return {p: p.stat().st_mtime_ns for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


def _check_summary_against_records(result: dict, workdir: Path, task: str) -> None:
    """Every printed interval is the Wilson interval of the stored per-episode successes, and holds its rate."""
    for name in ("pretrained", "lora", "eva"):
        record = json.loads((workdir / "results" / task / f"{name}.json").read_text())
        for metric in ("success_any", "success_final"):
            per_episode = record[f"{metric}_per_episode"]
            assert len(per_episode) == 4
            k = int(sum(per_episode))
            lo, hi = _wilson_by_roots(k, 4)
            assert lo <= k / 4 <= hi
            assert f"{k / 4:.2f} [{lo:.2f}, {hi:.2f}]" in result["summary"]
            assert result["comparison"][name][metric]["interval95"] == pytest.approx((lo, hi))
        mse = record["heldout"]["mse_per_episode"]
        assert len(mse) == 2 and all(m > 0 for m in mse)
        se = float(np.std(mse, ddof=1) / math.sqrt(2))
        assert f"{np.mean(mse):.4f} ± {se:.4f}" in result["summary"]
    assert STUDY_LINE in result["summary"] and STUDY_VERDICT in result["summary"]


@pytest.mark.slow
def test_fast_demo_runs_end_to_end_then_reuses_refuses_and_resumes(tmp_path: Path, capsys):
    workdir = tmp_path / "demo"
    log: list[str] = []
    result = run_demo(workdir, fast=True, progress=False, log=log.append)
    task = "window-close"
    assert [s.status for s in result["stages"]] == ["done"] * 10
    for path in (workdir / "pretrain" / "model.pt", workdir / f"{task}-eva" / "eva" / "result.json",
                 workdir / f"report-{task}" / "report.md", workdir / f"report-{task}" / "table6_success_any.csv"):
        assert path.is_file(), path
    _check_summary_against_records(result, workdir, task)
    assert log[-1] == "\n" + result["summary"] and "report.md" in log[-1]
    # the held-out episodes play other goal layouts than the fine-tuning episodes
    seeds = {name: json.loads((workdir / "data" / name / "metadata.json").read_text())["env_seeds"]["per_task"]
             for name in ("finetune", "heldout")}
    assert not set(seeds["finetune"][f"{task}-v3"]) & set(seeds["heldout"][f"{task}-v3"])

    # a second run (through the CLI) reuses every stage but the report and touches no run file
    before = _run_files(workdir, task)
    capsys.readouterr()
    assert main(["demo", "--fast", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    stage_lines = out.split("\nStages:\n")[1].split("\n\nArtifacts:")[0].splitlines()
    assert [line.split("  ")[-1].split(" (")[0] for line in stage_lines] == ["skipped"] * 9 + ["done"]  # report
    assert STUDY_LINE in out
    assert _run_files(workdir, task) == before

    # a changed setting is refused before any stage starts, naming the run and the key
    with pytest.raises(ValueError, match=rf"{task}-lora holds a finetune run made with other settings "
                                         r"\(train.steps: 30 -> 31\)"):
        run_demo(workdir, settings=dataclasses.replace(DemoSettings.fast(), finetune_steps=31), log=lambda _: None)
    assert _run_files(workdir, task) == before

    # an interrupted EVA run (checkpoint written, final files not yet) is resumed, the rest reused
    eva_run = workdir / f"{task}-eva"
    (eva_run / "summary.json").unlink()
    (eva_run / "model.pt").unlink()
    again = run_demo(workdir, fast=True, progress=False, log=lambda _: None)
    status = {s.name: s.status for s in again["stages"]}
    assert status[f"fine-tune EVA on {task}"] == "resumed from checkpoint"
    assert status[f"fine-tune LoRA on {task}"].startswith("skipped (finished run")
    assert status["pre-train tiny DT"].startswith("skipped (finished run")
    assert (eva_run / "model.pt").is_file() and (eva_run / "summary.json").is_file()
    lora_files = {p: t for p, t in before.items() if f"{task}-lora" in str(p)}
    assert {p: p.stat().st_mtime_ns for p in lora_files} == lora_files


def test_a_folder_that_is_not_a_run_is_refused_before_any_work(tmp_path: Path):
    workdir = tmp_path / "demo"
    (workdir / "pretrain").mkdir(parents=True)
    (workdir / "pretrain" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"pretrain exists, is not empty and is not a dt-eva run"):
        run_demo(workdir, fast=True, log=lambda _: None)
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == ["pretrain", "pretrain/notes.txt"]


def test_bad_task_is_refused_before_any_work(tmp_path: Path):
    with pytest.raises(ValueError, match="not one of hammer, push-wall"):
        run_demo(tmp_path / "d", fast=True, task="reach", log=lambda _: None)
    with pytest.raises(ValueError):
        run_demo(tmp_path / "d", fast=True, task="no-such-task", log=lambda _: None)
    assert not (tmp_path / "d").exists()


def test_a_damaged_stored_evaluation_record_is_made_again_not_a_crash(tmp_path):
    from dt_eva.experiments.demo import _stored_record

    path = tmp_path / "lora.json"
    assert _stored_record(path) is None  # none yet
    for text in ("{truncated", "[1, 2]", "[" * 100_000 + "]" * 100_000, "\xff"):
        path.write_text(text, encoding="latin-1")
        assert _stored_record(path) is None
    path.write_text('{"hash": "abc"}')
    assert _stored_record(path) == {"hash": "abc"}
