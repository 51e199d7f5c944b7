"""The report built from run directories: `build_report(run_dirs_or_root, out_dir)` (tables in the paper's
Table 6 / 19 layout, the pre-training table, learning curves, EVA rank heatmaps)."""

from dt_eva.reporting.run_report.report import build_report

__all__ = ["build_report"]
