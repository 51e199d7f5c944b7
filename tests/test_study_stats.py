"""The study II statistics of `dt-eva report` (docs/results.md, "Tests and intervals"): the sign-flip
permutation test against a brute-force enumeration, Holm against a hand computation, the seeds-within-tasks
interval against a direct numpy loop, the protocol's verdicts, a study run in phases pooled from its
folders, the data-quality counts (runs and pairs that crossed machines, mixed precisions) and bad options."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dt_eva.cli import main
from dt_eva.reporting import build_study_report
from dt_eva.reporting.study.stats import holm, sign_flip_test
from dt_eva.runs.results import TAIL

BASE = ["name", "status", "task", "method", "rank", "rho", "seed", "lr", "steps", "final_loss", "heldout_loss",
        "success_any", "success_final", "episodes", "heldout_loss@500", "heldout_loss@1000"]
COLUMNS = BASE + list(TAIL)
STUDY_I_COLUMNS = [c for c in COLUMNS if c not in ("eval_precision", "cpu")]  # tables written before them
TASKS = ("hammer", "push-wall", "faucet-close")
SEEDS = (3, 4, 5, 6)
CELLS = [(t, s) for t in TASKS for s in SEEDS]
CPU = "AMD EPYC (avx2)"
# per (task, seed) cell, in CELLS order: EVA - LoRA helps clearly, EVA+DoRA - DoRA is within +-0.02,
# EVA - FFT is wide and centred near 0
EVA_LORA = [0.21, 0.19, 0.22, 0.20, 0.18, 0.21, 0.20, 0.19, 0.22, 0.20, 0.21, 0.19]
EVA_DORA = [0.01, -0.01, 0.00, 0.02, -0.02, 0.01, 0.00, -0.01, 0.01, 0.00, -0.01, 0.01]
EVA_FFT = [0.30, -0.30, 0.25, -0.20, 0.10, -0.15, 0.30, -0.30, 0.20, 0.05, -0.25, 0.10]


def success(method: str, i: int) -> float:
    task, seed = CELLS[i]
    lora = 0.1 + 0.1 * TASKS.index(task) + 0.02 * seed  # every method within [0, 1]
    dora = lora + 0.05
    return round({"lora": lora, "eva": lora + EVA_LORA[i], "dora": dora, "eva_dora": dora + EVA_DORA[i],
                  "fft": lora + EVA_LORA[i] - EVA_FFT[i]}[method], 2)


def record(method: str, task: str, seed: int, **changes) -> dict:
    any_ = success(method, CELLS.index((task, seed))) if (task, seed) in CELLS else 0.5
    out = {c: "" for c in COLUMNS}
    out.update({"name": f"task={task}+seed={seed}+method={method}", "status": "done", "task": task,
                "method": method, "rank": 8, "rho": 2.0, "seed": seed, "lr": 1e-4 if method == "fft" else 4e-3,
                "steps": 1000, "final_loss": 0.1, "heldout_loss": 0.05 - any_ / 100, "success_any": any_,
                "success_final": round(any_ / 2, 3), "episodes": 100, "heldout_loss@500": 0.06 - any_ / 100,
                "heldout_loss@1000": 0.05 - any_ / 100, "precision": "fp32", "eval_precision": "fp32", "cpu": CPU})
    out.update(changes)
    return out


def write(folder: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return folder


def phase(folder: Path, methods: tuple[str, ...], changes: dict | None = None) -> Path:
    """One phase's sweep folder: every cell, method innermost; `changes[(task, seed, method)]` edits a row."""
    changes = changes or {}
    return write(folder, [record(m, t, s, **changes.get((t, s, m), {})) for t, s in CELLS for m in methods])


def study(root: Path, changes: dict | None = None) -> Path:
    """Study II's layout: three phase folders and the learning-rate validation beside them."""
    phase(root / "main-lora-eva", ("lora", "eva"), changes)
    phase(root / "main-dora", ("dora", "eva_dora"), changes)
    phase(root / "main-fft", ("fft",), changes)
    # the validation: another design (other task and seed) at the same rates; a parent folder must not pool it
    write(root / "validation", [record(m, "push", 100) for m in ("lora", "eva", "fft")])
    return root


def read_rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(path, newline="") as f:
        return {(r["a"], r["b"], r["metric"]): r for r in csv.DictReader(f)}


def observed(a: str, b: str, cells=CELLS) -> np.ndarray:
    """a - b per cell, from the values as written to results.csv."""
    return np.array([success(a, CELLS.index(c)) - success(b, CELLS.index(c)) for c in cells])


def brute_force_p(diffs: np.ndarray) -> float:
    """Two-sided sign-flip p by enumerating every sign pattern (scipy's definition, its tie tolerance)."""
    n = len(diffs)
    signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    null, obs = signs @ diffs / n, diffs.mean()
    tol = max(abs(obs), 1.0) * 1e-14 * 100
    return min(1.0, 2 * min(np.mean(null <= obs + tol), np.mean(null >= obs - tol)))


