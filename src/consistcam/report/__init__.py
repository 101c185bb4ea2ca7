"""Reports: figures (matplotlib's object API, no pyplot, no backend switch) and self-contained HTML,
rendered from saved results only (no model, no attack, no scoring). Every user-controlled string
(class, run, split and metric names, the command, notes, titles) is HTML-escaped; a damaged saved
file is a ValueError naming it."""

from consistcam.report.evaluation import compare_runs, evaluation_report, example_grids, render_evaluation
from consistcam.report.figures import (
    consistency_grid,
    histograms,
    overlay,
    rounds_figure,
    save_overlay,
    training_curves,
    weight_histograms,
)
from consistcam.report.html import img, metrics_table, write_report
from consistcam.report.results import SavedEvaluation, read_evaluation, read_history, read_rounds
from consistcam.run.layout import examples_file, per_sample_file  # the names of the files it reads

__all__ = [
    "SavedEvaluation",
    "compare_runs",
    "consistency_grid",
    "evaluation_report",
    "example_grids",
    "examples_file",
    "histograms",
    "img",
    "metrics_table",
    "overlay",
    "per_sample_file",
    "read_evaluation",
    "read_history",
    "read_rounds",
    "render_evaluation",
    "rounds_figure",
    "save_overlay",
    "training_curves",
    "weight_histograms",
    "write_report",
]
