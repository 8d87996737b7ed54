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
        pts = [(r["center"], r["accuracy"], r["n"]) for r in rows if r["accuracy"] is not None]
        if not pts:
            continue
        x, y, n = zip(*pts)
        ax.plot(x, y, marker="o", label=name)
        for xi, yi, ni in pts:
            ax.annotate(f"n={ni}", (xi, yi), textcoords="offset points", xytext=(0, 5), fontsize=6, ha="center")
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
    plt = _plt()
    names = list(groups)
    acc = [groups[k]["accuracy"] or 0.0 for k in names]
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=100)
    ax.bar(range(len(names)), acc, color="#4c72b0")
    ax.set_xticks(range(len(names)), [f"{k}\n(n={groups[k]['n']})" for k in names], fontsize=6.5, rotation=30,
                  ha="right")
    if reference is not None:
        ax.axhline(reference, color="#c44e52", ls="--", lw=1, label="clean accuracy")
        ax.legend(fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
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


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata=_PNG_META)
    _plt().close(fig)
    return path


def png_data_uri(path: str | os.PathLike) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
