"""HTML reports and figures (read-only consumers of runs and metrics)."""

from consistcam.report.figures import consistency_grid, overlay, read_history, training_curves, weight_histograms
from consistcam.report.html import img, metrics_table, write_report

__all__ = ["consistency_grid", "img", "metrics_table", "overlay", "read_history", "training_curves",
           "weight_histograms", "write_report"]
