"""Issue 16 (reliability II): sweep, report and collection folders, symbolic links, FIFOs and damaged
tables, each defect reproduced with the commands of the issue on real files: the committed fixture
(tests/fixtures/legacy: dataset `data/tiny`, runs `pre`, `ft-lora`, `ft-eva`, `unfinished`) and real
sweeps of 3-step LoRA runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from dt_eva.cli import main
from dt_eva.data import collect_dataset
from dt_eva.experiments.sweep import plan_sweep, run_sweep
from dt_eva.reporting.run_report import build_report
from dt_eva.reporting.study.rows import read_study
from dt_eva.runs.lock import RunLock, RunLockedError
from dt_eva.runs.records import find_run_dirs

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
TINY = {"checkpoint": "runs/pre", "data.path": "data/tiny", "rank": 2, "eva.batch_size": 4, "optim.warmup_steps": 1,
        "method": "lora", "train": {"steps": 3, "batch_size": 8, "log_every": 1, "eval_episodes": 0, "device": "cpu"}}


def write_sweep(path: Path, seeds: list[int], out: str = "sweeps/t", **fixed) -> Path:
    sweep = {"kind": "finetune", "base": str(REPO / "configs/finetune/tiny.yaml"), "out": out,
             "fixed": {**TINY, **fixed}, "grid": {"seed": seeds}}
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A workspace whose sweep `base.yaml` (two 3-step LoRA runs, seeds 0 and 1) has finished."""
    ws = tmp_path_factory.mktemp("finished")
    shutil.copytree(LEGACY / "data", ws / "data")
    shutil.copytree(LEGACY / "runs" / "pre", ws / "runs" / "pre")
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        result = run_sweep(write_sweep(ws / "base.yaml", [0, 1]), progress=False)
    finally:
        os.chdir(cwd)
    assert result.failed == [] and result.ran == 2
    return ws


