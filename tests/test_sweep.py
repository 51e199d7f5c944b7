"""`dt-eva sweep`: expansion of a sweep file, the checks before anything starts, and real sweeps of tiny
fine-tuning runs on the committed fixture (tests/fixtures/legacy: dataset `data/tiny`, base `runs/pre`):
results.csv, skipping finished runs, resuming a killed sweep, a failing run, submitit's LocalExecutor."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dt_eva.cli import main
from dt_eva.utils.torchfiles import load_checkpoint
from dt_eva.experiments.sweep import (core_slots, expand, load_configs, load_sweep, parse_minutes, plan_sweep,
                                      read_run_results, run_sweep)

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
# A tiny fine-tuning run on the fixture: 1 block of width 16, 2-4 updates of batch 8, no evaluation.
TINY = {"checkpoint": "runs/pre", "data.path": "data/tiny", "rank": 2, "eva.batch_size": 4, "optim.warmup_steps": 1,
        "train": {"steps": 3, "batch_size": 8, "log_every": 1, "eval_episodes": 0, "device": "cpu"}}


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    shutil.copytree(LEGACY / "data", tmp_path / "data")
    shutil.copytree(LEGACY / "runs" / "pre", tmp_path / "runs" / "pre")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_sweep(path: Path, **sections) -> Path:
    sweep = {"kind": "finetune", "base": str(REPO / "configs/finetune/tiny.yaml"), "out": "sweeps/t", "fixed": TINY}
    sweep.update(sections)
    path.write_text(yaml.safe_dump({k: v for k, v in sweep.items() if v is not None}, sort_keys=False))
    return path


def read_results(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


# --- expansion and checks (no training) -------------------------------------------------------------
def test_grid_expands_in_order_with_fixed_values_exclusions_and_conditional_overrides(ws):
    sweep = write_sweep(ws / "s.yaml", grid={"method": ["lora", "eva", "fft"], "seed": [0, 1], "rank": [2, 4]},
                        exclude=[{"method": "fft", "rank": 4}],
                        when=[{"when": {"method": "fft"}, "set": {"optim.lr": 1e-4, "train.steps": 2}},
                              {"when": {"method": ["eva", "fft"], "seed": 1}, "set": {"rho": 1.5}}])
    spec = load_sweep(sweep)
    runs = expand(spec)
    load_configs(spec, runs)
    got = [(r.name, r.config.method, r.config.seed, r.config.rank, r.config.optim.lr, r.config.train.steps,
            r.config.rho) for r in runs]
    want = [  # written out by hand: method x seed x rank, fft's rank 4 left out, fft's lr and steps replaced
        ("method=lora+seed=0+rank=2", "lora", 0, 2, 1e-3, 3, 2.0), ("method=lora+seed=0+rank=4", "lora", 0, 4, 1e-3, 3, 2.0),
        ("method=lora+seed=1+rank=2", "lora", 1, 2, 1e-3, 3, 2.0), ("method=lora+seed=1+rank=4", "lora", 1, 4, 1e-3, 3, 2.0),
        ("method=eva+seed=0+rank=2", "eva", 0, 2, 1e-3, 3, 2.0), ("method=eva+seed=0+rank=4", "eva", 0, 4, 1e-3, 3, 2.0),
        ("method=eva+seed=1+rank=2", "eva", 1, 2, 1e-3, 3, 1.5), ("method=eva+seed=1+rank=4", "eva", 1, 4, 1e-3, 3, 1.5),
        ("method=fft+seed=0+rank=2", "fft", 0, 2, 1e-4, 2, 2.0), ("method=fft+seed=1+rank=2", "fft", 1, 2, 1e-4, 2, 1.5),
    ]
    assert got == want
    for run in runs:  # the fixed values everywhere; each run in its own folder, named by its grid values
        assert (run.config.checkpoint, run.config.eva.batch_size, run.config.train.batch_size) == ("runs/pre", 4, 8)
        assert run.config.name == run.name and Path(run.config.run_dir) == Path("sweeps/t/runs") / run.name
        assert run.config.train.progress is False
    with pytest.raises(ValueError, match=r"when\[0\] sets grid key\(s\) \['seed'\]"):
        load_sweep(write_sweep(ws / "s2.yaml", grid={"seed": [0]}, when=[{"when": {"seed": 0}, "set": {"seed": 1}}]))


@pytest.mark.parametrize("sections, message", [
    ({"grid": {"method": ["lora"], "optim.lrr": [1e-3]}}, r"run method=lora\+lrr=0.001: unknown config key 'optim.lrr'"),
    ({"fixed": {**TINY, "train.stepz": 5}, "grid": {"seed": [0]}}, r"run seed=0: unknown config key 'train.stepz'"),
    ({"grid": {}}, "the grid is empty"),
    ({"grid": {"seed": []}}, "grid key seed must have a non-empty list"),
    ({"grid": {"seed": [0], "checkpoint": ["runs/nope"]}}, r"run seed=0\+checkpoint=runs-nope: pre-training run runs/nope "
                                                              "does not exist"),
    ({"grid": {"seed": [0], "data.path": ["data/none"]}}, "fine-tuning dataset data/none does not exist"),
    ({"grid": {"task": ["hammer", "push"]}}, "run task=push: .*push-v3"),
    ({"grid": {"method": ["lora", "lorax"]}}, "run method=lorax: unknown fine-tuning method 'lorax'"),
    ({"grid": {"data.path": ["data/tiny", "data-tiny"]}}, "give the same run name 'path=data-tiny'"),
    ({"grid": {"seed": [0]}, "when": [{"when": {"sede": 0}, "set": {"rank": 4}}]}, r"when\[0\].when tests \['sede'\]"),
    ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, "leaves out every combination"),
    ({"grid": {"seed": [0], "name": ["x"]}}, r"grid sets \['name'\], which the sweep sets"),
    ({"grid": {"seed": [0]}, "base": "configs/none.yaml"}, "base config configs/none.yaml does not exist"),
])
def test_bad_sweep_is_an_error_before_anything_starts(ws, capsys, sections, message):
    sweep = write_sweep(ws / "bad.yaml", **sections)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_sweep(sweep, progress=False)
    assert not (ws / "sweeps").exists()  # nothing written, nothing started
    assert main(["sweep", str(sweep), "--no-progress"]) == 1  # the CLI prints it without a traceback
    assert "dt-eva sweep: error:" in capsys.readouterr().err


def test_slurm_launcher_needs_a_time_limit_and_sbatch_before_anything_is_written(ws):
    sweep = write_sweep(ws / "s.yaml", grid={"seed": [0]})
    with pytest.raises(ValueError, match="--launcher slurm needs --time"):
        run_sweep(sweep, launcher="slurm", progress=False)
    if shutil.which("sbatch") is None:
        with pytest.raises(ValueError, match="sbatch is not on this machine's PATH"):
            run_sweep(sweep, launcher="slurm", slurm={"time": 60}, progress=False)
    assert not (ws / "sweeps").exists()


def test_a_pretraining_sweep_expands_and_checks_its_dataset(ws):
    sweep = ws / "p.yaml"
    sweep.write_text(yaml.safe_dump({"kind": "pretrain", "base": "runs/pre/config.yaml", "fixed": {"train.steps": 2},
                                     "grid": {"model.hidden_size": [16, 32]}}))
    plan = plan_sweep(sweep)
    assert [(r.name, r.status, r.config.model.hidden_size) for r in plan.runs] == [
        ("hidden_size=16", "new", 16), ("hidden_size=32", "new", 32)]
    assert plan.spec.out == Path("sweeps/p")  # default: sweeps/<file name>
    sweep.write_text(sweep.read_text().replace("train.steps: 2", "data.path: data/none"))
    with pytest.raises(FileNotFoundError, match="run hidden_size=16: .*data/none"):
        plan_sweep(sweep)


def test_a_finished_run_with_another_config_is_refused(ws):
    sweep = write_sweep(ws / "s.yaml", grid={"seed": [0]})
    spec = load_sweep(sweep)
    [run] = expand(spec)
    load_configs(spec, [run])
    assert main(["finetune", "-c", str(REPO / "configs/finetune/tiny.yaml"), *run.overrides,
                 "train.steps=2"]) == 0  # the sweep's run, but with 2 updates: finished
    with pytest.raises(ValueError, match=r"run seed=0: it finished in .* with another config \(train.steps: 2 -> 3\)"):
        run_sweep(sweep, progress=False)


def test_results_of_a_run_directory_are_read_from_its_files(tmp_path):
    run = shutil.copytree(LEGACY / "runs" / "ft-eva", tmp_path / "ft-eva")  # a real run with summary and eval.json
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.jsonl", "a") as f:  # what fine-tuning logs with held-out loss and evaluations
        for step, heldout, success in ((2, 0.30, 0.0), (4, 0.25, 1.0)):
            f.write(json.dumps({"step": step, "heldout/loss": heldout, "probe/seconds": 0.5}) + "\n")
            f.write(json.dumps({"step": step, "eval/success_any": success, "eval/success_final": success / 2,
                                "eval/seconds": 2.0}) + "\n")
    got = read_run_results(run)
    assert got["final_loss"] == summary["final_loss"] and got["seconds"] == summary["seconds"]
    assert json.loads(got["adapter_ranks"]) == summary["adapter_ranks"] and got["total_rank"] == 8
    assert got["eva_init_seconds"] == summary["eva_init_seconds"]
    assert (got["success_any"], got["success_final"]) == (0.0, 0.0)  # eval.json's mean
    assert got["heldout_loss"] == 0.25 and got["heldout_loss@2"] == 0.30
    assert (got["success_any@2"], got["success_any@4"]) == (0.0, 1.0)
    assert (got["success_final@2"], got["success_final@4"]) == (0.0, 0.5)
    assert got["eval_seconds"] == 5.0  # two evaluations and two probes
    assert got["precision"] == summary["precision"] == "fp32"  # what `precision: auto` resolved to
    logged = {r["step"]: r["grad_norm"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "grad_norm" in r}
    assert logged and all(got[f"grad_norm@{step}"] == value for step, value in logged.items())


def test_time_limits_and_core_slots():
    assert [parse_minutes(t) for t in ("90", "90:30", "1:30:00", "2-12", "2-00:00:01")] == [90, 91, 90, 3600, 2881]
    with pytest.raises(ValueError, match="--time"):
        parse_minutes("soon")
    assert core_slots(2, [0, 1, 2, 3]) == [(0, 1), (2, 3)]
    assert core_slots(3, [4, 5]) == [(4,), (5,), (4,)]  # more jobs than cores: shared round-robin


# --- real sweeps ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_runs_records_a_failure_and_skips_finished_runs(ws, capsys):
    sweep = write_sweep(ws / "s.yaml", grid={"method": ["lora", "eva"], "seed": [0, 1]},
                        exclude=[{"method": "eva", "seed": 1}],
                        when=[{"when": {"method": "lora", "seed": 1}, "set": {"optim.lr": 1e30}}])  # diverges
    assert main(["sweep", str(sweep), "--jobs", "2", "--no-progress"]) == 1  # one run failed
    results = read_results(ws / "sweeps/t/results.csv")
    assert list(results) == ["method=lora+seed=0", "method=lora+seed=1", "method=eva+seed=0"]
    bad = results["method=lora+seed=1"]
    assert bad["status"] == "failed" and "non-finite loss" in bad["error"] and bad["final_loss"] == ""
    for name, method in (("method=lora+seed=0", "lora"), ("method=eva+seed=0", "eva")):
        row, run = results[name], ws / "sweeps/t/runs" / name
        summary = json.loads((run / "summary.json").read_text())
        assert (row["status"], row["method"], row["rank"], row["steps"], row["error"]) == ("done", method, "2", "3", "")
        assert float(row["final_loss"]) == summary["final_loss"] and float(row["seconds"]) == summary["seconds"]
        assert json.loads(row["adapter_ranks"]) == summary["adapter_ranks"]
        assert (row["eva_init_seconds"] != "") == (method == "eva")
    cores = {(ws / "sweeps/t/logs" / f"{name}.log").read_text().split("on cores ")[1].split(" with")[0]
             for name in ("method=lora+seed=0", "method=lora+seed=1")}  # the first two ran side by side
    assert cores == {str(list(slot)) for slot in core_slots(2)}
    models = {p: p.stat().st_mtime_ns for p in (ws / "sweeps/t/runs").glob("*/model.pt")}
    assert len(models) == 2
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "2 done" in plan and "1 new" in plan and "ms per update, measured on 2 finished run(s)" in plan
    assert main(["sweep", str(sweep), "--jobs", "2", "--no-progress"]) == 1  # only the failing run runs again
    assert {p: p.stat().st_mtime_ns for p in models} == models
    assert read_results(ws / "sweeps/t/results.csv").keys() == results.keys()
    shutil.rmtree(ws / "sweeps/t/runs")  # a fresh clone: only the committed results.csv is left
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "2 done" in plan and "ms per update, measured on 2 finished run(s)" in plan


@pytest.mark.slow
def test_a_killed_sweep_resumes_its_interrupted_run(ws, capsys):
    fixed = {**TINY, "train": {**TINY["train"], "steps": 600, "log_every": 10, "ckpt_every": 10}}
    sweep = write_sweep(ws / "s.yaml", fixed=fixed, grid={"method": ["lora"]})
    run = ws / "sweeps/t/runs/method=lora"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "dt_eva.cli", "sweep", str(sweep), "--no-progress"], cwd=ws,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints/last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its fork server and the run: as at a session's end
        proc.wait()
    assert (run / "checkpoints/last.pt").is_file() and not (run / "summary.json").is_file()
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    assert "method=lora  resume" in capsys.readouterr().out
    assert main(["sweep", str(sweep), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 600 and 10 <= summary["resumed_from_step"] < 600
    assert json.loads((run / "meta.json").read_text())["resumed"]
    assert read_results(ws / "sweeps/t/results.csv")["method=lora"]["status"] == "done"


@pytest.mark.slow
def test_sigterm_to_the_sweep_alone_stops_its_runs_with_a_checkpoint(ws):
    # `kill <sweep>` (a background sweep ignores SIGINT): the run must not go on alone, it checkpoints and stops
    fixed = {**TINY, "train": {**TINY["train"], "steps": 100_000, "log_every": 10, "ckpt_every": 10}}
    sweep = write_sweep(ws / "s.yaml", fixed=fixed, grid={"method": ["lora"]})
    run = ws / "sweeps/t/runs/method=lora"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    err = open(ws / "sweep.err", "wb")  # a file, not a pipe: a process left behind would hold a pipe open
    proc = subprocess.Popen([sys.executable, "-m", "dt_eva.cli", "sweep", str(sweep), "--no-progress"], cwd=ws,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints/last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # the sweep's process only, not its runs
        assert proc.wait(timeout=90) == 130, (ws / "sweep.err").read_text()
        deadline = time.monotonic() + 30  # the fork server follows its parent out
        while _session_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _session_alive(proc.pid), "a process of the sweep outlived it"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        err.close()
    log = (ws / "sweeps/t/logs/method=lora.log").read_text()
    assert "TrainingInterrupted" in log  # it stopped through its checkpointing path, not killed
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert 0 < state["step"] < 100_000 and not (run / "summary.json").is_file()


def _session_alive(sid: int) -> bool:
    try:
        os.killpg(sid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep_with_evaluations(ws):
    fixed = {**TINY, "train": {**TINY["train"], "steps": 4, "eval_every": 2, "eval_episodes": 1}}
    sweep = write_sweep(ws / "s.yaml", fixed=fixed, grid={"method": ["lora"]})
    assert main(["sweep", str(sweep), "--launcher", "local", "--no-progress"]) == 0
    assert list((ws / "sweeps/t/submitit").glob("*_result.pkl"))  # it went through submitit
    row = read_results(ws / "sweeps/t/results.csv")["method=lora"]
    run = ws / "sweeps/t/runs/method=lora"
    curve = {r["step"]: r["eval/success_any"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "eval/success_any" in r}
    assert sorted(curve) == [2, 4]  # two real evaluations, one Meta-World episode each
    assert [float(row["success_any@2"]), float(row["success_any@4"])] == [curve[2], curve[4]]
    assert float(row["success_any"]) == json.loads((run / "eval.json").read_text())["mean"]["success_any"]


@pytest.mark.slow
def test_a_fresh_clone_with_only_results_csv_continues_where_the_sweep_stopped(ws):
    # A study commits results.csv, not its run directories: in a fresh clone the finished runs must not
    # run again, their rows must stay as they were, and a changed config must run again.
    sweep = write_sweep(ws / "s.yaml", grid={"method": ["lora"], "seed": [0, 1]})
    assert main(["sweep", str(sweep), "--no-progress"]) == 0
    before = read_results(ws / "sweeps/t/results.csv")
    assert all(row["status"] == "done" and row["config_hash"] for row in before.values())
    shutil.rmtree(ws / "sweeps/t/runs")
    assert main(["sweep", str(sweep), "--no-progress"]) == 0
    assert not (ws / "sweeps/t/runs").exists() or not any((ws / "sweeps/t/runs").iterdir())
    assert read_results(ws / "sweeps/t/results.csv") == before
    changed = write_sweep(ws / "s.yaml", grid={"method": ["lora"], "seed": [0, 1]},
                          fixed={**TINY, "train": {**TINY["train"], "steps": 4}})
    assert main(["sweep", str(changed), "--no-progress"]) == 0
    after = read_results(ws / "sweeps/t/results.csv")
    assert {row["steps"] for row in after.values()} == {"4"} and after.keys() == before.keys()
    assert all(after[n]["config_hash"] != before[n]["config_hash"] for n in after)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_expands_to_valid_configs(path):
    spec = load_sweep(path)
    runs = expand(spec)
    # configs through load_config (unknown keys or bad values fail here); every 20th of the paper grid's 870
    load_configs(spec, runs[:: max(1, len(runs) // 40)])
    assert runs and len({r.name for r in runs}) == len(runs)
    if path.name == "cw10-tiny-validation.yaml":  # the study's validation grid (docs/results.md)
        assert len(runs) == 2 * 4 + 7 * 2 * 3 and {r.config.task for r in runs} == {"push", "window-close"}
