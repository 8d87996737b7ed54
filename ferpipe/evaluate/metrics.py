"""Metrics of one evaluation set (scikit-learn), with 95% intervals; grouped accuracies and the
robustness curve.

Intervals (``<metric>_ci95: {"lo", "hi"}`` beside each value):

- accuracies (a set's, a group's, a bin's): the Wilson score interval (scipy's ``binomtest``),
  which stays inside [0, 1] and is honest for small n;
- mean class accuracy and macro-F1 (not proportions): a percentile bootstrap over the samples
  (scipy's ``bootstrap``, paired true/predicted labels, seeded, ``n_resamples`` resamples);
- groups and bins with fewer than ``min_n`` samples carry ``few: true``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

LEVEL = 0.95
MIN_N = 30


def _num(x: float) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def wilson_interval(k: int, n: int, level: float = LEVEL) -> dict[str, float] | None:
    """The Wilson score interval of ``k`` successes in ``n`` trials (None for n = 0)."""
    from scipy.stats import binomtest  # noqa: PLC0415

    if n <= 0:
        return None
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return {"lo": _num(ci.low), "hi": _num(ci.high)}


def bootstrap_interval(statistic: Callable[..., float], arrays: Sequence[np.ndarray], n_resamples: int,
                       seed: int, level: float = LEVEL, vectorized: bool = False) -> dict[str, float] | None:
    """A percentile bootstrap interval of ``statistic(*arrays)``, resampling the rows of all
    ``arrays`` together (paired). None when there are fewer than 2 rows or no resamples."""
    from scipy.stats import bootstrap  # noqa: PLC0415

    if n_resamples <= 0 or len(arrays[0]) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (one class only) are expected on tiny sets
        res = bootstrap(tuple(arrays), statistic, n_resamples=int(n_resamples), paired=True, vectorized=vectorized,
                        confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return {"lo": _num(res.confidence_interval.low), "hi": _num(res.confidence_interval.high)}


def interval_methods(n_resamples: int, seed: int, min_n: int = MIN_N) -> dict[str, Any]:
    """What the intervals in a metrics file are (stated once, in the file itself)."""
    boot = (f"percentile bootstrap over samples, {n_resamples} resamples, seed {seed}" if n_resamples > 0
            else "none (evaluate.bootstrap_resamples is 0)")
    return {"level": LEVEL, "accuracy_method": "Wilson score interval",
            "mean_class_accuracy_and_macro_f1_method": boot,
            "accuracy_drop_method": f"paired {boot}, over (clean, occluded) image pairs" if n_resamples > 0 else boot,
            "few_samples": f"n < {min_n}"}


def _confusions(t: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices [..., true, predicted] of label arrays [..., n] (one per leading row)."""
    t, p = np.atleast_2d(t), np.atleast_2d(p)
    rows = t.shape[0]
    flat = (np.arange(rows)[:, None] * n_classes + t) * n_classes + p
    return np.bincount(flat.ravel(), minlength=rows * n_classes * n_classes).reshape(rows, n_classes, n_classes)


# The bootstrap's statistics, vectorised over resamples (a thousand sklearn calls would take
# seconds per set); tests check each equals sklearn's value on the full sample.
def macro_f1_statistic(labels: Sequence[int], n_classes: int) -> Callable[..., np.ndarray]:
    """Macro-F1 over ``labels`` (zero where undefined), as ``f1_score(average="macro")``."""
    labels = np.asarray(labels, int)

    def f(t, p, axis=-1):
        cm = _confusions(t, p, n_classes)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        den = cm.sum(1) + cm.sum(2)          # 2tp + fp + fn
        f1 = np.divide(2 * tp, den, out=np.zeros(tp.shape, float), where=den > 0)
        return f1[:, labels].mean(1) if np.ndim(t) > 1 else f1[0, labels].mean()
    return f


