"""The evaluate stage: a model on the clean test split, the real occlusion/pose subsets and the
synthetic-occlusion set -> ``reports/metrics.json``, ``reports/plots/`` and ``reports/report.md``.

``reports/metrics.json`` (DVC metrics; nested, so DVC shows dotted keys)::

    {"clean": {"n", "accuracy", "accuracy_ci95": {"lo", "hi"}, "mean_class_accuracy",
               "mean_class_accuracy_ci95", "macro_f1", "macro_f1_ci95",
               "per_class": {class: {"precision", "recall", "f1", "n"}}},
     "<subset>": {... , "by_code": {"code_1": <group>, ...}},
     "synthetic-occlusion": {..., "by_occluder": {...}, "by_region": {"eyes": ...},
                             "by_fraction": {"0.00-0.10": ...},
                             "accuracy_drop", "accuracy_drop_ci95", "accuracy_drop_pairs"},
     "intervals": {what each interval is}, "model": {...}}

(``clean`` is the clean ``evaluate.split``; a ``<group>`` is ``{"accuracy", "accuracy_ci95", "n",
"few"}``, ``few`` meaning n < ``evaluate.min_group_n``.) Every interval is 95%: Wilson score for
accuracies, a seeded percentile bootstrap for mean class accuracy, macro-F1 and the (paired)
accuracy drop (:mod:`ferpipe.evaluate.metrics`).

``reports/plots/``: ``<set>_predictions.csv`` (key, actual, predicted: DVC's confusion template;
then the predicted class's probability and every class's, ``p_<class>``), ``<set>_confusion.csv``
/ ``.png``, ``<set>_mistakes.jpg`` (the most confident mistakes per true class),
``robustness.csv`` / ``.png``, ``by_occluder.csv`` / ``.png``, ``by_region.csv`` / ``.png`` (with
interval columns and error bars; few-sample groups flagged), optionally ``tsne.png``. DVC's HTML
needs the network for its plotting library, so the PNGs and ``reports/report.md`` (every table,
the figures by relative path) are what people look at offline.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ferpipe import shards
from ferpipe.evaluate import plots
from ferpipe.evaluate.markdown import METRICS_HEADER, metrics_rows, with_ci, write_report_md
from ferpipe.evaluate.metrics import (
    accuracy_drop,
    classification_metrics,
    group_accuracy,
    interval_methods,
    robustness_curve,
)
from ferpipe.evaluate.params import EvaluateParams
from ferpipe.evaluate.predict import CheckpointPredictor, Predictions, Predictor, check_label_map, shards_label_space
from ferpipe.errors import ConfigError
from ferpipe.layout import Layout
from ferpipe.progress import Progress
from ferpipe.report import Artifact, markdown, markdown_table, table
from ferpipe.timings import write_report

SYNTHETIC = "synthetic-occlusion"
CLEAN = "clean"


@dataclass
class EvaluateReport:
    metrics: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)      # name -> PNG path
    skipped_sets: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    metrics_path: str = ""
    report_md: str = ""
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def artifacts(self) -> list[Artifact]:
        """Every metric table, and a page with the summary and the figures (inline PNG / JPEG)."""
        ds = self.dataset
        out = [table(("evaluate", ds, name), rows, f"{ds}: {name.replace('_', ' ')}")
               for name, rows in self.tables.items() if rows]
        md = [f"# {ds}: evaluation", ""]
        if self.tables.get("metrics"):
            md += ["95% intervals: Wilson for accuracy, seeded bootstrap for mean class accuracy and macro-F1.", "",
                   markdown_table(metrics_rows(self.tables["metrics"]), METRICS_HEADER), ""]
        for name, why in self.skipped_sets.items():
            md.append(f"- {name}: skipped ({why})")
        for name, path in sorted(self.images.items()):
            md += [f"## {name.replace('_', ' ')}", "", f'<img src="{plots.image_data_uri(path)}" width="480"/>', ""]
        return out + [markdown(("evaluate", ds, "figures"), "\n".join(md),
                               f"{ds}: confusion matrices and robustness curves")]

    def summary(self) -> str:
        lines = [f"evaluate: {self.metrics_path}, {self.report_md} ({self.seconds:.1f}s; 95% intervals: "
                 f"Wilson for accuracy, bootstrap for mca and f1)"]
        for name, m in self.metrics.items():
            if isinstance(m, Mapping) and "accuracy" in m:
                lines.append(f"  {name:<24} n={m['n']:<6} acc={fmt_ci(m, 'accuracy')} "
                             f"mca={fmt_ci(m, 'mean_class_accuracy')} f1={fmt_ci(m, 'macro_f1')}")
        for name, why in self.skipped_sets.items():
            lines.append(f"  {name:<24} skipped: {why}")
        return "\n".join(lines)


def fmt_ci(m: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``0.830 [0.791, 0.863]``: a value and its 95% interval ("-" when undefined)."""
    return with_ci(_ci_columns(m, key), key, digits)


