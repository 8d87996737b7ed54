"""Evaluation: metrics, reports and plots of a trained model on the clean test split, the real
occlusion/pose subsets and the synthetic-occlusion set.

Public API::

    from ferpipe.evaluate import EvaluateParams, run_evaluate, evaluate_sets, EvaluateReport
    from ferpipe.evaluate import Predictions, Predictor, CheckpointPredictor
    from ferpipe.evaluate import check_label_map, LabelMapMismatchError
    from ferpipe.evaluate import classification_metrics, group_accuracy, robustness_curve, assign_bins
"""

from __future__ import annotations

import importlib
from typing import Any

from .params import EvaluateParams

# The rest loads on first use: reading params.yaml must not import scikit-learn and torch.
_WHERE = {**dict.fromkeys(("assign_bins", "classification_metrics", "flatten", "group_accuracy",
                           "robustness_curve"), "metrics"),
          **dict.fromkeys(("CheckpointPredictor", "LabelMapMismatchError", "Predictions", "Predictor",
                           "check_label_map"), "predict"),
          **dict.fromkeys(("EvaluateReport", "evaluate_sets", "run_evaluate"), "stage")}

__all__ = [
    "CheckpointPredictor", "EvaluateParams", "EvaluateReport", "LabelMapMismatchError", "Predictions", "Predictor",
    "assign_bins", "check_label_map", "classification_metrics", "evaluate_sets", "flatten", "group_accuracy",
    "robustness_curve", "run_evaluate",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ferpipe.evaluate' has no attribute {name!r}")