def mean_class_accuracy_statistic(n_classes: int) -> Callable[..., np.ndarray]:
    """Mean recall over the classes present in the (resampled) truth, as ``balanced_accuracy_score``."""
    def f(t, p, axis=-1):
        cm = _confusions(t, p, n_classes)
        support = cm.sum(2)
        recall = np.divide(np.diagonal(cm, axis1=1, axis2=2), support, out=np.zeros(support.shape, float),
                           where=support > 0)
        out = recall.sum(1) / np.maximum((support > 0).sum(1), 1)
        return out if np.ndim(t) > 1 else out[0]
    return f


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Macro-F1 over the classes present in ``y_true`` (a present class never predicted right
    counts 0): the figure the trainer logs and the evaluation reports; nan with no samples."""
    present = np.unique(np.asarray(y_true, int))
    if not len(present):
        return float("nan")
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def _mean_class_accuracy(t: np.ndarray, p: np.ndarray) -> float:
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on small subsets; the mean is over
        # the true classes by definition.
        warnings.simplefilter("ignore", UserWarning)
        return balanced_accuracy_score(t, p)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str],
                           n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """accuracy, mean class accuracy (mean recall over the classes present in ``y_true``),
    macro-F1 (over the classes present in ``y_true``, as the trainer logs it), each with its 95%
    interval; per-class precision, recall, F1 and support (None where undefined: a class never
    predicted has no precision, one absent from ``y_true`` no recall) and the confusion matrix
    (rows = true)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"n": 0, "accuracy": None, "accuracy_ci95": None, "mean_class_accuracy": None,
                "mean_class_accuracy_ci95": None, "macro_f1": None, "macro_f1_ci95": None,
                "per_class": {c: {"precision": None, "recall": None, "f1": None, "n": 0} for c in classes},
                "confusion": [[0] * len(classes) for _ in classes]}
    present = sorted(set(y_true.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined precision/recall: reported as None below
        prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None,
                                                                 zero_division=np.nan)
    n_pred = np.bincount(y_pred, minlength=len(classes))
    per_class = {c: {"precision": _num(prec[i]) if n_pred[i] else None,
                     "recall": _num(rec[i]) if support[i] else None,
                     "f1": _num(f1[i]) if support[i] else None, "n": int(support[i])}
                 for i, c in enumerate(classes)}
    n_correct = int((y_true == y_pred).sum())
    pair = (y_true, y_pred)
    return {
        "n": int(len(y_true)),
        "accuracy": _num(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": wilson_interval(n_correct, len(y_true)),
        "mean_class_accuracy": _num(_mean_class_accuracy(y_true, y_pred)),
        "mean_class_accuracy_ci95": bootstrap_interval(mean_class_accuracy_statistic(len(classes)), pair,
                                                       n_resamples, seed, vectorized=True),
        "macro_f1": _num(macro_f1(y_true, y_pred)),
        "macro_f1_ci95": bootstrap_interval(macro_f1_statistic(present, len(classes)), pair, n_resamples, seed,
                                            vectorized=True),
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def accuracy_drop(clean_ok: np.ndarray, occluded_ok: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """Clean minus occluded accuracy over paired samples (an occluded image and its clean source),
    with a paired bootstrap interval."""
    clean_ok, occluded_ok = np.asarray(clean_ok, float), np.asarray(occluded_ok, float)

    def drop(c, o, axis=-1):
        return c.mean(axis=axis) - o.mean(axis=axis)

    return {"accuracy_drop": _num(drop(clean_ok, occluded_ok)) if len(clean_ok) else None,
            "accuracy_drop_ci95": bootstrap_interval(drop, (clean_ok, occluded_ok), n_resamples, seed,
                                                     vectorized=True),
            "accuracy_drop_pairs": int(len(clean_ok))}


def accuracy_entry(correct: Sequence[bool], min_n: int = MIN_N) -> dict[str, Any]:
    """``{"accuracy", "accuracy_ci95", "n", "few"}`` of a group of samples."""
    ok = np.asarray(correct, bool)
    n = int(len(ok))
    return {"accuracy": _num(ok.mean()) if n else None, "accuracy_ci95": wilson_interval(int(ok.sum()), n),
            "n": n, "few": n < min_n}


def group_accuracy(correct: Sequence[bool], groups: Iterable[Iterable[str] | str],
                   min_n: int = MIN_N) -> dict[str, dict[str, Any]]:
    """Accuracy (with its Wilson interval, and ``few`` below ``min_n`` samples) per group; a sample
    may belong to several groups (e.g. the regions it covers)."""
    acc: dict[str, list[bool]] = {}
    for ok, g in zip(correct, groups):
        for name in ([g] if isinstance(g, str) else list(g)):
            acc.setdefault(str(name), []).append(bool(ok))
    return {k: accuracy_entry(v, min_n) for k, v in sorted(acc.items())}


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


def robustness_curve(fractions: Sequence[float], correct: Sequence[bool], edges: Sequence[float],
                     min_n: int = MIN_N) -> list[dict[str, Any]]:
    """Accuracy against occluded fraction: one row per bin (lo, hi, centre, n, accuracy, its
    Wilson interval as accuracy_lo / accuracy_hi, and few: n < ``min_n``)."""
    idx = assign_bins(fractions, edges)
    ok = np.asarray(correct, bool)
    rows = []
    for i, name in enumerate(bin_labels(edges)):
        e = accuracy_entry(ok[idx == i], min_n)
        ci = e["accuracy_ci95"] or {}
        rows.append({"bin": name, "lo": float(edges[i]), "hi": float(edges[i + 1]),
                     "center": round((edges[i] + edges[i + 1]) / 2, 6), "n": e["n"], "accuracy": e["accuracy"],
                     "accuracy_lo": ci.get("lo"), "accuracy_hi": ci.get("hi"), "few": e["few"]})
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
