"""Reproductions of issue 7, items 7-10: evaluations that replace each other, lost rollouts, device
errors, and reports broken by one bad file. Each test runs the failing command of the issue through
the real CLI (or the library) on copies of the committed dt-eva 0.1.0 runs (tests/fixtures/legacy),
with real Meta-World rollouts of 1-2 episodes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from dt_eva.cli import main

LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture()
def legacy(tmp_path, monkeypatch):
    """A copy of the legacy dataset and runs; also the current directory (the runs name their
    dataset as data/tiny and their base as runs/pre)."""
    root = tmp_path / "legacy"
    shutil.copytree(LEGACY, root)
    monkeypatch.chdir(root)
    return root


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def _root_obeys_file_modes():
    """Drop CAP_DAC_OVERRIDE (root's licence to write into any folder) from this thread for the block."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3, this thread
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this thread's capabilities")
    saved = data[0].effective
    data[0].effective &= ~(1 << 1)  # CAP_DAC_OVERRIDE
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: no folder is read-only for root")
    try:
        yield
    finally:
        data[0].effective = saved
        libc.capset(ctypes.byref(header), data)


@contextlib.contextmanager
def read_only(*folders: Path):
    """Make `folders` read-only for the code in the block (chmod 555; as root, also without the
    capability that lets root write through any mode)."""
    modes = [f.stat().st_mode for f in folders]
    for f in folders:
        f.chmod(0o555)
    try:
        with _root_obeys_file_modes() if os.geteuid() == 0 else contextlib.nullcontext():
            yield
    finally:
        for f, mode in zip(folders, modes):
            f.chmod(mode)


def evaluate(run: Path, *extra: str) -> int:
    return main(["evaluate", "--run", str(run), "--no-progress", *extra])


@pytest.fixture()
def rollouts(monkeypatch) -> list:
    """Records every call of `evaluate_policy` from `evaluate_run` (and still runs it)."""
    import dt_eva.experiments.evaluate as run_eval

    calls: list = []
    real = run_eval.evaluate_policy

    def counting(*args, **kwargs):
        calls.append(kwargs.get("episodes"))
        return real(*args, **kwargs)

    monkeypatch.setattr(run_eval, "evaluate_policy", counting)
    return calls


def table_line(markdown: str, label: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))


# --- item 7: a smaller evaluation never replaces a larger one; the report says what it used --------------


@pytest.mark.slow
def test_smoke_evaluation_keeps_the_larger_one_and_the_report_uses_it(legacy, capsys):
    run = legacy / "runs" / "ft-eva"
    old_eval = json.loads((run / "eval.json").read_text())  # dt-eva 0.1.0: 1 episode, seed 0
    assert evaluate(run, "--episodes", "2", "--seed", "1") == 0
    assert evaluate(run, "--episodes", "1", "--seed", "5") == 0  # the smoke test of the issue
    out = capsys.readouterr().out
    assert "eval.json keeps the larger evaluation (2 episodes per task" in out

    kept = json.loads((run / "eval.json").read_text())
    assert kept["episodes"] == 2 and kept["seed"] == 1
    from dt_eva.runs.evals import read_eval_records

    records = {r["key"].split("-")[0] + "-" + r["key"].split("-")[1]: r for r in read_eval_records(run)}
    assert set(records) == {"ep1-seed0", "ep2-seed1", "ep1-seed5"}
    assert records["ep1-seed0"]["result"] == old_eval  # the 0.1.0 evaluation was kept, not replaced
    assert sorted(p.name for p in (run / "evals").iterdir()) == sorted(f"{k}.json" for k in
                                                                        (r["key"] for r in records.values()))
    assert records["ep2-seed1"]["model"] == {"weights": "model.pt", "step": None}

    assert main(["report", str(legacy / "runs"), "--out", str(legacy / "report"), "--no-plots"]) == 0
    table = (legacy / "report" / "table6_success_any.md").read_text()
    assert "| Method | Config | Seeds | Episodes |" in table
    assert table_line(table, "EVA").startswith("| EVA | r=2, rho=2 | 1 | 2 |")
    assert "2 episodes per task" in table


