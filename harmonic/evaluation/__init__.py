"""Evaluation (numpy only): COCO AP, the paper's AP@0.5-0.9, score-IoU consistency, NMS regret, plots.

Nothing here imports torch, torchvision or onnx: it runs on the deploy side.
Plots live in :mod:`harmonic.evaluation.plots` (matplotlib is imported there, lazily).
"""

from harmonic.evaluation.api import evaluate, load_report, save_report
from harmonic.evaluation.tables import compare_table, format_report_table

__all__ = ["evaluate", "save_report", "load_report", "compare_table", "format_report_table"]
