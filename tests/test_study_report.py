"""`dt-eva report` on a sweep's results.csv: the study's tables, paired comparisons, curves and EVA
summaries. The report is a pure function of the table, so a hand-written results.csv is the reference;
the numbers are checked against direct computations. One slow test runs a real tiny sweep first."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dt_eva.cli import main
from dt_eva.reporting import build_study_report

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
COLUMNS = ["name", "status", "eva.adjust_alpha", "task", "method", "rank", "rho", "seed", "lr", "steps", "final_loss",
           "heldout_loss", "success_any", "success_final", "episodes", "success_any@2", "success_any@4",
           "heldout_loss@2", "heldout_loss@4", "grad_norm@1", "grad_norm@2", "total_rank", "adapter_ranks", "eva_init_seconds", "seconds", "precision",
           "error", "run_dir"]
# (method, task, seed) -> (success_any, success_final, heldout_loss); EVA has no hammer/seed 2 run
VALUES = {
    ("lora", "hammer", 0): (0.6, 0.4, 0.050), ("lora", "hammer", 1): (0.8, 0.2, 0.060),
    ("lora", "hammer", 2): (0.7, 0.5, 0.055), ("lora", "push", 0): (0.2, 0.1, 0.090),
    ("lora", "push", 1): (0.3, 0.0, 0.080), ("lora", "push", 2): (0.1, 0.1, 0.085),
    ("eva", "hammer", 0): (0.9, 0.6, 0.045), ("eva", "hammer", 1): (0.7, 0.3, 0.052),
    ("eva", "push", 0): (0.4, 0.2, 0.070), ("eva", "push", 1): (0.2, 0.1, 0.082), ("eva", "push", 2): (0.5, 0.3, 0.075),
}
EVA_RANKS = {0: {"blocks.0.attn.qkv": 4, "blocks.0.mlp.fc": 2}, 1: {"blocks.0.attn.qkv": 2, "blocks.0.mlp.fc": 4},
             2: {"blocks.0.attn.qkv": 6, "blocks.0.mlp.fc": 1}}


def row(method: str, task: str, seed: int, /, **changes) -> dict:
    any_, final, heldout = VALUES[(method, task, seed)]
    out = {c: "" for c in COLUMNS}
    out.update({"name": f"method={method}+task={task}+seed={seed}", "status": "done", "eva.adjust_alpha": "false",
                "task": task, "method": method, "rank": 2, "rho": 2.0, "seed": seed, "lr": 0.001, "steps": 4,
                "final_loss": 0.1, "heldout_loss": heldout, "success_any": any_, "success_final": final, "episodes": 50,
                "success_any@2": any_ / 2, "success_any@4": any_, "heldout_loss@2": 2 * heldout,
                "heldout_loss@4": heldout, "seconds": 40.0, "run_dir": f"runs/{method}-{task}-{seed}",
                "grad_norm@1": grad_norm(method, task, seed), "grad_norm@2": 1.0})
    if method == "eva":
        out.update({"adapter_ranks": json.dumps(EVA_RANKS[seed]), "total_rank": 6, "eva_init_seconds": 10.0})
    out.update(changes)
    return out


def grad_norm(method: str, task: str, seed: int) -> float:
    """EVA's first gradient norms are 5-6x LoRA's (the paper's figure-2 claim), varying over pairs."""
    base = 0.01 * (1 + 0.1 * seed + (0.2 if task == "push" else 0.0))
    return base * (5 + 0.5 * seed) if method == "eva" else base


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def results(tmp_path) -> Path:
    rows = [row(m, t, s) for (m, t, s) in VALUES]
    failed = {"name": "method=fft+task=hammer+seed=0", "method": "fft", "status": "failed",
              "error": "ValueError: non-finite loss 'nan' at step 3"}
    rows.append(row("lora", "hammer", 0, **failed))
    for seed in (0, 1):  # a sweep still going: runs not run yet
        rows.append(row("lora", "push", seed, name=f"method=fft+task=push+seed={seed}", method="fft", status="pending"))
    return write_csv(tmp_path / "results.csv", rows)


def test_failed_runs_are_listed_with_their_error_and_pending_runs_counted(results, tmp_path):
    report = build_study_report(results, tmp_path / "out", plots=False)["markdown"]
    assert ("- `method=fft+task=hammer+seed=0` (failed): ValueError: non-finite loss 'nan' at step 3" in report)
    assert "- 2 run(s) not run yet (pending), e.g. `method=fft+task=push+seed=0`" in report
    assert "(pending): no error recorded" not in report


def se(xs) -> float:
    return float(np.std(xs, ddof=1) / np.sqrt(len(xs)))


def test_table6_cells_are_means_and_standard_errors_over_seeds(results, tmp_path):
    build_study_report(results, tmp_path / "out", plots=False)
    table = {r["method"]: r for r in read_csv(tmp_path / "out/table6_success_any.csv")}
    assert list(table) == ["lora", "eva"]  # registry order; the failed FFT run makes no row
    lora_hammer = [0.6, 0.8, 0.7]
    assert float(table["lora"]["hammer-v3_mean"]) == pytest.approx(np.mean(lora_hammer), abs=1e-6)
    assert float(table["lora"]["hammer-v3_se"]) == pytest.approx(se(lora_hammer), abs=1e-6)
    assert float(table["eva"]["hammer-v3_se"]) == pytest.approx(se([0.9, 0.7]), abs=1e-6)
    assert table["eva"]["hammer-v3_n"] == "2" and table["eva"]["push-v3_n"] == "3"
    # Avg.: mean of the task means; its s.e. over the per-seed task averages of seeds that ran both tasks
    assert float(table["lora"]["avg_mean"]) == pytest.approx((0.7 + 0.2) / 2, abs=1e-6)
    assert float(table["lora"]["avg_se"]) == pytest.approx(se([0.4, 0.55, 0.4]), abs=1e-6)
    assert float(table["eva"]["avg_se"]) == pytest.approx(se([0.65, 0.45]), abs=1e-6)
    assert (table["lora"]["reference_avg"], table["eva"]["reference_avg"]) == ("0.86", "0.9")  # the paper's
    heldout = {r["method"]: r for r in read_csv(tmp_path / "out/table6_heldout_loss.csv")}
    assert float(heldout["lora"]["push-v3_mean"]) == pytest.approx(0.085, abs=1e-6)
    final = {r["method"]: r for r in read_csv(tmp_path / "out/table6_success_final.csv")}
    assert float(final["eva"]["push-v3_mean"]) == pytest.approx(0.2, abs=1e-6)
    assert not (tmp_path / "out/table19_success_any.csv").exists()  # one rank only
    report = (tmp_path / "out/report.md").read_text()
    assert "| LoRA | r=2 | 3 | 50 | 0.70 ± 0.06 | 0.20 ± 0.06 | 0.45 ± 0.05 | 0.86 |" in report


def test_paired_differences_and_bootstrap_match_numpy(results, tmp_path):
    build_study_report(results, tmp_path / "out", plots=False)
    got = {(r["a"], r["b"], r["metric"]): r for r in read_csv(tmp_path / "out/comparisons.csv")}
    assert set(got) == {("eva", "lora", m) for m in ("success_any", "success_final", "heldout_loss")}
    pairs = sorted((t, s) for (m, t, s) in VALUES if m == "eva")  # (task, seed) order, hammer/2 has no EVA
    for metric, i in (("success_any", 0), ("heldout_loss", 2)):
        diffs = np.array([VALUES[("eva", t, s)][i] - VALUES[("lora", t, s)][i] for t, s in pairs])
        rng = np.random.default_rng(0)
        means = diffs[rng.integers(0, len(diffs), size=(10_000, len(diffs)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        r = got[("eva", "lora", metric)]
        assert int(r["pairs"]) == 5 and r["pairs_only_b"] == "1" and r["pairs_only_a"] == "0"
        assert float(r["mean"]) == pytest.approx(diffs.mean(), rel=1e-5)
        assert (float(r["ci_low"]), float(r["ci_high"])) == pytest.approx((low, high), rel=1e-5)
        assert float(r["mdd"]) == pytest.approx(2.8 * se(diffs), rel=1e-5)
        assert r["resolved"] == str(low > 0 or high < 0)
    report = (tmp_path / "out/report.md").read_text()
    assert "EVA − LoRA, success at any step: 1 pair(s) left out, EVA missing: hammer/seed 2." in report
    assert "EVA − FFT: not computed, FFT has no finished run." in report  # its only run failed
    assert "EVA+DoRA − DoRA: " not in report  # neither ran (the protocol prose still names the comparison)
    assert "2.8 x the standard error of the paired mean" in report and "80 % power" in report


def test_failed_rows_and_mixed_episode_counts_are_reported(tmp_path):
    rows = [row(m, t, s) for (m, t, s) in VALUES]
    rows[0]["episodes"] = 10
    rows[1].update(status="failed", error="RuntimeError: killed", success_any="")
    for i, r in enumerate(rows):  # one run on a machine where `precision: auto` meant bf16
        r["precision"] = "bf16" if i == 3 else ("fp32" if i > 3 else "")
    out = tmp_path / "out"
    report = build_study_report(write_csv(tmp_path / "results.csv", rows), out, plots=False)
    assert report["excluded"] == [("method=lora+task=hammer+seed=1", "failed", "RuntimeError: killed")]
    text = (out / "report.md").read_text()
    assert "- `method=lora+task=hammer+seed=1` (failed): RuntimeError: killed" in text
    assert "evaluations differ in size (10 episode(s) per task: 1 run(s) (e.g. method=lora+task=hammer+seed=0); " \
           "50 episode(s) per task: 9 run(s)" in text
    assert "**Evaluation sizes differ in this table**" in text  # the table's footnote too
    assert (f"trained at different precisions (bf16: 1 run(s) (e.g. {rows[3]['name']}); fp32: {len(rows) - 4} run(s)"
            in text), text  # rows from before the precision column (empty) are not counted
    table = {r["method"]: r for r in read_csv(out / "table6_success_any.csv")}
    assert table["lora"]["hammer-v3_n"] == "2"  # the failed run is not averaged in


def test_ranks_table19_and_every_configuration(tmp_path):
    rows = [row(m, t, s) for (m, t, s) in VALUES]
    rows += [row(m, t, s, rank=4, name=f"r4-{m}-{t}-{s}", heldout_loss=0.2) for (m, t, s) in VALUES]
    rows += [row("eva", t, 0, **{"eva.adjust_alpha": "true", "name": f"alpha-{t}", "heldout_loss": 0.01})
             for t in ("hammer", "push")]
    out = tmp_path / "out"
    build_study_report(write_csv(tmp_path / "results.csv", rows), out, plots=False)
    table19 = [(r["method"], r["rank"], r["config"]) for r in read_csv(out / "table19_success_any.csv")]
    assert table19 == [("lora", "2", "r=2, eva.adjust_alpha=false"), ("lora", "4", "r=4, eva.adjust_alpha=false"),
                       ("eva", "2", "r=2, rho=2, eva.adjust_alpha=true"),
                       ("eva", "4", "r=4, rho=2, eva.adjust_alpha=false")]
    # Table 6: per method the configuration with the lowest held-out MSE (the protocol's rule), among those
    # that cover the most tasks
    table6 = {r["method"]: r["config"] for r in read_csv(out / "table6_success_any.csv")}
    assert table6 == {"lora": "r=2, eva.adjust_alpha=false", "eva": "r=2, rho=2, eva.adjust_alpha=true"}
    assert len(read_csv(out / "configs_success_any.csv")) == 5
    # the sweep varies a key besides the learning rate: every configuration gets its curve
    labels = {r["config"] for r in read_csv(out / "curves.csv")}
    assert labels == {"LoRA, r=2, eva.adjust_alpha=false", "EVA, r=2, rho=2, eva.adjust_alpha=false",
                      "EVA, r=2, rho=2, eva.adjust_alpha=true", "LoRA, r=4, eva.adjust_alpha=false",
                      "EVA, r=4, rho=2, eva.adjust_alpha=false"}


def test_differences_along_the_budget_and_the_gradient_norm_ratio(results, tmp_path):
    build_study_report(results, tmp_path / "out", plots=False)
    pairs = sorted((t, s) for (m, t, s) in VALUES if m == "eva")
    along = {(r["metric"], r["step"]): r for r in read_csv(tmp_path / "out/comparisons_along_budget.csv")}
    assert set(along) == {(m, s) for m in ("heldout_loss", "success_any") for s in ("2", "4")}
    diffs = np.array([2 * (VALUES[("eva", t, s)][2] - VALUES[("lora", t, s)][2]) for t, s in pairs])
    assert float(along[("heldout_loss", "2")]["mean"]) == pytest.approx(diffs.mean(), rel=1e-5)
    assert along[("heldout_loss", "4")]["mean"] == read_csv(tmp_path / "out/comparisons.csv")[2]["mean"]
    [ratio] = read_csv(tmp_path / "out/grad_norm.csv")
    logs = np.array([np.log(grad_norm("eva", t, s) / grad_norm("lora", t, s)) for t, s in pairs])
    rng = np.random.default_rng(0)
    low, high = np.percentile(logs[rng.integers(0, len(logs), size=(10_000, len(logs)))].mean(axis=1), [2.5, 97.5])
    assert (ratio["a"], ratio["b"], ratio["steps"], ratio["pairs"]) == ("eva", "lora", "1", "5")
    assert float(ratio["ratio"]) == pytest.approx(np.exp(logs.mean()), rel=1e-5)
    assert (float(ratio["ci_low"]), float(ratio["ci_high"])) == pytest.approx((np.exp(low), np.exp(high)), rel=1e-5)
    assert float(ratio["b_mean"]) == pytest.approx(
        np.mean([grad_norm("lora", t, s) for (m, t, s) in VALUES if m == "lora"]), rel=1e-5)
    report = (tmp_path / "out/report.md").read_text()
    assert "| EVA / LoRA | 1-1 | 5 |" in report and "figure-2" in report


def test_eva_ranks_init_time_and_curves(results, tmp_path):
    out = tmp_path / "out"
    report = build_study_report(results, out)
    ranks = {(r["layer"], r["module"]): r for r in read_csv(out / "eva_ranks.csv")}
    eva_rows = [(t, s) for (m, t, s) in VALUES if m == "eva"]
    qkv = [EVA_RANKS[s]["blocks.0.attn.qkv"] for _, s in eva_rows]
    assert float(ranks[("0", "attn.qkv")]["mean_rank"]) == pytest.approx(np.mean(qkv))
    assert float(ranks[("0", "attn.qkv")]["min_task_mean"]) == pytest.approx(3.0)  # hammer: (4 + 2) / 2
    assert float(ranks[("0", "attn.qkv")]["max_task_mean"]) == pytest.approx(4.0)  # push: (4 + 2 + 6) / 3
    [init] = read_csv(out / "eva_init_time.csv")
    assert float(init["share_mean"]) == pytest.approx(10 / 50) and init["runs"] == "5"
    curves = {(r["metric"], r["config"], r["step"]): r for r in read_csv(out / "curves.csv")}
    lora_any = [v[0] for (m, _, _), v in VALUES.items() if m == "lora"]
    assert float(curves[("success_any", "LoRA", "2")]["mean"]) == pytest.approx(np.mean(lora_any) / 2)
    assert float(curves[("heldout_loss", "EVA", "4")]["se"]) == pytest.approx(
        se([v[2] for (m, _, _), v in VALUES.items() if m == "eva"]), rel=1e-5)
    for png in ("curves/success_any.png", "curves/heldout_loss.png", "curves/difference_heldout_loss.png",
                "curves/grad_norm.png", "heatmaps/eva-mean-ranks.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and str(out / png) in report["files"]


def test_report_is_written_atomically_and_bad_input_is_refused(results, tmp_path, monkeypatch):
    out = tmp_path / "out"
    build_study_report(results, out, plots=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dt_eva.reporting.study.report.plot_curves", broken)
    with pytest.raises(OSError, match="disk full"):  # fails half-way through writing the new report
        build_study_report(results, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a dt-eva report"):
        build_study_report(results, tmp_path / "mine")
    assert (tmp_path / "mine/notes.txt").read_text() == "keep"
    pretrain = tmp_path / "p.csv"
    pretrain.write_text("name,status,seed,lr,steps,batch_size,final_loss\nseed=0,done,0,0.001,2,8,0.5\n")
    with pytest.raises(ValueError, match="looks like a pre-training sweep"):
        build_study_report(pretrain, tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="no results.csv"):
        build_study_report(tmp_path / "nowhere", tmp_path / "o3")
    bad = write_csv(tmp_path / "bad.csv", [row("lora", "push", 0, success_any="high")])
    with pytest.raises(ValueError, match=r"line 2 .*column success_any holds 'high'"):
        build_study_report(bad, tmp_path / "o4")


def test_cli_reports_a_sweep_folder(results, tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "Table 6 layout: success at any step" in printed and "Paired comparisons" in printed
    assert "method=fft+task=hammer+seed=0 (failed): ValueError: non-finite loss" in printed
    assert (tmp_path / "rep/report.md").read_text().startswith("# dt-eva report")
    script = ("import sys; from dt_eva.cli import main; "
              f"assert main(['report', {str(results)!r}, '--out', {str(tmp_path / 'rep2')!r}]) == 0; "
              "assert 'torch' not in sys.modules, 'the study report imported torch'")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)


# --- a real sweep, then its report ------------------------------------------------------------------
@pytest.mark.slow
def test_report_of_a_real_tiny_sweep(tmp_path, monkeypatch):
    shutil.copytree(LEGACY / "data", tmp_path / "data")
    shutil.copytree(LEGACY / "runs" / "pre", tmp_path / "runs" / "pre")
    monkeypatch.chdir(tmp_path)
    fixed = {"checkpoint": "runs/pre", "data.path": "data/tiny", "heldout_path": "data/tiny", "rank": 2,
             "eva.batch_size": 4, "optim.warmup_steps": 1,
             "train": {"steps": 4, "batch_size": 8, "log_every": 1, "eval_every": 2, "eval_episodes": 1,
                       "device": "cpu"}}
    sweep = {"kind": "finetune", "base": str(REPO / "configs/finetune/tiny.yaml"), "out": "sweeps/t", "fixed": fixed,
             "grid": {"method": ["lora", "eva"], "task": ["hammer"], "seed": [0, 1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    assert main(["sweep", "s.yaml", "--jobs", "2", "--no-progress"]) == 0
    rows = read_csv(tmp_path / "sweeps/t/results.csv")
    assert [r["status"] for r in rows] == ["done"] * 4 and all(r["heldout_loss@4"] for r in rows)
    assert main(["report", "sweeps/t", "--out", "rep"]) == 0
    table = {r["method"]: r for r in read_csv(tmp_path / "rep/table6_heldout_loss.csv")}
    for method in ("lora", "eva"):
        values = [float(r["heldout_loss"]) for r in rows if r["method"] == method]
        assert float(table[method]["hammer-v3_mean"]) == pytest.approx(np.mean(values), rel=1e-5)
    [diff] = [r for r in read_csv(tmp_path / "rep/comparisons.csv") if (r["a"], r["b"], r["metric"]) ==
              ("eva", "lora", "heldout_loss")]
    assert diff["pairs"] == "2" and diff["resolved"] == "False"  # two pairs: too few to judge
    assert {p.name for p in (tmp_path / "rep/curves").iterdir()} == {
        "success_any.png", "success_final.png", "heldout_loss.png", "grad_norm.png", "difference_heldout_loss.png",
        "difference_success_any.png"}
    assert (tmp_path / "rep/heatmaps/eva-mean-ranks.png").is_file()


def test_task_level_bootstrap_resamples_tasks_then_seeds(results, tmp_path):
    """Checked against a plain loop that draws the tasks, then each drawn task's seeds, with the documented
    calls of numpy's generator."""
    build_study_report(results, tmp_path / "out", plots=False)
    got = {(r["metric"]): r for r in read_csv(tmp_path / "out/comparisons.csv")}
    pairs = sorted((t, s) for (m, t, s) in VALUES if m == "eva")
    for metric, i in (("success_any", 0), ("heldout_loss", 2)):
        groups = [np.array([VALUES[("eva", t, s)][i] - VALUES[("lora", t, s)][i] for tt, s in pairs if tt == t])
                  for t in sorted({t for t, _ in pairs})]  # hammer: 2 seeds, push: 3
        rng = np.random.default_rng(0)
        tasks = rng.integers(0, len(groups), size=(10_000, len(groups)))
        widest = max(len(g) for g in groups)
        drawn: list[list[float]] = [[] for _ in range(10_000)]
        for j in range(len(groups)):
            u = rng.random((10_000, widest))
            for r in range(10_000):
                group = groups[tasks[r, j]]
                drawn[r] += [group[int(np.floor(u[r, k] * len(group)))] for k in range(len(group))]
        low, high = np.percentile([np.mean(d) for d in drawn], [2.5, 97.5])
        row = got[metric]
        assert (float(row["task_ci_low"]), float(row["task_ci_high"])) == pytest.approx((low, high), rel=1e-5)
        assert row["task_resolved"] == str(row["resolved"] == "True" and (low > 0 or high < 0))


def test_ordering_against_the_paper_matches_scipy_and_a_plain_bootstrap_loop(tmp_path):
    from scipy.stats import spearmanr

    from dt_eva.reporting.common.paper import PAPER_TABLE6_AVG
    from dt_eva.reporting.study.ordering import ordering_markdown, ordering_vs_paper
    from dt_eva.reporting.study.rows import read_study
    from dt_eva.reporting.study.tables import study_tables

    methods, tasks = ["fft", "lora", "eva", "dora"], ["hammer", "push", "push-wall", "faucet-close", "stick-pull"]
    rng = np.random.default_rng(3)
    value = {(m, t, s): round(float(rng.random()), 2) for m in methods for t in tasks for s in (0, 1, 2)}
    del value[("dora", "push", 2)]  # push: only seeds 0 and 1 are common to every method
    rows = [row("lora", "hammer", 0, name=f"{m}-{t}-{s}", method=m, task=t, seed=s, success_any=v, heldout_loss=0.1)
            for (m, t, s), v in value.items()]
    data = read_study(write_csv(tmp_path / "results.csv", rows))
    _, chosen = study_tables(data.rows)
    got = ordering_vs_paper(data.rows, chosen, "success_any", resamples=2_000)

    seeds = {t: [0, 1] if t == "push" else [0, 1, 2] for t in sorted(tasks)}
    ours = [np.mean([np.mean([value[(m, t, s)] for s in seeds[t]]) for t in seeds]) for m in got.methods]
    paper = [PAPER_TABLE6_AVG[m] for m in got.methods]
    assert got.methods == methods and got.tasks == sorted(f"{t}-v3" for t in tasks)
    assert got.ours == pytest.approx(ours) and got.rho == pytest.approx(spearmanr(ours, paper).statistic)

    draw = np.random.default_rng(0)  # tasks, then each drawn task's seeds, with the same generator calls
    order = list(seeds)
    picks = draw.integers(0, len(order), size=(2_000, len(order)))
    sums = np.zeros((2_000, len(methods)))
    for j in range(len(order)):
        u = draw.random((2_000, 3))
        for r in range(2_000):
            t = order[picks[r, j]]
            chosen_seeds = [seeds[t][int(np.floor(u[r, k] * len(seeds[t])))] for k in range(len(seeds[t]))]
            sums[r] += [np.mean([value[(m, t, s)] for s in chosen_seeds]) for m in methods]
    rhos = [spearmanr(s / len(order), paper).statistic for s in sums]
    rhos = [r for r in rhos if not np.isnan(r)]
    assert got.interval == pytest.approx(tuple(np.percentile(rhos, [2.5, 97.5])))
    text = ordering_markdown(got)
    assert f"**{got.rho:+.2f}**" in text and "Paper rank" in text

    # fewer than five tasks: the correlation, but no interval
    few = [r for r in data.rows if r.task != "stick-pull-v3"]
    assert "(no interval: 4 task(s), fewer than 5)" in ordering_markdown(ordering_vs_paper(few, chosen))


def write_episodes(folder: Path, steps: dict[str, list[int | None]]) -> None:
    """episodes.csv.gz beside results.csv: run name -> first success step per episode (None: never)."""
    import gzip

    lines = ["name,task,episode,success_any,success_final,return,first_success_step"]
    for name, firsts in steps.items():
        lines += [f"{name},hammer-v3,{j},{0.0 if s is None else 1.0},0.0,1.0,{'' if s is None else s}"
                  for j, s in enumerate(firsts)]
    (folder / "episodes.csv.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def test_time_to_first_success_is_compared_from_the_episode_records(results, tmp_path):
    # no episodes.csv.gz beside results.csv: no such comparison, and no note about it
    build_study_report(results, tmp_path / "before", plots=False)
    assert "first_success_step" not in (tmp_path / "before/comparisons.csv").read_text()
    assert "Time to first success" not in (tmp_path / "before/report.md").read_text()
    pairs = sorted((t, s) for (m, t, s) in VALUES if m == "eva")
    firsts = {}
    for i, (task, seed) in enumerate(pairs):
        firsts[f"method=lora+task={task}+seed={seed}"] = [40 + i, None, 60 + 2 * i]  # mean over the two that succeed
        firsts[f"method=eva+task={task}+seed={seed}"] = [30 + i, 50, None, "not a number"]
    firsts["method=eva+task=push+seed=2"] = [None, None]  # never succeeded: its pair is left out, and said why
    write_episodes(results.parent, firsts)
    build_study_report(results, tmp_path / "out", plots=False)
    got = {r["metric"]: r for r in read_csv(tmp_path / "out/comparisons.csv")}["first_success_step"]
    diffs = np.array([((30 + i + 50) / 2) - ((40 + i + 60 + 2 * i) / 2) for i, _ in enumerate(pairs)][:-1])
    assert int(got["pairs"]) == len(diffs) == 4 and float(got["mean"]) == pytest.approx(diffs.mean(), rel=1e-5)
    report = (tmp_path / "out/report.md").read_text()
    assert "time to first success (env steps): 1 pair(s) left out, EVA has no successful episode: push/seed 2" in report
    assert "Time to first success: a run's mean first success step" in report


def test_adapter_ranks_nested_too_deeply_are_a_clear_error(tmp_path):
    rows = [row(m, t, s) for (m, t, s) in VALUES]
    rows[-1]["adapter_ranks"] = "[" * 100_000 + "]" * 100_000  # valid JSON, too deep for Python's parser
    with pytest.raises(ValueError, match="adapter_ranks is not a JSON object of module -> rank"):
        build_study_report(write_csv(tmp_path / "results.csv", rows), tmp_path / "out", plots=False)


def test_a_damaged_episode_file_is_a_warning_and_unrecorded_pairs_are_said(results, tmp_path):
    (results.parent / "episodes.csv.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(40)))  # gzip header, bad body
    out = build_study_report(results, tmp_path / "out", plots=False)
    report = (tmp_path / "out/report.md").read_text()
    assert "episodes.csv.gz is damaged" in report and "time to first success of its runs is left out" in report
    assert "first_success_step" not in (tmp_path / "out/comparisons.csv").read_text() and out["markdown"]
    # episodes of the hammer runs only (push's runs have none): push's pairs are not compared, and said so
    write_episodes(results.parent, {f"method={m}+task=hammer+seed={s}": [10 + s, None]
                                    for (m, t, s) in VALUES if t == "hammer"})
    build_study_report(results, tmp_path / "out2", plots=False)
    got = {r["metric"]: r for r in read_csv(tmp_path / "out2/comparisons.csv")}["first_success_step"]
    assert got["pairs"] == "2" and float(got["mean"]) == 0.0  # hammer seeds 0 and 1; EVA has no hammer/seed 2
    assert "EVA − LoRA, time to first success (env steps): 3 pair(s) not compared, their episodes are not in an " \
           "episodes.csv.gz." in (tmp_path / "out2/report.md").read_text()
