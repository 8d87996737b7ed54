"""Evaluation: metrics, reports and plots of a trained model on the clean test split, the real
occlusion/pose subsets and the synthetic-occlusion set.

Public API::

    from ferpipe.evaluate import EvaluateParams, run_evaluate, evaluate_sets, EvaluateReport
    from ferpipe.evaluate import Predictions, Predictor, CheckpointPredictor
    from ferpipe.evaluate import check_label_map, LabelMapMismatchError
    from ferpipe.evaluate import classification_metrics, group_accuracy, robustness_curve, assign_bins
"""

from .metrics import assign_bins, classification_metrics, flatten, group_accuracy, robustness_curve
from .params import EvaluateParams
from .predict import CheckpointPredictor, LabelMapMismatchError, Predictions, Predictor, check_label_map
from .stage import EvaluateReport, evaluate_sets, run_evaluate

__all__ = [
    "CheckpointPredictor", "EvaluateParams", "EvaluateReport", "LabelMapMismatchError", "Predictions", "Predictor",
    "assign_bins", "check_label_map", "classification_metrics", "evaluate_sets", "flatten", "group_accuracy",
    "robustness_curve", "run_evaluate",
]
