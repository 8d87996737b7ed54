"""Evaluation: metrics, reports and plots of a trained model on the clean test split, the real
occlusion/pose subsets and the synthetic-occlusion set.

Public API::

    from ferpipe.evaluate import EvaluateParams, run_evaluate, evaluate_sets, EvaluateReport
    from ferpipe.evaluate import Predictions, Predictor, CheckpointPredictor
    from ferpipe.evaluate import check_label_map, LabelMapMismatchError
    from ferpipe.evaluate import classification_metrics, group_accuracy, robustness_curve, assign_bins
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use (ferpipe._lazy): reading params.yaml must not import this stage's dependencies.
_EXPORTS = {
    "CheckpointPredictor": "predict", "EvaluateParams": "params", "EvaluateReport": "stage",
    "LabelMapMismatchError": "predict", "Predictions": "predict", "Predictor": "predict",
    "assign_bins": "metrics", "check_label_map": "predict", "classification_metrics": "metrics",
    "evaluate_sets": "stage", "flatten": "metrics", "group_accuracy": "metrics",
    "robustness_curve": "metrics", "run_evaluate": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