@pytest.fixture
def ws(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished workspace, as the current directory."""
    shutil.copytree(finished, tmp_path / "ws", symlinks=True)
    monkeypatch.chdir(tmp_path / "ws")
    return tmp_path / "ws"


@pytest.fixture
def legacy(tmp_path, monkeypatch) -> Path:
    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1, 2, 9, 10: the sweep's folder --------------------------------------------------------------
def test_1_sweep_into_a_users_folder_is_refused_untouched(ws, capsys):
    mine = ws / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("subject,score\nA,3\n")
    (mine / "sweep.yaml").write_text("my: notes\n")
    before = snapshot(mine)
    sweep = write_sweep(ws / "s.yaml", [0], out="mine")
    with pytest.raises(ValueError, match=r"mine is not marked as a dt-eva sweep folder and its sweep.yaml holds other"):
        run_sweep(sweep, progress=False)
    (mine / "sweep.yaml").unlink()  # a user's results.csv alone
    with pytest.raises(ValueError, match=r"mine is not empty and is not a dt-eva sweep folder .*it holds results.csv"):
        plan_sweep(sweep)
    assert main(["sweep", str(sweep), "--no-progress"]) == 1 and "not a dt-eva sweep folder" in capsys.readouterr().err
    assert snapshot(mine) == {"results.csv": before["results.csv"]}


def test_2_another_sweep_file_into_the_same_out_is_refused_and_an_edited_one_keeps_the_rows(ws):
    table = ws / "sweeps/t/results.csv"
    before = table.read_bytes()
    other = write_sweep(ws / "other.yaml", [5])
    with pytest.raises(ValueError, match=r"sweeps/t is the folder of another sweep \(.*base.yaml.*\), not of .*other.yaml"):
        run_sweep(other, progress=False)
    assert table.read_bytes() == before
    shutil.rmtree(ws / "sweeps/t/runs")  # a fresh clone: results.csv only
    write_sweep(ws / "base.yaml", [1])  # the same sweep file, edited: seed 0 left out of the grid
    assert [(r.name, r.status) for r in plan_sweep(ws / "base.yaml").runs] == [("seed=1", "done")]
    run_sweep(ws / "base.yaml", progress=False)
    got = rows(table)
    assert set(got) == {"seed=0", "seed=1"} and got["seed=0"] == rows_from(before)["seed=0"]  # kept as it was


def rows_from(data: bytes) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in csv.DictReader(data.decode().splitlines())}


def forget_run(ws: Path, name: str) -> None:
    """As if run `name` had never started: no folder, no row."""
    shutil.rmtree(ws / "sweeps/t/runs" / name)
    table = ws / "sweeps/t/results.csv"
    table.write_text("".join(line for line in table.read_text().splitlines(True) if not line.startswith(f"{name},")))


def test_9_a_second_sweep_on_a_locked_folder_is_refused_and_records_nothing(ws):
    table = ws / "sweeps/t/results.csv"
    before = table.read_bytes()
    forget_run(ws, "seed=1")
    with RunLock(ws / "sweeps/t", what="sweep folder"):  # another sweep holds the folder
        with pytest.raises(RunLockedError, match=r"sweep folder sweeps/t is in use by another dt-eva process .*"
                                                  r"give .*base.yaml another out:"):
            run_sweep(ws / "base.yaml", progress=False)
    assert "failed" not in table.read_text()
    assert not (ws / "sweeps/t/runs/seed=1").exists()


def test_10_changed_evaluation_settings_are_not_already_finished_in_a_fresh_clone(ws):
    shutil.rmtree(ws / "sweeps/t/runs")  # a fresh clone: results.csv only
    sweep = write_sweep(ws / "base.yaml", [0, 1], **{"train.eval_episodes": 2})
    with pytest.raises(ValueError, match=r"run seed=0: it finished \(its row in sweeps/t/results.csv\) measured with "
                                         r"other settings \(train.eval_episodes: 0 -> 2\)"):
        plan_sweep(sweep)
    write_sweep(ws / "base.yaml", [0, 1])
    assert {r.status for r in plan_sweep(ws / "base.yaml").runs} == {"done"}


# --- 20, smaller: damaged results.csv ---------------------------------------------------------------
def edit_table(path: Path, name: str, **values: str) -> None:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, table = list(reader.fieldnames or []), list(reader)
    for row in table:
        if row["name"] == name:
            row.update(values)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


def test_20_a_field_over_131072_characters_is_read(ws):
    edit_table(ws / "sweeps/t/results.csv", "seed=1", status="failed", error="x" * 200_000)
    assert [(r.name, r.status) for r in plan_sweep(ws / "base.yaml").runs] == [("seed=0", "done"), ("seed=1", "done")]


@pytest.mark.parametrize("column, value, message", [
    ("success_any", "7.5", r"line 2 \(seed=0\): column success_any is 7.5, outside \[0, 1\]"),
    ("seed", "1.5", r"line 2 \(seed=0\): column seed is '1.5', not an integer >= 0"),
    ("final_loss", "abc", r"line 2 \(seed=0\): column final_loss holds 'abc', not a number"),
])
def test_20_impossible_values_in_results_csv_are_refused_naming_file_and_row(ws, column, value, message):
    table = ws / "sweeps/t/results.csv"
    shutil.rmtree(ws / "sweeps/t/runs")
    edit_table(table, "seed=0", **{column: value})
    with pytest.raises(ValueError, match=rf"sweeps/t/results.csv, {message}; fix or delete that row"):
        plan_sweep(ws / "base.yaml")
    edit_table(table, "seed=0", task="hammer-v3")
    with pytest.raises(ValueError, match=rf"results.csv, {message}"):  # and the study report, which reads it too
        read_study(table)


def test_20_results_csv_without_a_name_column_is_refused(ws):
    table = ws / "sweeps/t/results.csv"
    table.write_text(table.read_text().replace("name,", "nom,", 1))
    with pytest.raises(ValueError, match=r"sweeps/t/results.csv has no `name` column"):
        plan_sweep(ws / "base.yaml")


@pytest.mark.parametrize("value", ["abc", [1]])
def test_20_a_damaged_metrics_value_in_a_finished_run_does_not_abort_the_sweep(ws, value):
    metrics = ws / "sweeps/t/runs/seed=0/metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    lines[-1].update({"grad_norm": value, "eval/seconds": value})
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (ws / "sweeps/t/results.csv").unlink()  # the rows are read from the run folders again
    result = run_sweep(ws / "base.yaml", progress=False)
    row = rows(result.results)["seed=0"]
    assert row["status"] == "done" and row[f"grad_norm@{lines[-1]['step']}"] == ""  # left out, not copied


def test_jobs_0_is_refused(ws, capsys):
    assert main(["sweep", "base.yaml", "--jobs", "0", "--no-progress"]) == 1
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_22_a_grid_over_the_limit_is_refused_with_its_size_before_expanding(ws, monkeypatch):
    sweep = ws / "big.yaml"
    sweep.write_text(yaml.safe_dump({"kind": "finetune", "base": str(REPO / "configs/finetune/tiny.yaml"),
                                     "out": "sweeps/big", "fixed": TINY,
                                     "grid": {"seed": list(range(1000)), "rank": list(range(1, 1001))}}))
    monkeypatch.setenv("DT_EVA_SWEEP_MAX_RUNS", "1")
    with pytest.raises(ValueError, match=r"the grid has 2 combinations .*DT_EVA_SWEEP_MAX_RUNS=N"):
        plan_sweep(ws / "base.yaml")
    monkeypatch.delenv("DT_EVA_SWEEP_MAX_RUNS")  # the default: refused at once, not after hours of expansion
    with pytest.raises(ValueError, match=r"big.yaml: the grid has 1,000,000 combinations .*more than the 5,000 runs"):
        plan_sweep(sweep)
    assert not (ws / "sweeps/big").exists()


# --- 5, 6, 7, 8, 19: links and FIFOs --------------------------------------------------------------
def test_5_a_lock_file_linked_to_a_users_file_is_refused_and_the_file_untouched(legacy, capsys):
    precious = legacy / "precious.txt"
    precious.write_text("my thesis\n")
    (legacy / "runs/ft-lora/.dt-eva.lock").symlink_to(precious)
    assert main(["finetune", "-c", "runs/ft-lora/config.yaml", "--force", "train.eval_episodes=0"]) == 1
    err = capsys.readouterr().err
    assert "runs/ft-lora/.dt-eva.lock is a symbolic link" in err and "Traceback" not in err
    assert precious.read_text() == "my thesis\n"


def test_19_a_lock_file_that_is_a_fifo_is_refused_without_blocking(legacy, capsys):
    os.mkfifo(legacy / "runs/ft-lora/.dt-eva.lock")
    assert main(["finetune", "-c", "runs/ft-lora/config.yaml", "--force", "train.eval_episodes=0"]) == 1
    err = capsys.readouterr().err
    assert "runs/ft-lora/.dt-eva.lock is not a regular file" in err and "Traceback" not in err


def test_6_a_dangling_metrics_link_is_refused_on_resume_and_nothing_is_created(legacy, capsys):
    outside = legacy / "outside.jsonl"
    (legacy / "runs/unfinished/metrics.jsonl").unlink()
    (legacy / "runs/unfinished/metrics.jsonl").symlink_to(outside)
    assert main(["pretrain", "-c", "runs/unfinished/config.yaml", "--resume"]) == 1
    assert "runs/unfinished/metrics.jsonl is a symbolic link" in capsys.readouterr().err
    assert not outside.exists()


def test_7_evals_linked_elsewhere_is_refused_before_any_episode(legacy, capsys):
    elsewhere = legacy / "elsewhere"
    elsewhere.mkdir()
    (legacy / "runs/ft-eva/evals").symlink_to(elsewhere, target_is_directory=True)
    before = (legacy / "runs/ft-eva/eval.json").read_bytes()
    assert main(["evaluate", "--run", "runs/ft-eva", "--episodes", "1", "--no-progress"]) == 1
    assert "runs/ft-eva/evals is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and (legacy / "runs/ft-eva/eval.json").read_bytes() == before


def test_8_a_linked_log_fails_that_run_only_and_its_target_is_untouched(ws):
    target = ws / "target.txt"
    target.write_text("keep\n")
    forget_run(ws, "seed=1")
    (ws / "sweeps/t/logs/seed=1.log").unlink()
    (ws / "sweeps/t/logs/seed=1.log").symlink_to(target)
    result = run_sweep(ws / "base.yaml", progress=False)
    [(name, error)] = result.failed
    assert name == "seed=1" and "sweeps/t/logs/seed=1.log is a symbolic link" in error
    assert target.read_text() == "keep\n" and rows(result.results)["seed=0"]["status"] == "done"


# --- 3, 11, smaller: reports ----------------------------------------------------------------------
def test_3_report_into_an_earlier_report_keeps_the_users_own_md_and_csv(legacy):
    out = legacy / "report"
    build_report(legacy / "runs", out, plots=False)
    (out / "my_notes.md").write_text("# my notes\n")
    (out / "my_data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"report holds files that are not a dt-eva report's.*my_data.csv, "
                                         r".*my_notes.md"):
        build_report(legacy / "runs", out, plots=False)
    assert (out / "my_notes.md").read_text() == "# my notes\n" and (out / "my_data.csv").read_text() == "a,b\n1,2\n"
    for name in ("my_notes.md", "my_data.csv"):
        (out / name).unlink()
    build_report(legacy / "runs", out, plots=False)  # its own files alone: replaced


def test_11_runs_sharing_a_name_get_one_heatmap_each_and_a_warning(legacy):
    for group in ("a", "b"):
        shutil.copytree(legacy / "runs/ft-eva", legacy / "root" / group / "ft-eva")
    report = build_report(legacy / "root", legacy / "out")
    heatmaps = sorted(p.name for p in (legacy / "out/heatmaps").iterdir())
    assert heatmaps == ["a_ft-eva.png", "b_ft-eva.png"]
    assert any(w.startswith("2 runs are named pre-hammer-eva-r2-rho2-s0 (") for w in report["warnings"])


def test_html_in_a_method_name_is_escaped_in_report_md(legacy):
    run = legacy / "runs/ft-eva"
    summary = json.loads((run / "summary.json").read_text())
    summary["method"] = "<img src=x onerror=alert(1)>"
    (run / "summary.json").write_text(json.dumps(summary))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["method"] = "<img src=x onerror=alert(1)>"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    text = (legacy / "out/report.md").read_text() if build_report(run, legacy / "out", plots=False) else ""
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_a_symlinked_run_folder_under_a_report_root_is_reported(legacy):
    root = legacy / "root"
    (root / "nested").mkdir(parents=True)
    (root / "eva").symlink_to(legacy / "runs/ft-eva", target_is_directory=True)  # a link to a run
    (root / "nested/more").symlink_to(legacy / "runs", target_is_directory=True)  # a link to a folder of runs
    (legacy / "runs/loop").symlink_to(root, target_is_directory=True)  # and a cycle back
    found = find_run_dirs(root)
    assert found == sorted((legacy / "runs" / n).resolve() for n in ("ft-eva", "ft-lora", "pre", "unfinished"))
    report = build_report(root, legacy / "out", plots=False)
    assert report["runs"] == [str((legacy / "runs/ft-eva").resolve())]


# --- 4: collect's clean-up ------------------------------------------------------------------------
def test_4_collect_into_a_users_folder_removes_only_its_own_temporaries(tmp_path):
    out = tmp_path / "home"
    (out / ".cache.tmpdir").mkdir(parents=True)
    (out / ".cache.tmpdir" / "x").write_text("cache")
    for name in (".bashrc.old", ".session.tmp"):
        (out / name).write_text(name)
    (out / ".reach-v3.abc123.tmpdir").mkdir()  # what a SIGKILLed collection of reach-v3 left
    (out / ".metadata.json.xyz_9.tmp").write_text("{")
    collect_dataset(out, "reach", episodes=1, noise_levels=[0.0], seed=0, workers=1, progress=False)
    assert (out / ".bashrc.old").read_text() == ".bashrc.old" and (out / ".session.tmp").read_text() == ".session.tmp"
    assert (out / ".cache.tmpdir" / "x").read_text() == "cache"
    assert not (out / ".reach-v3.abc123.tmpdir").exists() and not (out / ".metadata.json.xyz_9.tmp").exists()
    assert (out / "reach-v3" / "actions.npy").is_file()


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot nest (RecursionError)


def test_a_damaged_or_deeply_nested_sweep_marker_is_no_marker(ws):
    for i, text in enumerate((DEEP, "[1, 2]", "{not json")):
        out = ws / f"sweeps/marked{i}"
        out.mkdir(parents=True)
        (out / ".dt-eva-sweep.json").write_text(text)
        sweep = write_sweep(ws / f"m{i}.yaml", [0], out=f"sweeps/marked{i}")
        assert [r.status for r in plan_sweep(sweep).runs] == ["new"]  # only sweep entries: adopted
        (out / "notes.txt").write_text("mine")  # with a user's file beside it, the folder is refused
        with pytest.raises(ValueError, match="is not a dt-eva sweep folder"):
            plan_sweep(sweep)
        assert (out / ".dt-eva-sweep.json").read_text() == text  # untouched


def test_a_report_folder_with_a_damaged_manifest_is_not_written_into(legacy):
    out = legacy / "report"
    build_report(legacy / "runs", out, plots=False)
    for text in (DEEP, "[1, 2]"):
        (out / ".dt-eva-report.json").write_text(text)
        with pytest.raises(ValueError, match="not a dt-eva report.s"):
            build_report(legacy / "runs", out, plots=False)
        assert (out / ".dt-eva-report.json").read_text() == text  # nothing replaced


def test_a_measured_with_cell_that_is_not_a_json_object_is_named(ws):
    shutil.rmtree(ws / "sweeps/t/runs")  # a fresh clone: results.csv only
    table = ws / "sweeps/t/results.csv"
    data = [row for row in csv.DictReader(table.read_text().splitlines())]
    for cell in (DEEP, "[1, 2]", "{oops"):
        data[0]["measured_with"] = cell
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(data)
        with pytest.raises(ValueError, match=r"run seed=0: it finished .* measured with other settings "
                                             r"\(measured_with is not a JSON object: "):
            plan_sweep(ws / "base.yaml")
