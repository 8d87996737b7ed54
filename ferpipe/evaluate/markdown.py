"""``reports/report.md``: one page with a run's evaluation tables and figures.

Plain markdown with the figures linked by relative path (``plots/*.png``), so it reads offline
in any viewer, in git and on a forge. Every accuracy carries its 95% interval; groups with few
samples are marked. The same tables feed the report's artifacts (:meth:`ferpipe.evaluate.stage.EvaluateReport.artifacts`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ferpipe.report import markdown_table

if TYPE_CHECKING:
    from ferpipe.evaluate.stage import EvaluateReport


def with_ci(row: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``0.830 [0.791, 0.863]`` from a flat row's ``key``, ``key_lo``, ``key_hi``."""
    v = row.get(key)
    if v is None:
        return "-"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return f"{v:.{digits}f}" + ("" if lo is None or hi is None else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def metrics_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-set table, each metric as ``value [lo, hi]``."""
    return [{"set": r["set"], "n": r["n"], "accuracy": with_ci(r, "accuracy"),
             "mean class accuracy": with_ci(r, "mean_class_accuracy"), "macro-F1": with_ci(r, "macro_f1")}
            for r in rows]


METRICS_HEADER = ["set", "n", "accuracy", "mean class accuracy", "macro-F1"]


def group_rows(rows: Sequence[Mapping[str, Any]], what: str) -> list[dict[str, Any]]:
    return [{what: r[what], "n": r["n"], "accuracy": with_ci(r, "accuracy"),
             "note": "few samples" if r.get("few") else ""} for r in rows]


def _rel(path: str, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def report_markdown(report: EvaluateReport, base: Path) -> str:
    m, t = report.metrics, report.tables
    iv = m.get("intervals", {})
    md = ["# Evaluation report", ""]
    model = m.get("model")
    if model:
        md += [f"Model: `{model.get('checkpoint')}` (epoch {model.get('epoch')}).", ""]
    md += [f"Intervals are {int(100 * iv.get('level', 0.95))}%: accuracy — {iv.get('accuracy_method', '')}; "
           f"mean class accuracy and macro-F1 — {iv.get('mean_class_accuracy_and_macro_f1_method', '')}. Groups with "
           f"{iv.get('few_samples', 'few samples')} are marked *few samples*: read them with care.", ""]
    md += ["## Summary", "", markdown_table(metrics_rows(t.get("metrics", [])), METRICS_HEADER), ""]
    syn = m.get("synthetic-occlusion", {})
    if syn.get("accuracy_drop") is not None:
        ci = syn.get("accuracy_drop_ci95")
        md += [f"Accuracy drop under synthetic occlusion (clean − occluded, paired over "
               f"{syn['accuracy_drop_pairs']} images): {syn['accuracy_drop']:.3f}"
               + (f" [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else "") + ".", ""]
    for name, why in report.skipped_sets.items():
        md.append(f"- {name}: skipped: {why}")
    if report.skipped_sets:
        md.append("")
    for row in t.get("metrics", []):
        name = row["set"]
        per_class = t.get(f"{name}_per_class")
        if per_class:
            md += [f"## {name}: per class", "",
                   markdown_table([{k: ("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else v))
                                    for k, v in r.items()} for r in per_class],
                                  ["class", "n", "precision", "recall", "f1"]), ""]
        if f"{name}_confusion" in report.images:
            md += [f"![{name} confusion matrix]({_rel(report.images[f'{name}_confusion'], base)})", ""]
        if f"{name}_mistakes" in report.images:
            md += [f"### {name}: most confident mistakes", "",
                   markdown_table(t.get(f"{name}_mistakes", []), ["actual", "predicted", "confidence", "key"]), "",
                   f"![{name} mistakes]({_rel(report.images[f'{name}_mistakes'], base)})", ""]
    for what, title in (("by_occluder", "occluder"), ("by_region", "region")):
        if t.get(what):
            md += [f"## synthetic-occlusion: accuracy by {title}", "",
                   markdown_table(group_rows(t[what], title), [title, "n", "accuracy", "note"]), ""]
            if what in report.images:
                md += [f"![accuracy by {title}]({_rel(report.images[what], base)})", ""]
    if t.get("robustness"):
        md += ["## synthetic-occlusion: accuracy by occluded fraction", "",
               markdown_table(group_rows(t["robustness"], "bin"), ["bin", "n", "accuracy", "note"],
                              ["occluded fraction", "n", "accuracy", "note"]), "",
               f"![robustness]({_rel(report.images['robustness'], base)})", ""]
    if "tsne" in report.images:
        md += ["## t-SNE of the clean features", "", f"![t-SNE]({_rel(report.images['tsne'], base)})", ""]
    return "\n".join(md)


def write_report_md(report: EvaluateReport, path: str | os.PathLike) -> Path:
    from ferpipe.shards import atomic_file  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        f.write(report_markdown(report, path.parent).encode("utf-8"))
    return path