def _ci_columns(m: Mapping[str, Any], key: str) -> dict[str, Any]:
    ci = m.get(f"{key}_ci95") or {}
    return {key: m.get(key), f"{key}_lo": ci.get("lo"), f"{key}_hi": ci.get("hi")}


def _set_row(name: str, m: Mapping[str, Any]) -> dict[str, Any]:
    return {"set": name, "n": m["n"], **_ci_columns(m, "accuracy"), **_ci_columns(m, "mean_class_accuracy"),
            **_ci_columns(m, "macro_f1")}


GROUP_COLUMNS = ["accuracy", "accuracy_lo", "accuracy_hi", "n", "few"]
CURVE_COLUMNS = ["bin", "lo", "hi", "center", "n", "accuracy", "accuracy_lo", "accuracy_hi", "few"]


def _group_rows(what: str, groups: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{what: k, **_ci_columns(v, "accuracy"), "n": v["n"], "few": v["few"]} for k, v in groups.items()]


def _set_metrics(pred: Predictions, classes: Sequence[str], params: EvaluateParams) -> dict[str, Any]:
    m = classification_metrics(pred.y_true, pred.y_pred, classes, params.bootstrap_resamples, params.seed)
    m.pop("confusion")
    return m


def most_confident_mistakes(pred: Predictions, classes: Sequence[str], per_class: int) -> dict[str, list[dict]]:
    """Per true class, its wrong predictions by falling probability of the predicted class (ties:
    by key), at most ``per_class``."""
    conf = pred.y_prob[np.arange(len(pred.keys)), pred.y_pred] if len(pred.keys) else np.zeros(0)
    out: dict[str, list[dict]] = {}
    for c, name in enumerate(classes):
        idx = [i for i in np.flatnonzero((pred.y_true == c) & (pred.y_pred != c))]
        idx.sort(key=lambda i: (-float(conf[i]), pred.keys[i]))
        out[name] = [{"key": pred.keys[i], "actual": name, "predicted": classes[int(pred.y_pred[i])],
                      "confidence": round(float(conf[i]), 6)} for i in idx[:per_class]]
    return out


def _images(urls: Sequence[str], keys: set[str]) -> dict[str, np.ndarray]:
    from PIL import Image  # noqa: PLC0415

    found: dict[str, np.ndarray] = {}
    for url in urls:
        for key, fields in shards.iter_tar_samples(Path(url)):
            if key in keys and "jpg" in fields:
                found[key] = np.asarray(Image.open(io.BytesIO(fields["jpg"])).convert("RGB"))
    return found


