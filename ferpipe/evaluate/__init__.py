"""Evaluation: metrics, reports and plots of a trained model on the clean test split, the real
occlusion/pose subsets and the synthetic-occlusion set.

Public API::

    from ferpipe.evaluate import EvaluateParams, run_evaluate, evaluate_sets, EvaluateReport
    from ferpipe.evaluate import Predictions, Predictor, CheckpointPredictor
    from ferpipe.evaluate import check_label_map, LabelMapMismatchError
    from ferpipe.evaluate import classification_metrics, group_accuracy, robustness_curve, assign_bins
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use: importing ferpipe.evaluate.params must not import torch or scikit-learn.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "metrics": ["assign_bins", "classification_metrics", "flatten", "group_accuracy", "robustness_curve"],
    "params": ["EvaluateParams"],
    "predict": ["CheckpointPredictor", "LabelMapMismatchError", "Predictions", "Predictor", "check_label_map"],
    "stage": ["EVALUATE", "EvaluateReport", "evaluate_sets", "run_evaluate"],
})
