"""Figures (PNG via matplotlib, Agg) and the CSVs ``dvc plots`` reads, plus inline data URIs
for Prefect markdown artifacts. Deterministic: fixed figure size, dpi and no timestamps."""

from __future__ import annotations

import base64
import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

_PNG_META = {"Software": None}  # no matplotlib version in the file: same bytes across runs


def _plt():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    return path


def confusion_rows(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Long format (actual, predicted, count), for people and spreadsheets. DVC's ``confusion``
    template counts rows itself, so it reads the per-sample CSV of :func:`sample_rows`."""
    return [{"actual": classes[i], "predicted": classes[j], "count": int(confusion[i][j])}
            for i in range(len(classes)) for j in range(len(classes))]


def sample_rows(keys: Sequence[str], y_true, y_pred, classes: Sequence[str]) -> list[dict[str, Any]]:
    return [{"key": k, "actual": classes[int(t)], "predicted": classes[int(p)]}
            for k, t, p in zip(keys, y_true, y_pred)]


def prediction_columns(classes: Sequence[str]) -> list[str]:
    return ["key", "actual", "predicted", "confidence", *(f"p_{c}" for c in classes)]


def prediction_rows(keys: Sequence[str], y_true, y_pred, y_prob, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per sample: key, actual, predicted (DVC's confusion template reads these), the
    predicted class's probability and every class's (``p_<class>``, 6 decimals)."""
    prob = np.asarray(y_prob, np.float64)
    rows = sample_rows(keys, y_true, y_pred, classes)
    for r, pr, p in zip(rows, prob, y_pred):
        r["confidence"] = f"{pr[int(p)]:.6f}"
        r.update({f"p_{c}": f"{v:.6f}" for c, v in zip(classes, pr)})
    return rows


def _ci_err(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Asymmetric error bars [[below], [above]] from accuracy_lo / accuracy_hi."""
    lo = [max(0.0, r["accuracy"] - r["accuracy_lo"]) if r.get("accuracy_lo") is not None else 0.0 for r in rows]
    hi = [max(0.0, r["accuracy_hi"] - r["accuracy"]) if r.get("accuracy_hi") is not None else 0.0 for r in rows]
    return np.array([lo, hi])


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike,
                  title: str = "") -> Path:
    plt = _plt()
    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _save(fig, path)


def robustness_png(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                   title: str = "accuracy vs occluded fraction") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=100)
    for name, rows in curves.items():
        rows = [r for r in rows if r["accuracy"] is not None]
        if not rows:
            continue
        x = [r["center"] for r in rows]
        y = [r["accuracy"] for r in rows]
        line = ax.errorbar(x, y, yerr=_ci_err(rows), marker="o", capsize=3, label=f"{name} (95% Wilson)")
        colour = line.lines[0].get_color()
        few = [r for r in rows if r.get("few")]
        if few:  # hollow markers: too few samples to read much into
            ax.plot([r["center"] for r in few], [r["accuracy"] for r in few], "o", mfc="white", mec=colour, ms=7)
        for r in rows:
            ax.annotate(f"n={r['n']}" + (" (few)" if r.get("few") else ""), (r["center"], r["accuracy"]),
                        textcoords="offset points", xytext=(0, 6), fontsize=6, ha="center")
    ax.set_xlabel("occluded fraction of the face")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def bars_png(groups: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str,
             reference: float | None = None) -> Path:
    """Accuracy per group with 95% Wilson error bars; groups flagged ``few`` are drawn pale and
    hatched, and their tick says so."""
    plt = _plt()
    names = list(groups)
    rows = []
    for k in names:
        g = groups[k]
        ci = g.get("accuracy_ci95") or {}
        rows.append({"accuracy": g["accuracy"] or 0.0, "accuracy_lo": ci.get("lo"), "accuracy_hi": ci.get("hi")})
    few = [bool(groups[k].get("few")) for k in names]
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=100)
    bars = ax.bar(range(len(names)), [r["accuracy"] for r in rows], yerr=_ci_err(rows), capsize=3,
                  color=["#c8d3e6" if f else "#4c72b0" for f in few], ecolor="#333333")
    for b, f in zip(bars, few):
        if f:
            b.set_hatch("//")
    ax.set_xticks(range(len(names)),
                  [f"{k}\n(n={groups[k]['n']}{', few' if f else ''})" for k, f in zip(names, few)],
                  fontsize=6.5, rotation=30, ha="right")
    if reference is not None:
        ax.axhline(reference, color="#c44e52", ls="--", lw=1, label="clean accuracy")
        ax.legend(fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def tsne_png(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
             seed: int = 0, max_points: int = 2000, title: str = "t-SNE of features") -> Path:
    from sklearn.manifold import TSNE  # noqa: PLC0415

    plt = _plt()
    rng = np.random.default_rng(seed)
    idx = np.arange(len(features))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    x = np.asarray(features, np.float32)[idx]
    emb = TSNE(n_components=2, perplexity=float(min(30, max(2, (len(x) - 1) // 3))), init="pca",
               random_state=seed).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=100)
    for c, name in enumerate(classes):
        m = labels[idx] == c
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], s=5, label=name)
    ax.legend(fontsize=6, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def mistakes_jpg(rows_by_class: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike,
                 title: str = "") -> Path:
    """A grid: one row per true class, its most confident mistakes left to right (image,
    predicted class and probability); JPEG, a third of the PNG's size for a grid of photos. ``rows_by_class[c]``: dicts with ``rgb``, ``predicted``,
    ``confidence``, ``key``; a class without mistakes gets an empty row saying so."""
    plt = _plt()
    classes = list(rows_by_class)
    cols = max([1, *(len(v) for v in rows_by_class.values())])
    fig, axes = plt.subplots(len(classes), cols, figsize=(max(1.35 * cols + 0.9, 5.0), 1.45 * len(classes) + 0.3),
                             dpi=80, squeeze=False)  # 80 dpi: a 112 px face at about its own size
    for i, c in enumerate(classes):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j == 0:
                ax.set_ylabel(c, fontsize=8)
            items = rows_by_class[c]
            if j < len(items):
                it = items[j]
                ax.imshow(it["rgb"])
                ax.set_title(f"{it['predicted']} {float(it['confidence']):.2f}", fontsize=6.5, color="#c44e52")
                ax.set_xlabel(str(it["key"])[-18:], fontsize=5)
            elif j == 0:
                ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    fig.suptitle(title or "most confident mistakes per true class (title: predicted, probability)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, "jpeg")


def _save(fig, path: str | os.PathLike, fmt: str = "png") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        fig.savefig(path, format="png", metadata=_PNG_META)
    else:  # Pillow's encoder, fixed settings: the same bytes every run
        fig.savefig(path, format=fmt, pil_kwargs={"quality": 85, "optimize": False, "progressive": False})
    _plt().close(fig)
    return path


def image_data_uri(path: str | os.PathLike) -> str:
    """A data URI for a PNG or JPEG figure, by its suffix."""
    mime = "image/jpeg" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