def _write_set_outputs(name: str, pred: Predictions, m: Mapping[str, Any], urls: Sequence[str],
                       classes: list[str], params: EvaluateParams, plot_dir: Path,
                       tables: dict[str, list[dict[str, Any]]], images: dict[str, str]) -> None:
    """One set's predictions CSV, confusion CSV/PNG, per-class table and mistakes gallery."""
    conf = classification_metrics(pred.y_true, pred.y_pred, classes, 0)["confusion"]
    plots.write_csv(plot_dir / f"{name}_predictions.csv",
                    plots.prediction_rows(pred.keys, pred.y_true, pred.y_pred, pred.y_prob, classes),
                    plots.prediction_columns(classes))
    plots.write_csv(plot_dir / f"{name}_confusion.csv", plots.confusion_rows(conf, classes),
                    ["actual", "predicted", "count"])
    images[f"{name}_confusion"] = str(plots.confusion_png(
        conf, classes, plot_dir / f"{name}_confusion.png",
        f"{name} (n={len(pred.keys)}): accuracy {fmt_ci(m, 'accuracy')}"))
    tables[f"{name}_per_class"] = [{"class": c, **v} for c, v in m["per_class"].items()]
    if params.mistakes_per_class:
        worst = most_confident_mistakes(pred, classes, params.mistakes_per_class)
        tables[f"{name}_mistakes"] = [r for rows in worst.values() for r in rows]
        rgb = _images(urls, {r["key"] for r in tables[f"{name}_mistakes"]})
        shown = {c: [{**r, "rgb": rgb[r["key"]]} for r in rows if r["key"] in rgb] for c, rows in worst.items()}
        images[f"{name}_mistakes"] = str(plots.mistakes_jpg(
            shown, plot_dir / f"{name}_mistakes.jpg",
            f"{name}: most confident mistakes per true class (predicted, probability)"))


def _subset_metrics(clean: Predictions, subsets, classes: Sequence[str],
                    params: EvaluateParams) -> dict[str, tuple[Predictions, dict[str, Any]]]:
    """Per real subset (sorted by name): its slice of the clean predictions and its metrics, with
    ``by_code`` where the subset records codes."""
    out = {}
    for name, grp in subsets.groupby("subset", sort=True):
        pred = clean.subset(list(grp["key"]))
        m = _set_metrics(pred, classes, params)
        codes = dict(zip(grp["key"], grp["code"]))
        if any(c is not None for c in codes.values()):
            ok = pred.y_true == pred.y_pred
            m["by_code"] = group_accuracy(ok, [codes[k] or "none" for k in pred.keys], params.min_group_n)
        out[str(name)] = (pred, m)
    return out


