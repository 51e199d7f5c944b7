"""dt_eva.reporting: table maths against hand computations, the files written, and the errors.

The run directories are written here by hand following the run-directory contract of
docs/architecture.md: they are the inputs of the report, not stand-ins for the code under test.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from dt_eva.cli import main
from dt_eva.reporting import build_report, mean_se

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, *, kind: str = "finetune", task: str | None = None, method: str | None = None,
              rank: int | None = None, rho: float | None = None, seed: int = 0, lr: float = 1e-4,
              evals: dict[str, tuple[float, float]] | None = None, checkpoint: str | None = None,
              eva_ranks: dict[str, int] | None = None, finished: bool = True, steps: int = 100,
              episodes: int = 10) -> Path:
    """A run directory as `dt-eva pretrain/finetune` + `dt-eva evaluate` leave it.

    `evals`: {task: (success_any, success_final)}; None = not evaluated.
    """
    run = root / name
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"package": "dt-eva", "kind": kind, "run_id": name, "versions": {},
                                               "command": [], "created": "now"}))
    config = {"name": name, "seed": seed, "optim": {"lr": lr}}
    if kind == "finetune":
        config.update(task=task, method=method, rank=rank, rho=rho, checkpoint=checkpoint)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = [{"step": s, "loss": 1.0 / (1 + s), "lr": lr} for s in range(0, steps + 1, 10)]
    metrics.append({"step": steps // 2, "eval/success_any": 0.25})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if finished:
        summary = {"kind": kind, "name": name, "steps": steps, "final_loss": 0.01, "seconds": 1.0}
        if kind == "finetune":
            summary.update(task=task, method=method, rank=rank, rho=rho, seed=seed, trainable_params=10)
        (run / "summary.json").write_text(json.dumps(summary))
    if evals is not None:
        tasks = {t: {"success_any": a, "success_final": f, "return_mean": 100.0 * a, "return_std": 1.0,
                     "episodes": episodes, "target_return": 500.0} for t, (a, f) in evals.items()}
        mean = {k: sum(v[k] for v in tasks.values()) / len(tasks) for k in ("success_any", "success_final")}
        (run / "eval.json").write_text(json.dumps({"tasks": tasks, "mean": mean, "episodes": episodes, "seed": 0}))
    if eva_ranks is not None:
        (run / "eva").mkdir()
        (run / "eva" / "result.json").write_text(json.dumps({"ranks": eva_ranks}))
    return run


# success_any per (method, rank, task) over seeds 0, 1, 2; success_final = success_any - 0.1 (floored at 0)
LORA4 = {"hammer-v3": [1.0, 0.9, 0.5], "push-wall-v3": [0.6, 0.6, 0.9]}
LORA8 = {"hammer-v3": [0.2, 0.3, 0.1], "push-wall-v3": [0.1, 0.2, 0.3]}
FFT = {"hammer-v3": [0.9, 0.8, 0.7], "push-wall-v3": [0.4, 0.6, 0.5]}


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_run(root, "pre", kind="pretrain", evals={"hammer-v3": (0.1, 0.0), "push-wall-v3": (0.0, 0.0)})
    # push-wall before hammer on disk: the table must still use CW10 order
    for method, rank, table in (("lora", 4, LORA4), ("lora", 8, LORA8), ("fft", None, FFT)):
        for task in ("push-wall-v3", "hammer-v3"):
            for seed, value in enumerate(table[task]):
                write_run(root, f"{task}-{method}{rank or ''}-s{seed}", task=task, method=method, rank=rank,
                          rho=2.0, seed=seed, checkpoint=str(root / "pre"),
                          evals={task: (value, max(0.0, round(value - 0.1, 6)))})
    # EVA: three seeds on hammer, one on push-wall -> a cell without a standard error
    for seed in range(3):
        write_run(root, f"hammer-eva-s{seed}", task="hammer", method="eva", rank=4, rho=2.0, seed=seed,
                  evals={"hammer-v3": (1.0, 1.0)}, eva_ranks={"blocks.0.attn.qkv": 6, "blocks.1.mlp.fc": 2})
    write_run(root, "push-wall-eva-s0", task="push-wall", method="eva", rank=4, rho=2.0, seed=0,
              evals={"push-wall-v3": (0.7, 0.7)})
    return root


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {f"{r['method']}|{r['config']}": r for r in csv.DictReader(f)}


def test_mean_se_matches_hand_computation():
    # mean 0.8; deviations .2, .1, -.3 -> sample var (.04 + .01 + .09) / 2 = .07; se = sqrt(.07 / 3)
    m = mean_se([1.0, 0.9, 0.5])
    assert m.mean == pytest.approx(0.8)
    assert m.se == pytest.approx(math.sqrt(0.07 / 3))
    assert m.n == 3 and m.format() == "0.80 ± 0.15"
    one = mean_se([0.7])
    assert one.se is None and one.format() == "0.70"
    with pytest.raises(ValueError):
        mean_se([])


def test_table6_cells_best_rank_and_average(runs_root: Path, tmp_path: Path):
    report = build_report(runs_root, tmp_path / "out", plots=False)
    rows = read_csv(tmp_path / "out" / "table6_success_any.csv")
    # best LoRA rank by average: r=4 (0.75) beats r=8 (0.2)
    assert set(rows) == {"pretrained|-", "fft|-", "lora|r=4", "eva|r=4, rho=2"}
    lora = rows["lora|r=4"]
    assert float(lora["hammer-v3_mean"]) == pytest.approx(0.8, abs=1e-6)
    assert float(lora["hammer-v3_se"]) == pytest.approx(math.sqrt(0.07 / 3), abs=1e-6)
    # push-wall .6 .6 .9: mean .7, var (.01 + .01 + .04) / 2 = .03, se = sqrt(.03 / 3) = .1
    assert float(lora["push-wall-v3_mean"]) == pytest.approx(0.7, abs=1e-6)
    assert float(lora["push-wall-v3_se"]) == pytest.approx(0.1, abs=1e-6)
    # Avg: mean of task means .75; per-seed averages .8, .75, .7 -> se = .05 / sqrt(3)
    assert float(lora["avg_mean"]) == pytest.approx(0.75, abs=1e-6)
    assert float(lora["avg_se"]) == pytest.approx(0.05 / math.sqrt(3), abs=1e-6)
    assert lora["avg_n_seeds"] == "3"
    # EVA push-wall has one seed: no standard error, and only one seed runs both tasks -> no Avg. se
    eva = rows["eva|r=4, rho=2"]
    assert eva["push-wall-v3_se"] == "" and eva["push-wall-v3_n"] == "1"
    assert float(eva["avg_mean"]) == pytest.approx(0.85, abs=1e-6) and eva["avg_se"] == ""

    md = report["tables"]["table6_success_any"]
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    assert header.index("hammer") < header.index("push-wall")  # CW10 order, not disk order
    body = [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "Method" not in line]
    assert body == ["Pre-trained (pre)", "FFT", "LoRA", "EVA"]  # paper order after the reference row
    lora_line = next(line for line in lines if line.startswith("| LoRA"))
    assert "0.80 ± 0.15" in lora_line and "0.70 ± 0.10" in lora_line and "0.75 ± 0.03" in lora_line
    assert "single seed" in md


def test_final_step_table_and_table19(runs_root: Path, tmp_path: Path):
    build_report(runs_root, tmp_path / "out", plots=False)
    final = read_csv(tmp_path / "out" / "table6_success_final.csv")
    # hammer LoRA r=4 final values .9 .8 .4: mean .7, var (.04 + .01 + .09) / 2 = .07
    assert float(final["lora|r=4"]["hammer-v3_mean"]) == pytest.approx(0.7, abs=1e-6)
    assert float(final["lora|r=4"]["hammer-v3_se"]) == pytest.approx(math.sqrt(0.07 / 3), abs=1e-6)
    per_rank = read_csv(tmp_path / "out" / "table19_success_any.csv")
    assert {"lora|r=4", "lora|r=8", "fft|-", "eva|r=4, rho=2"} == set(per_rank)
    r8 = per_rank["lora|r=8"]
    # .2 .3 .1: mean .2, var .01, se = .1 / sqrt(3)
    assert float(r8["hammer-v3_mean"]) == pytest.approx(0.2, abs=1e-6)
    assert float(r8["hammer-v3_se"]) == pytest.approx(0.1 / math.sqrt(3), abs=1e-6)
    assert float(r8["avg_mean"]) == pytest.approx(0.2, abs=1e-6)


def test_files_written(runs_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = build_report([runs_root], out)
    for name in ("table6_success_any", "table6_success_final", "table19_success_any", "table19_success_final",
                 "pretrain_success"):
        assert (out / f"{name}.md").read_text().startswith("### ")
        assert (out / f"{name}.csv").read_text().count("\n") >= 2
    pngs = [out / "curves" / "finetune-hammer.png", out / "curves" / "finetune-push-wall.png",
            out / "curves" / "pretrain.png", out / "heatmaps" / "hammer-eva-s0.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC, png
        assert str(png) in report["files"]
    text = (out / "report.md").read_text()
    assert "Table 6 layout" in text and "Table 19 layout" in text and "heatmaps/hammer-eva-s0.png" in text
    pre = (out / "pretrain_success.md").read_text()
    assert "| hammer | 0.10 | 0.00 |" in pre


def test_no_run_dirs_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories found"):
        build_report(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "missing", tmp_path / "out")


def test_run_without_eval_names_the_command(tmp_path: Path):
    run = write_run(tmp_path, "lone", task="hammer", method="lora", rank=4)
    with pytest.raises(ValueError, match=r"dt-eva evaluate --run .*lone"):
        build_report(run, tmp_path / "out")
    assert not (tmp_path / "out" / "report.md").exists()


def test_unevaluated_and_unfinished_runs_are_listed_and_skipped(runs_root: Path, tmp_path: Path):
    write_run(runs_root, "not-evaluated", task="hammer", method="dora", rank=4)
    write_run(runs_root, "interrupted", task="hammer", method="dora", rank=8, finished=False)
    report = build_report(runs_root, tmp_path / "out", plots=False)
    reasons = {Path(s["run"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"not-evaluated", "interrupted"}
    assert "dt-eva evaluate --run" in reasons["not-evaluated"]
    assert "did not finish" in reasons["interrupted"] and "--resume" in reasons["interrupted"]
    assert "DoRA" not in report["tables"]["table6_success_any"]
    assert "not-evaluated" in (tmp_path / "out" / "report.md").read_text()


def test_duplicate_run_keeps_newer_and_warns(tmp_path: Path):
    import os

    root = tmp_path / "runs"
    old = write_run(root, "a", task="hammer", method="lora", rank=4, evals={"hammer-v3": (0.1, 0.1)})
    write_run(root, "b", task="hammer", method="lora", rank=4, evals={"hammer-v3": (0.9, 0.9)})
    os.utime(old / "eval.json", (1, 1))
    report = build_report(root, tmp_path / "out", plots=False)
    assert any("share method" in w for w in report["warnings"])
    row = read_csv(tmp_path / "out" / "table6_success_any.csv")["lora|r=4"]
    assert float(row["hammer-v3_mean"]) == pytest.approx(0.9) and row["hammer-v3_n"] == "1"


def test_cli_report_prints_tables_and_files(runs_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli-out"
    assert main(["report", str(runs_root), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "Table 6 layout" in printed and "| LoRA | r=4 | 3 |" in printed
    assert str(out / "table6_success_any.csv") in printed
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no run directories found" in capsys.readouterr().err


def test_every_table_states_its_evaluation_size(runs_root: Path, tmp_path: Path):
    report = build_report(runs_root, tmp_path / "out", plots=False)
    for name, md in report["tables"].items():
        assert "Episodes: every cell comes from evaluations of 10 episodes per task" in md, name
    assert "| LoRA | r=4 | 3 | 10 |" in report["tables"]["table6_success_any"]
    assert read_csv(tmp_path / "out" / "table6_success_any.csv")["lora|r=4"]["episodes"] == "10"


def test_mixed_evaluation_sizes_are_named_in_the_footnote(runs_root: Path, tmp_path: Path):
    write_run(runs_root, "hammer-dora-s0", task="hammer", method="dora", rank=4, evals={"hammer-v3": (1.0, 1.0)},
              episodes=1)
    report = build_report(runs_root, tmp_path / "out", plots=False)
    table6 = report["tables"]["table6_success_any"]
    assert "| DoRA | r=4 | 1 | 1 |" in table6
    # the table's rows use 17 runs of 10 episodes (pre-trained 1, FFT 6, LoRA r=4 6, EVA 4): more than a
    # footnote should list, so they are counted; the odd one out is named
    assert "10 episodes per task: 17 runs; 1 episode per task: hammer-dora-s0." in table6, table6
    assert any("differ in size (1, 10 episodes per task)" in w for w in report["warnings"])


def test_out_folder_with_other_files_is_refused_untouched(runs_root: Path, tmp_path: Path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a dt-eva report"):
        build_report(runs_root, out, plots=False)
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"]


def test_an_older_report_is_replaced_as_a_whole(runs_root: Path, tmp_path: Path):
    out = tmp_path / "out"
    build_report(runs_root, out, plots=False)
    (out / "table7_stale.csv").write_text("from an older report\n")  # a table the older report wrote (its manifest)
    manifest = json.loads((out / ".dt-eva-report.json").read_text())
    (out / ".dt-eva-report.json").write_text(json.dumps({**manifest, "files": manifest["files"] + ["table7_stale.csv"]}))
    build_report(runs_root, out, plots=False)
    assert not (out / "table7_stale.csv").exists() and (out / "table6_success_any.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries left


def test_damaged_evaluation_files_are_named_and_the_others_used(tmp_path: Path):
    run = write_run(tmp_path / "runs", "a", task="hammer", method="lora", rank=4, evals={"hammer-v3": (0.5, 0.5)})
    (run / "evals").mkdir()
    (run / "evals" / "ep30-seed0-deadbeef.json").write_bytes(b"\xff{")
    report = build_report(tmp_path / "runs", tmp_path / "out", plots=False)
    assert any(f"{run / 'evals' / 'ep30-seed0-deadbeef.json'} is corrupt" in w for w in report["warnings"])
    assert float(read_csv(tmp_path / "out" / "table6_success_any.csv")["lora|r=4"]["hammer-v3_mean"]) == 0.5
