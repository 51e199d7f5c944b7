"""Reports, in two packages that share only `common`: `run_report`, tables and plots from run directories
(`build_report(run_dirs_or_root, out_dir)`), and `study`, the study report from a sweep's results.csv
(`build_study_report(results_csv_or_sweep_folder, out_dir)`).

Light to import: matplotlib loads only when a plot is drawn.
"""

from dt_eva.reporting.common.stats import MeanSE, mean_se, wilson_interval
from dt_eva.reporting.run_report import build_report
from dt_eva.reporting.study import build_study_report

__all__ = ["MeanSE", "build_report", "build_study_report", "mean_se", "wilson_interval"]