def _synthetic_metrics(pred: Predictions, synthetic_meta, clean: Predictions | None, classes: Sequence[str],
                       params: EvaluateParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The synthetic-occlusion set's metrics, broken down by occluder, region and occluded
    fraction, plus the paired accuracy drop against the clean sources when ``clean`` is given;
    and the robustness curve's rows."""
    min_n = params.min_group_n
    m = _set_metrics(pred, classes, params)
    meta = synthetic_meta.set_index("key").loc[pred.keys]
    ok = pred.y_true == pred.y_pred
    m["by_occluder"] = group_accuracy(ok, list(meta["occluder"]), min_n)
    m["by_region"] = group_accuracy(ok, [list(r) for r in meta["regions"]], min_n)
    curve = robustness_curve(meta["occluded_fraction"].to_numpy(), ok, params.fraction_bins, min_n)
    m["by_fraction"] = {r["bin"]: {"accuracy": r["accuracy"],
                                   "accuracy_ci95": None if r["accuracy_lo"] is None else
                                   {"lo": r["accuracy_lo"], "hi": r["accuracy_hi"]},
                                   "n": r["n"], "few": r["few"]} for r in curve}
    if clean is not None and "source_key" in meta:
        # Paired: each occluded image against its own clean source image.
        clean_ok = dict(zip(clean.keys, (clean.y_true == clean.y_pred).tolist()))
        pairs = [(clean_ok[s], o) for s, o in zip(meta["source_key"], ok.tolist()) if s in clean_ok]
        if pairs:
            c_ok, o_ok = (np.asarray(v, bool) for v in zip(*pairs))
            m.update(accuracy_drop(c_ok, o_ok, params.bootstrap_resamples, params.seed))
    return m, curve


def _write_synthetic_breakdowns(m: Mapping[str, Any], curve: list[dict[str, Any]], clean_accuracy,
                                plot_dir: Path, tables: dict[str, list[dict[str, Any]]],
                                images: dict[str, str]) -> None:
    """by_occluder / by_region / robustness tables, CSVs and PNGs."""
    for what in ("by_occluder", "by_region"):
        rows = _group_rows(what[3:], m[what])
        tables[what] = rows
        plots.write_csv(plot_dir / f"{what}.csv", rows, [what[3:], *GROUP_COLUMNS])
        images[what] = str(plots.bars_png(m[what], plot_dir / f"{what}.png",
                                          f"{SYNTHETIC}: accuracy {what.replace('_', ' ')}", clean_accuracy))
    tables["robustness"] = curve
    plots.write_csv(plot_dir / "robustness.csv", curve, CURVE_COLUMNS)
    images["robustness"] = str(plots.robustness_png({SYNTHETIC: curve}, plot_dir / "robustness.png"))


def evaluate_sets(predictor: Predictor, clean_urls: Sequence[str], out_dir: str | os.PathLike,
                  params: EvaluateParams, subsets=None, synthetic_urls: Sequence[str] | None = None,
                  synthetic_meta=None) -> EvaluateReport:
    """Predict each set, compute metrics, write ``<out_dir>/metrics.json``, ``<out_dir>/plots`` and
    ``<out_dir>/report.md``.

    ``subsets``: DataFrame (subset, key, code) of the clean split's keys (see
    :mod:`ferpipe.occlusion.subsets`); ``synthetic_meta``: the synthetic-occlusion metadata
    DataFrame (key, source_key, occluder, regions, occluded_fraction)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    classes = list(predictor.label_space["classes"])
    metrics: dict[str, Any] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    images: dict[str, str] = {}
    skipped: dict[str, str] = {}
    check = getattr(predictor, "check", None)

    def set_outputs(name: str, pred: Predictions, m: Mapping[str, Any], urls: Sequence[str]) -> None:
        _write_set_outputs(name, pred, m, urls, classes, params, plot_dir, tables, images)

    clean = None
    if CLEAN in params.sets or "subsets" in params.sets:
        if callable(check):
            check(clean_urls, f"{params.split} split")
        clean = predictor.predict(clean_urls)
    if clean is not None and CLEAN in params.sets:
        metrics[CLEAN] = _set_metrics(clean, classes, params)
        set_outputs(CLEAN, clean, metrics[CLEAN], clean_urls)
        if params.tsne and clean.features is not None and len(clean.keys) >= 10:
            images["tsne"] = str(plots.tsne_png(clean.features, clean.y_true, classes, plot_dir / "tsne.png",
                                                params.seed, params.tsne_max_points, f"t-SNE ({params.split})"))
    if "subsets" in params.sets:
        if subsets is None or len(subsets) == 0:
            skipped["subsets"] = "no real subsets built (occlusion.subsets is empty)"
        else:
            rows = []
            for name, (pred, m) in _subset_metrics(clean, subsets, classes, params).items():
                metrics[name] = m
                rows.append(_set_row(name, m))
                set_outputs(name, pred, m, clean_urls)
            tables["subsets"] = rows
    if SYNTHETIC in params.sets:
        if not synthetic_urls or synthetic_meta is None:
            skipped[SYNTHETIC] = "no synthetic-occlusion shards (run the occlusion stage)"
        else:
            if callable(check):
                check(synthetic_urls, SYNTHETIC)
            pred = predictor.predict(synthetic_urls)
            m, curve = _synthetic_metrics(pred, synthetic_meta, clean if CLEAN in metrics else None,
                                          classes, params)
            metrics[SYNTHETIC] = m
            set_outputs(SYNTHETIC, pred, m, synthetic_urls)
            _write_synthetic_breakdowns(m, curve, metrics.get(CLEAN, {}).get("accuracy"), plot_dir, tables, images)
    tables["metrics"] = [_set_row(k, v) for k, v in metrics.items() if isinstance(v, Mapping) and "accuracy" in v]
    metrics["intervals"] = interval_methods(params.bootstrap_resamples, params.seed, params.min_group_n)
    describe = getattr(predictor, "describe", None)
    if callable(describe):
        d = describe()
        metrics["model"] = {"checkpoint": d.get("checkpoint"), "epoch": d.get("epoch")}
    mpath = out_dir / "metrics.json"
    shards.write_json_atomic(mpath, metrics)
    report = EvaluateReport(metrics=metrics, tables=tables, images=images, skipped_sets=skipped,
                            seconds=round(time.perf_counter() - t0, 3), metrics_path=str(mpath))
    report.report_md = str(write_report_md(report, out_dir / "report.md"))
    return report


def _split_urls(shards_dir: Path, split: str) -> list[str]:
    """The shards of ``evaluate.split``, or an error listing the splits that exist."""
    if not shards.index_path(shards_dir, split).is_file():
        have = sorted(p.name[: -len(shards.INDEX_SUFFIX)] for p in shards_dir.glob(f"*{shards.INDEX_SUFFIX}")) \
            if shards_dir.is_dir() else []
        raise ConfigError(f"evaluate.split = {split!r}: {shards_dir} has no such split"
                          + (f"; it has {', '.join(have)}" if have else
                             "; it holds no shard index (run the stages before evaluate)"))
    return shards.shard_urls(shards_dir, split)


class EvaluateStage:
    """``ferpipe evaluate``: the trained model on the evaluation sets (see the module doc)."""

    name = "evaluate"

    def run(self, params, layout: Layout, progress: Progress | None = None,
            predictor: Predictor | None = None) -> EvaluateReport:
        return run_evaluate(params, layout.root, predictor)


EVALUATE = EvaluateStage()


def run_evaluate(params, root: Path = Path("."), predictor: Predictor | None = None) -> EvaluateReport:
    """The evaluate stage on the whole :class:`Params` (``predictor``: default, the checkpoint
    ``evaluate.checkpoint`` names)."""
    from ferpipe.occlusion.subsets import read_subsets  # noqa: PLC0415
    from ferpipe.occlusion.synthetic import metadata_path, read_metadata  # noqa: PLC0415

    layout = Layout(Path(root))
    p: EvaluateParams = params.evaluate
    dataset = params.download.dataset
    shards_dir = layout.param_path("evaluate.shards_dir", p.shards_dir, layout.shards("priors", dataset))
    occ_dir = layout.param_path("evaluate.occlusion_dir", p.occlusion_dir, layout.shards("occlusion", dataset))
    clean_urls = _split_urls(shards_dir, p.split)
    if predictor is None:
        ckpt = layout.param_path("evaluate.checkpoint", p.checkpoint, layout.models / "train" / dataset / "best.pt")
        predictor = CheckpointPredictor(ckpt, p.device, p.batch_size, p.num_workers,
                                        expected_label_space=shards_label_space(clean_urls))
    syn_urls = syn_meta = None
    if (occ_dir / f"{SYNTHETIC}_index.json").is_file() and metadata_path(occ_dir).is_file():
        syn_urls = shards.shard_urls(occ_dir, SYNTHETIC)
        syn_meta = read_metadata(metadata_path(occ_dir))
    report = evaluate_sets(predictor, clean_urls, layout.reports, p, read_subsets(occ_dir), syn_urls, syn_meta)
    report.dataset = dataset
    write_report(layout.stage_report("evaluate", dataset), report.to_dict())
    return report


__all__ = ["EVALUATE", "EvaluateReport", "check_label_map", "evaluate_sets", "run_evaluate"]
