"""Metrics of one evaluation set (scikit-learn), grouped accuracies and the robustness curve."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score


def _num(x: float) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, mean class accuracy (mean recall over the classes present in ``y_true``),
    macro-F1 (over the classes present in ``y_true``, as the trainer logs it), per-class recall
    (None for a class absent from ``y_true``) and the confusion matrix (rows = true)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"n": 0, "accuracy": None, "mean_class_accuracy": None, "macro_f1": None,
                "recall": {c: None for c in classes}, "confusion": [[0] * len(classes) for _ in classes]}
    present = sorted(set(y_true.tolist()))
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on small subsets; the mean is over
        # the true classes by definition.
        warnings.simplefilter("ignore", UserWarning)
        bal = balanced_accuracy_score(y_true, y_pred)
    rec = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
    return {
        "n": int(len(y_true)),
        "accuracy": _num(accuracy_score(y_true, y_pred)),
        "mean_class_accuracy": _num(bal),
        "macro_f1": _num(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "recall": {c: (_num(r) if i in present else None) for i, (c, r) in enumerate(zip(classes, rec))},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def group_accuracy(correct: Sequence[bool], groups: Iterable[Iterable[str] | str]) -> dict[str, dict[str, Any]]:
    """Accuracy per group; a sample may belong to several groups (e.g. the regions it covers)."""
    acc: dict[str, list[bool]] = {}
    for ok, g in zip(correct, groups):
        for name in ([g] if isinstance(g, str) else list(g)):
            acc.setdefault(str(name), []).append(bool(ok))
    return {k: {"accuracy": _num(accuracy_score(np.ones(len(v), bool), np.asarray(v))), "n": len(v)}
            for k, v in sorted(acc.items())}


def bin_labels(edges: Sequence[float]) -> list[str]:
    return [f"{a:.2f}-{b:.2f}" for a, b in zip(edges, edges[1:])]


def assign_bins(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Bin index per value: [e0, e1), [e1, e2), ..., [e_{n-1}, e_n] (the last closed); -1 outside."""
    v = np.asarray(values, float)
    e = np.asarray(edges, float)
    idx = np.searchsorted(e, v, side="right") - 1
    idx[v == e[-1]] = len(e) - 2
    idx[(v < e[0]) | (v > e[-1])] = -1
    return idx


def robustness_curve(fractions: Sequence[float], correct: Sequence[bool], edges: Sequence[float]
                     ) -> list[dict[str, Any]]:
    """Accuracy against occluded fraction: one row per bin (lo, hi, centre, n, accuracy)."""
    idx = assign_bins(fractions, edges)
    ok = np.asarray(correct, bool)
    rows = []
    for i, name in enumerate(bin_labels(edges)):
        m = idx == i
        rows.append({"bin": name, "lo": float(edges[i]), "hi": float(edges[i + 1]),
                     "center": round((edges[i] + edges[i + 1]) / 2, 6), "n": int(m.sum()),
                     "accuracy": _num(ok[m].mean()) if m.any() else None})
    return rows


def flatten(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists left out): what a metrics table shows."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif not isinstance(node, (list, tuple)):
            out[prefix] = node

    walk("", metrics)
    return out