@pytest.mark.slow
def test_report_names_the_runs_when_evaluation_sizes_differ(legacy, capsys):
    runs = legacy / "runs"
    assert evaluate(runs / "ft-lora", "--episodes", "2") == 0  # ft-eva keeps its 1-episode evaluation
    assert main(["report", str(runs), "--out", str(legacy / "report"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    table = (legacy / "report" / "table6_success_any.md").read_text()
    assert "Evaluation sizes differ in this table" in table
    assert re.search(r"2 episodes per task: ft-lora; 1 episode(s)? per task: ft-eva", table), table
    assert table_line(table, "LoRA").split("|")[4].strip() == "2"
    assert table_line(table, "EVA").split("|")[4].strip() == "1"
    assert "warning: the runs' evaluations differ in size (1, 2 episodes per task)" in printed


def test_legacy_run_reads_as_one_record_with_a_stable_key():
    from dt_eva.runs.evals import best_eval, eval_key, read_eval_records

    run = LEGACY / "runs" / "ft-eva"
    records = read_eval_records(run)  # eval.json + eval/hammer-v3.json of one evaluation: one record
    assert len(records) == 1
    result = json.loads((run / "eval.json").read_text())
    assert records[0]["result"] == result and best_eval(run)["result"] == result
    # the key as documented: episodes, seed, and 8 hex of a sha256 over the canonical JSON of the rest
    canonical = json.dumps({"tasks": ["hammer-v3"], "target_returns": {"hammer-v3": 1308.9364013671875},
                            "rtg_scale": 200.0, "reward_scale": 200.0}, sort_keys=True, separators=(",", ":"))
    expected = f"ep1-seed0-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"
    assert records[0]["key"] == expected
    assert eval_key({**records[0]["settings"], "episodes": 30}) == expected.replace("ep1-", "ep30-")
    assert best_eval(LEGACY / "runs" / "ft-lora") is None


def test_eval_json_holds_the_largest_evaluation_ties_go_to_the_newest(tmp_path):
    from dt_eva.runs.evals import best_eval, read_eval_records, write_eval_record

    def result(episodes: int, seed: int, success: float) -> dict:
        entry = {"success_any": success, "success_final": success, "return_mean": 1.0, "return_std": 0.0,
                 "episodes": episodes, "target_return": 10.0}
        return {"tasks": {"reach-v3": entry}, "mean": {"success_any": success}, "episodes": episodes,
                "seed": seed, "rtg_scale": 1.0, "reward_scale": 1.0}

    run = tmp_path / "run"
    run.mkdir()
    write_eval_record(run, result(20, 0, 0.5))
    write_eval_record(run, result(1, 0, 1.0))  # smaller: stored, eval.json unchanged
    assert json.loads((run / "eval.json").read_text()) == result(20, 0, 0.5)
    write_eval_record(run, result(20, 1, 0.7))  # as large and newer: it becomes eval.json
    assert json.loads((run / "eval.json").read_text()) == result(20, 1, 0.7)
    write_eval_record(run, result(20, 0, 0.6))  # the same settings again: replaces that record only
    assert [r["result"]["mean"]["success_any"] for r in read_eval_records(run)] == [1.0, 0.7, 0.6]
    assert best_eval(run)["result"] == result(20, 0, 0.6)
    assert json.loads((run / "eval.json").read_text()) == result(20, 0, 0.6)


# --- item 8: file-system errors are clear, before the work; finished rollouts are never lost -------------


def test_evaluate_into_a_read_only_run_fails_before_any_rollout(legacy, capsys, rollouts):
    run = legacy / "runs" / "ft-eva"
    with read_only(run):
        code = evaluate(run, "--episodes", "1")
    assert code == 1
    assert rollouts == []
    err = capsys.readouterr().err
    assert err.strip() == f"dt-eva evaluate: error: {run}: Permission denied"
    assert not (run / "evals").exists()


def test_evaluate_refuses_an_evals_path_that_is_not_a_folder(legacy, capsys, rollouts):
    run = legacy / "runs" / "ft-eva"
    (run / "evals").write_text("not a folder")
    assert evaluate(run, "--episodes", "1") == 1
    assert rollouts == []
    assert capsys.readouterr().err.strip() == f"dt-eva evaluate: error: {run / 'evals'}: Not a directory"


@pytest.mark.slow
def test_evaluate_saves_finished_rollouts_elsewhere_when_the_run_cannot_take_them(legacy, capsys, monkeypatch,
                                                                                  rollouts):
    run = legacy / "runs" / "ft-eva"
    real_replace = os.replace

    def disk_full_in_run(src, dst, *args, **kwargs):  # the disk fills while the rollouts run
        if Path(dst).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_in_run)
    assert evaluate(run, "--episodes", "2") == 1
    assert rollouts == [2]
    err = capsys.readouterr().err
    monkeypatch.setattr(os, "replace", real_replace)
    assert "no space left on device" in err.lower() and "finished rollouts are saved in" in err
    fallback = Path(re.search(r"saved in (\S+\.json)", err).group(1))
    saved = json.loads(fallback.read_text())
    assert saved["result"]["episodes"] == 2 and len(saved["result"]["tasks"]["hammer-v3"]["return_per_episode"]) == 2
    assert not [p for p in run.rglob(".*") if p.is_file()]  # no temporary files left in the run
    # the error says where the file belongs; put there, the run has its evaluation
    target = Path(re.search(r"move that file to (\S+\.json)", err).group(1))
    assert target.parent == run / "evals"
    from dt_eva.runs.evals import best_eval

    target.parent.mkdir(exist_ok=True)
    shutil.move(fallback, target)
    assert best_eval(run)["result"] == saved["result"]


def test_collect_into_a_read_only_folder_fails_before_any_rollout(legacy, capsys):
    with read_only(legacy):
        code = main(["collect", "--tasks", "reach", "--episodes", "1", "--noise", "0", "--out", str(legacy / "new-data"),
                     "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"dt-eva collect: error: {legacy / 'new-data'}: Permission denied"
    assert not (legacy / "new-data").exists()


def test_report_into_a_read_only_folder_is_a_clear_error(legacy, capsys):
    outside = legacy / "reports"
    outside.mkdir()
    with read_only(outside):
        code = main(["report", str(legacy / "runs"), "--out", str(outside / "r"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"dt-eva report: error: {outside / 'r'}: Permission denied"


# --- item 9: bad devices are clear errors before any work -------------------------------------------------


def test_evaluate_bad_device_is_a_clear_error(legacy, capsys, rollouts):
    run = legacy / "runs" / "ft-eva"
    assert evaluate(run, "--device", "banana") == 1
    assert "--device 'banana' is not a torch device; use cpu, cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert evaluate(run, "--device", "cuda") == 1
        assert "--device 'cuda' but CUDA is not available in this torch" in capsys.readouterr().err
    assert rollouts == [] and not (run / "evals").exists()


# --- item 10: one bad file never aborts the report; the report folder is written atomically ---------------


def test_bad_metrics_lines_are_skipped_with_a_warning_naming_file_and_line(legacy, capsys):
    metrics = legacy / "runs" / "ft-eva" / "metrics.jsonl"
    good = metrics.read_bytes()  # two records, steps 2 and 4
    metrics.write_bytes(good + b'{"step": 5, "loss": \xff\xfe}\n' + b"{not json\n" + b'{"step": "6", "loss": 0.1}\n'
                        + b'{"step": 8, "loss": 0.125}\n' + b'{"step": 9, "lo')  # last: torn by a kill

    out = legacy / "report"
    assert main(["report", str(legacy / "runs"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for n in (3, 4, 5, 7):
        assert f"warning: {metrics} line {n}: " in printed
    assert (out / "curves" / "finetune-hammer.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{metrics} line 3" in (out / "report.md").read_text()

    from dt_eva.utils.io import read_metrics

    problems: list[str] = []
    records = read_metrics(metrics, problems)
    assert [r["step"] for r in records] == [2, 4, 8]
    assert [p.split(": ")[0] for p in problems] == [f"{metrics} line {n}" for n in (3, 4, 5, 7)]
    assert "not UTF-8" in problems[0] and "not valid JSON" in problems[1] and "'6' is not an integer" in problems[2]


def test_corrupt_summary_is_reported_as_corrupt_not_missing(legacy, capsys):
    runs = legacy / "runs"
    (runs / "ft-eva" / "summary.json").write_bytes(b'{"kind": "finetune", "na')  # evaluated run
    (runs / "ft-lora" / "summary.json").write_bytes(b"\xff\x00")  # not evaluated
    assert main(["report", str(runs), "--out", str(legacy / "report"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {runs / 'ft-eva' / 'summary.json'} is corrupt" in printed
    assert f"{runs / 'ft-lora'}: {runs / 'ft-lora' / 'summary.json'} is corrupt" in printed
    lines = [line for line in printed.splitlines() if "ft-eva" in line or "ft-lora" in line]
    assert not any("no summary.json" in line or "did not finish" in line for line in lines), lines
    assert table_line((legacy / "report" / "table6_success_any.md").read_text(), "EVA")  # still reported


def test_interrupted_report_leaves_no_half_written_folder(legacy, monkeypatch):
    import dt_eva.reporting.run_report.report as run_report

    out = legacy / "report"

    def interrupted(*args, **kwargs):  # Ctrl-C after the tables were written, while plotting
        raise KeyboardInterrupt

    monkeypatch.setattr(run_report, "plot_learning_curves", interrupted)
    assert main(["report", str(legacy / "runs"), "--out", str(out)]) == 130
    assert not out.exists()
    assert not [p for p in legacy.iterdir() if p.name.startswith(".report")]  # no temporaries either

    monkeypatch.undo()
    assert main(["report", str(legacy / "runs"), "--out", str(out), "--no-plots"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(run_report, "plot_learning_curves", interrupted)
    assert main(["report", str(legacy / "runs"), "--out", str(out)]) == 130
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old report, whole


def test_json_objects_are_read_missing_or_named_as_corrupt(tmp_path):
    from dt_eva.utils.io import load_json_object

    assert load_json_object(tmp_path / "none.json") is None
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert load_json_object(tmp_path / "ok.json") == {"a": 1}
    for name, content, reason in (("cut.json", b'{"a": ', "Expecting value"), ("list.json", b"[1, 2]", "not a JSON object"),
                                  ("bytes.json", b"\xff\xfe{}", "codec can't decode")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} is corrupt \(.*{reason}"):
            load_json_object(tmp_path / name)
