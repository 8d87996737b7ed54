"""The evaluate stage: a model on the clean test split, the real occlusion/pose subsets and the
synthetic-occlusion set -> ``reports/metrics.json`` and ``reports/plots/``.

``reports/metrics.json`` (DVC metrics; nested, so DVC shows dotted keys)::

    {"clean": {"accuracy", "mean_class_accuracy", "macro_f1", "n", "recall": {class: r}},
     "<subset>": {... , "by_code": {"code_1": {"accuracy", "n"}, ...}},
     "synthetic-occlusion": {..., "by_occluder": {...}, "by_region": {"eyes": ...},
                             "by_fraction": {"0.00-0.10": ...}, "accuracy_drop": clean - occluded},
     "model": {...}}

(``clean`` is the clean ``evaluate.split``; ``by_*`` values are ``{"accuracy", "n"}``.)
``reports/plots/``: ``<set>_predictions.csv`` (key, actual, predicted: DVC's confusion template),
``<set>_confusion.csv`` / ``.png``, ``robustness.csv`` / ``.png``, ``by_occluder.csv`` / ``.png``,
``by_region.csv`` / ``.png``, optionally ``tsne.png``. DVC's HTML needs the network for its
plotting library, so the PNGs are what people look at offline.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ferpipe import shards
from ferpipe.evaluate import plots
from ferpipe.evaluate.metrics import classification_metrics, group_accuracy, robustness_curve
from ferpipe.evaluate.params import EvaluateParams
from ferpipe.evaluate.predict import CheckpointPredictor, Predictions, Predictor, check_label_map, shards_label_space
from ferpipe.errors import ConfigError
from ferpipe.layout import Layout

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"evaluate: {self.metrics_path} ({self.seconds:.1f}s)"]
        for name, m in self.metrics.items():
            if isinstance(m, Mapping) and "accuracy" in m:
                acc = m["accuracy"]
                lines.append(f"  {name:<24} n={m['n']:<6} acc={'-' if acc is None else f'{acc:.4f}'} "
                             f"mca={_f(m.get('mean_class_accuracy'))} f1={_f(m.get('macro_f1'))}")
        for name, why in self.skipped_sets.items():
            lines.append(f"  {name:<24} skipped: {why}")
        return "\n".join(lines)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _set_metrics(pred: Predictions, classes: Sequence[str]) -> dict[str, Any]:
    m = classification_metrics(pred.y_true, pred.y_pred, classes)
    m.pop("confusion")
    return m


def evaluate_sets(predictor: Predictor, clean_urls: Sequence[str], out_dir: str | os.PathLike,
                  params: EvaluateParams, subsets=None, synthetic_urls: Sequence[str] | None = None,
                  synthetic_meta=None) -> EvaluateReport:
    """Predict each set, compute metrics, write ``<out_dir>/metrics.json`` and ``<out_dir>/plots``.

    ``subsets``: DataFrame (subset, key, code) of the clean split's keys (see
    :mod:`ferpipe.occlusion.subsets`); ``synthetic_meta``: the synthetic-occlusion metadata
    DataFrame (key, occluder, regions, occluded_fraction)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    classes = list(predictor.label_space["classes"])
    metrics: dict[str, Any] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    images: dict[str, str] = {}
    skipped: dict[str, str] = {}
    check = getattr(predictor, "check", None)

    def confusion_outputs(name: str, pred: Predictions) -> None:
        conf = classification_metrics(pred.y_true, pred.y_pred, classes)["confusion"]
        plots.write_csv(plot_dir / f"{name}_predictions.csv",
                        plots.sample_rows(pred.keys, pred.y_true, pred.y_pred, classes), ["key", "actual", "predicted"])
        plots.write_csv(plot_dir / f"{name}_confusion.csv", plots.confusion_rows(conf, classes),
                        ["actual", "predicted", "count"])
        images[f"{name}_confusion"] = str(plots.confusion_png(conf, classes, plot_dir / f"{name}_confusion.png",
                                                              f"{name} (n={len(pred.keys)})"))

    clean = None
    if CLEAN in params.sets or "subsets" in params.sets:
        if callable(check):
            check(clean_urls, f"{params.split} split")
        clean = predictor.predict(clean_urls)
    if clean is not None and CLEAN in params.sets:
        metrics[CLEAN] = _set_metrics(clean, classes)
        confusion_outputs(CLEAN, clean)
        if params.tsne and clean.features is not None and len(clean.keys) >= 10:
            images["tsne"] = str(plots.tsne_png(clean.features, clean.y_true, classes, plot_dir / "tsne.png",
                                                params.seed, params.tsne_max_points, f"t-SNE ({params.split})"))
    if "subsets" in params.sets:
        if subsets is None or len(subsets) == 0:
            skipped["subsets"] = "no real subsets built (occlusion.subsets is empty)"
        else:
            rows = []
            for name, grp in subsets.groupby("subset", sort=True):
                pred = clean.subset(list(grp["key"]))
                m = _set_metrics(pred, classes)
                codes = dict(zip(grp["key"], grp["code"]))
                if any(c is not None for c in codes.values()):
                    ok = pred.y_true == pred.y_pred
                    m["by_code"] = group_accuracy(ok, [codes[k] or "none" for k in pred.keys])
                metrics[str(name)] = m
                rows.append({"set": str(name), "n": m["n"], "accuracy": m["accuracy"],
                             "mean_class_accuracy": m["mean_class_accuracy"], "macro_f1": m["macro_f1"]})
                confusion_outputs(str(name), pred)
            tables["subsets"] = rows
    if SYNTHETIC in params.sets:
        if not synthetic_urls or synthetic_meta is None:
            skipped[SYNTHETIC] = "no synthetic-occlusion shards (run the occlusion stage)"
        else:
            if callable(check):
                check(synthetic_urls, SYNTHETIC)
            pred = predictor.predict(synthetic_urls)
            m = _set_metrics(pred, classes)
            meta = synthetic_meta.set_index("key").loc[pred.keys]
            ok = pred.y_true == pred.y_pred
            m["by_occluder"] = group_accuracy(ok, list(meta["occluder"]))
            m["by_region"] = group_accuracy(ok, [list(r) for r in meta["regions"]])
            curve = robustness_curve(meta["occluded_fraction"].to_numpy(), ok, params.fraction_bins)
            m["by_fraction"] = {r["bin"]: {"accuracy": r["accuracy"], "n": r["n"]} for r in curve}
            if CLEAN in metrics and metrics[CLEAN]["accuracy"] is not None and m["accuracy"] is not None:
                m["accuracy_drop"] = round(metrics[CLEAN]["accuracy"] - m["accuracy"], 6)
            metrics[SYNTHETIC] = m
            confusion_outputs(SYNTHETIC, pred)
            for what in ("by_occluder", "by_region"):
                rows = [{what[3:]: k, **v} for k, v in m[what].items()]
                tables[what] = rows
                plots.write_csv(plot_dir / f"{what}.csv", rows, [what[3:], "accuracy", "n"])
                ref = metrics.get(CLEAN, {}).get("accuracy")
                images[what] = str(plots.bars_png(m[what], plot_dir / f"{what}.png",
                                                  f"{SYNTHETIC}: accuracy {what.replace('_', ' ')}", ref))
            tables["robustness"] = curve
            plots.write_csv(plot_dir / "robustness.csv", curve, ["bin", "lo", "hi", "center", "n", "accuracy"])
            images["robustness"] = str(plots.robustness_png({SYNTHETIC: curve}, plot_dir / "robustness.png"))
    tables["metrics"] = [{"set": k, "n": v["n"], "accuracy": v["accuracy"],
                          "mean_class_accuracy": v["mean_class_accuracy"], "macro_f1": v["macro_f1"]}
                         for k, v in metrics.items() if isinstance(v, Mapping) and "accuracy" in v]
    tables["recall"] = [{"set": k, **v["recall"]} for k, v in metrics.items()
                        if isinstance(v, Mapping) and "recall" in v]
    describe = getattr(predictor, "describe", None)
    if callable(describe):
        d = describe()
        metrics["model"] = {"checkpoint": d.get("checkpoint"), "epoch": d.get("epoch")}
    mpath = out_dir / "metrics.json"
    shards.write_json_atomic(mpath, metrics)
    return EvaluateReport(metrics=metrics, tables=tables, images=images, skipped_sets=skipped,
                          seconds=round(time.perf_counter() - t0, 3), metrics_path=str(mpath))


def _split_urls(shards_dir: Path, split: str) -> list[str]:
    """The shards of ``evaluate.split``, or an error listing the splits that exist."""
    if not shards.index_path(shards_dir, split).is_file():
        have = sorted(p.name[: -len(shards.INDEX_SUFFIX)] for p in shards_dir.glob(f"*{shards.INDEX_SUFFIX}")) \
            if shards_dir.is_dir() else []
        raise ConfigError(f"evaluate.split = {split!r}: {shards_dir} has no such split"
                          + (f"; it has {', '.join(have)}" if have else
                             "; it holds no shard index (run the stages before evaluate)"))
    return shards.shard_urls(shards_dir, split)


def run_evaluate(params, root: Path = Path("."), predictor: Predictor | None = None) -> EvaluateReport:
    """Entry point for ``ferpipe evaluate --no-flow``: takes the whole :class:`Params`."""
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
    shards.write_json_atomic(layout.stage_report("evaluate", dataset), report.to_dict())
    return report


__all__ = ["EvaluateReport", "check_label_map", "evaluate_sets", "run_evaluate"]
