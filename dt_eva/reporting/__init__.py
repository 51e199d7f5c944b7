"""Tables and plots from run directories: `build_report(run_dirs_or_root, out_dir)`.

Light to import: matplotlib loads only when a plot is drawn.
"""

from dt_eva.reporting.report import build_report
from dt_eva.reporting.stats import MeanSE, mean_se

__all__ = ["MeanSE", "build_report", "mean_se"]