def test_sign_flip_p_equals_an_enumeration_of_every_sign_pattern():
    rng = np.random.default_rng(3)
    for n in (6, 18):  # 2^18 > 100,000: the protocol still wants it exact (up to 2^20 patterns)
        diffs = np.round(rng.normal(0.05, 0.1, n), 2)
        p, exact = sign_flip_test(diffs)
        assert exact and p == pytest.approx(brute_force_p(diffs), abs=1e-12)
    p, exact = sign_flip_test(np.round(rng.normal(0.05, 0.1, 21), 2))  # 2^21 patterns: Monte Carlo
    assert not exact and 0 < p <= 1


def test_holm_equals_a_hand_computation():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04, raised to 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.02]) == pytest.approx([0.5, 0.04])
    assert holm([0.6, 0.9, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1


def test_report_tests_holm_and_verdicts_follow_the_protocol(tmp_path):
    report = build_study_report([study(tmp_path / "s")], tmp_path / "out", plots=False)
    got = read_rows(tmp_path / "out/tests.csv")
    comparisons = (("eva", "lora", EVA_LORA), ("eva_dora", "dora", EVA_DORA), ("eva", "fft", EVA_FFT))
    ps = []
    for a, b, _ in comparisons:
        r, diffs = got[(a, b, "success_any")], observed(a, b)
        assert int(r["pairs"]) == 12 and float(r["mean"]) == pytest.approx(diffs.mean(), abs=1e-6)
        assert r["permutation_exact"] == "True"
        assert float(r["permutation_p"]) == pytest.approx(brute_force_p(diffs), rel=1e-5)
        assert float(r["wilcoxon_p"]) == pytest.approx(stats.wilcoxon(diffs, method="approx").pvalue, rel=1e-5)  # tied: approx
        ps.append(float(r["permutation_p"]))
    order = sorted(range(3), key=lambda i: ps[i])  # Holm by hand: 3x, 2x, 1x, non-decreasing
    first = min(1, 3 * ps[order[0]])
    second = max(first, min(1, 2 * ps[order[1]]))
    hand = {order[0]: first, order[1]: second, order[2]: max(second, min(1, ps[order[2]]))}
    for i, (a, b, _) in enumerate(comparisons):
        assert float(got[(a, b, "success_any")]["permutation_holm"]) == pytest.approx(hand[i], rel=1e-5)
        assert got[(a, b, "success_any")]["holm_family"] == "3"
    assert [got[(a, b, "success_any")]["verdict"] for a, b, _ in comparisons] == [
        "EVA helps", "no difference as large as 0.04", "inconclusive"]
    secondary = got[("eva", "lora", "success_final")]  # exploratory: unadjusted
    assert secondary["permutation_holm"] == "" and secondary["verdict"] == "exploratory"
    assert "| EVA − LoRA | success at any step | 12 | 3 |" in report["markdown"]


def test_seeds_within_tasks_interval_equals_a_direct_numpy_loop(tmp_path):
    gone = {("push-wall", 6, "eva"): {"status": "pending"}, ("faucet-close", 5, "eva"): {"status": "pending"}}
    report = build_study_report(study(tmp_path / "s", gone), tmp_path / "out", plots=False)
    cells = [c for c in CELLS if (*c, "eva") not in gone]
    diffs = observed("eva", "lora", cells)
    rng = np.random.default_rng(0)  # the report's seed; tasks in sorted (full-name) order, seeds in order
    total = np.zeros(10_000)
    for task in sorted(TASKS, key=lambda t: f"{t}-v3"):
        d = diffs[[i for i, (t, _) in enumerate(cells) if t == task]]
        total += d[rng.integers(0, len(d), size=(10_000, len(d)))].sum(axis=1)
    low, high = np.percentile(total / len(diffs), [2.5, 97.5])
    r = read_rows(tmp_path / "out/tests.csv")[("eva", "lora", "success_any")]
    assert int(r["pairs"]) == 10
    assert (float(r["fixed_ci_low"]), float(r["fixed_ci_high"])) == pytest.approx((low, high), rel=1e-5)
    quality = read_rows_by(tmp_path / "out/quality.csv", ("a", "b"))
    assert quality[("eva", "lora")]["cells_one_method"] == "2"  # the partial grid, counted
    assert quality[("eva", "fft")]["cells_one_method"] == "2"
    assert "2 pair(s) left out, EVA missing" in report["markdown"]


def read_rows_by(path: Path, keys: tuple[str, ...]) -> dict[tuple, dict[str, str]]:
    with open(path, newline="") as f:
        return {tuple(r[k] for k in keys): r for r in csv.DictReader(f)}


def test_phases_in_separate_folders_are_pooled_and_paired_across_them(tmp_path, capsys):
    root = study(tmp_path / "s")
    folders = [str(root / f) for f in ("main-lora-eva", "main-dora", "main-fft")]
    assert main(["report", *folders, "--out", str(tmp_path / "a"), "--no-plots"]) == 0
    assert main(["report", str(root), "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "main-fft/results.csv" in printed and "validation/results.csv" not in printed
    for out in ("a", "b"):
        got = read_rows(tmp_path / out / "tests.csv")
        eva_fft = got[("eva", "fft", "success_any")]  # EVA in one folder, FFT in another
        assert int(eva_fft["pairs"]) == 12  # the validation's push/seed 100 runs are not pooled
        assert float(eva_fft["mean"]) == pytest.approx(observed("eva", "fft").mean(), abs=1e-6)
    assert (tmp_path / "a/tests.csv").read_text() == (tmp_path / "b/tests.csv").read_text()


def test_runs_and_pairs_that_crossed_machines_and_mixed_precisions_are_counted(tmp_path):
    xeon = "Intel(R) Xeon(R) Processor (avx512f, amx_bf16)"
    changes = {("hammer", 3, "eva"): {"cpu": f"{CPU} | {xeon}"},  # resumed on another machine
               ("hammer", 4, "lora"): {"cpu": xeon},  # the pair's two runs on different CPUs
               ("push-wall", 5, "fft"): {"cpu": xeon, "eval_precision": "bf16"}}
    report = build_study_report(study(tmp_path / "s", changes), tmp_path / "out", plots=False)
    q = read_rows_by(tmp_path / "out/quality.csv", ("a", "b"))
    assert q[("eva", "lora")]["runs_crossed_machines_total"] == "1"
    assert (q[("eva", "lora")]["pairs_crossed_machines"], q[("eva", "lora")]["pairs_different_cpu"]) == ("1", "2")
    assert (q[("eva", "fft")]["pairs_crossed_machines"], q[("eva", "fft")]["pairs_different_cpu"]) == ("1", "2")
    assert (q[("eva_dora", "dora")]["pairs_crossed_machines"], q[("eva_dora", "dora")]["pairs_different_cpu"]) == (
        "0", "0")
    assert q[("eva", "fft")]["eval_precision"] == "bf16 1, fp32 23"
    assert q[("eva", "lora")]["pairs_by_cpu"] == f"{CPU} 10; different CPUs 2"
    assert q[("eva_dora", "dora")]["pairs_by_cpu"] == f"{CPU} 12"
    assert "**1** of 60" in report["markdown"]
    assert f"Runs by CPU: {CPU} 57; {CPU} | {xeon} 1; {xeon} 2." in report["markdown"]
    mixed = [w for w in report["warnings"] if "mix evaluation precisions" in w]
    assert mixed == ["EVA − FFT (success_any): its runs mix evaluation precisions (bf16 1, fp32 23); the difference "
                     "mixes the methods with the arithmetic"]


def test_study_i_tables_without_cpu_columns_still_report(tmp_path):
    rows = [record(m, t, s) for t, s in CELLS for m in ("lora", "eva")]
    report = build_study_report(write(tmp_path / "s", rows, STUDY_I_COLUMNS), tmp_path / "out", plots=False)
    assert "CPU: not recorded" in report["markdown"]
    assert read_rows(tmp_path / "out/tests.csv")[("eva", "lora", "success_any")]["verdict"] == "EVA helps"
    assert not [w for w in report["warnings"] if "precision" in w]


def test_iqm_matches_a_direct_interquartile_mean(tmp_path):
    build_study_report(study(tmp_path / "s"), tmp_path / "out", plots=False)
    with open(tmp_path / "out/rliable.csv", newline="") as f:
        got = {(r["metric"], r["statistic"], r["a"]): r for r in csv.DictReader(f)}
    for method in ("lora", "eva", "fft"):
        values = [success(method, i) for i in range(len(CELLS))]
        r = got[("success_any", "iqm", method)]
        assert float(r["value"]) == pytest.approx(stats.trim_mean(values, 0.25), rel=1e-5)
        assert float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"])


@pytest.mark.parametrize("delta", ["0", "1.5", "nan", "-0.04"])
def test_bad_power_delta_is_refused_before_anything_is_written(tmp_path, capsys, delta):
    root = study(tmp_path / "s")
    assert main(["report", str(root), "--out", str(tmp_path / "out"), "--power-delta", delta]) != 0
    err = capsys.readouterr().err
    assert f"--power-delta {float(delta)}: not a difference in success rate; give a number in (0, 1]" in err
    assert not (tmp_path / "out").exists()


def test_power_delta_sizes_the_design(tmp_path):
    build_study_report(study(tmp_path / "s"), tmp_path / "out", plots=False, power_deltas=[0.04])
    with open(tmp_path / "out/power.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if (r["a"], r["b"], r["metric"]) == ("eva", "fft", "success_any"))
    sd = observed("eva", "fft").std(ddof=1)
    assert float(row["sd"]) == pytest.approx(sd, rel=1e-5)
    assert float(row["mde_normal"]) == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / np.sqrt(12),
                                                     rel=1e-5)
    n = int(row["pairs_needed"])  # the smallest n whose t-based MDE is at most 0.04
    mde = [(stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)) * sd / np.sqrt(k) for k in (n - 1, n)]
    assert mde[0] > 0.04 >= mde[1]
