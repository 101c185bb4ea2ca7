"""Reports: figures (matplotlib, headless) and self-contained HTML."""

from consistcam.report.evaluation import evaluation_report, example_grids
from consistcam.report.figures import (
    consistency_grid,
    histograms,
    overlay,
    read_history,
    training_curves,
    weight_histograms,
)
from consistcam.report.html import img, metrics_table, write_report

__all__ = [
    "consistency_grid",
    "evaluation_report",
    "example_grids",
    "histograms",
    "img",
    "metrics_table",
    "overlay",
    "read_history",
    "training_curves",
    "weight_histograms",
    "write_report",
]
