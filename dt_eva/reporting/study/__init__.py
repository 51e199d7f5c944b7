"""The study report built from a sweep's results.csv alone: `build_study_report(results_csv_or_sweep_folder,
out_dir)` (tables beside the paper's numbers, paired comparisons with bootstrap intervals, tests, power,
ordering, curves, EVA ranks and init time)."""

from dt_eva.reporting.study.report import build_study_report, results_csvs_of

__all__ = ["build_study_report", "results_csvs_of"]
