"""The evaluate package: metrics against hand-computed values, label-map refusal, robustness
binning, and the whole stage (metrics.json + plots) with a stand-in predictor."""

from __future__ import annotations

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ferpipe import shards
from ferpipe.evaluate import (
    CheckpointPredictor,
    EvaluateParams,
    LabelMapMismatchError,
    Predictions,
    assign_bins,
    check_label_map,
    classification_metrics,
    group_accuracy,
    robustness_curve,
    run_evaluate,
)
from ferpipe.labels import BASIC7
from ferpipe.occlusion import OcclusionParams, synthetic_occlusion_stage
from tests.test_occlusion import Recorder, _write_priors

CLASSES = list(BASIC7.classes)


def test_metrics_hand_computed():
    # 3 classes; true 0,0,0,0,1,1,2,2 ; pred 0,0,0,1,1,2,2,0
    y_true = [0, 0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2, 0]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["n"] == 8 and m["accuracy"] == pytest.approx(5 / 8)
    assert {c: v["recall"] for c, v in m["per_class"].items()} == \
        {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": pytest.approx(0.5)}
    assert {c: v["precision"] for c, v in m["per_class"].items()} == \
        {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": pytest.approx(0.5)}
    assert [v["n"] for v in m["per_class"].values()] == [4, 2, 2]
    assert m["mean_class_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    # precision a 3/4, b 1/2, c 1/2 -> F1 a 0.75, b 0.5, c 0.5
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 1]]
    # A class absent from y_true: recall None, left out of the means.
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "n": 0}
    assert m["mean_class_accuracy"] == pytest.approx(0.75)
    g = group_accuracy([True, False, True], [["eyes", "nose"], ["eyes"], "mouth"])
    assert {k: (v["accuracy"], v["n"], v["few"]) for k, v in g.items()} == \
        {"eyes": (0.5, 2, True), "mouth": (1.0, 1, True), "nose": (1.0, 1, True)}
    assert group_accuracy([True] * 30, ["a"] * 30)["a"]["few"] is False


def test_intervals():
    from ferpipe.evaluate.metrics import bootstrap_interval, wilson_interval

    # Wilson score interval, 95% (z = 1.96): 8 of 10 -> [0.4902, 0.9433], computed by hand from the formula.
    ci = wilson_interval(8, 10)
    assert ci["lo"] == pytest.approx(0.4902, abs=1e-4) and ci["hi"] == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) is None and wilson_interval(0, 5)["lo"] == 0.0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = np.where(rng.random(200) < 0.7, y, (y + 1) % 3)
    m = classification_metrics(y, p, ["a", "b", "c"], n_resamples=300, seed=1)
    for key in ("accuracy", "mean_class_accuracy", "macro_f1"):
        ci = m[f"{key}_ci95"]
        assert ci["lo"] < m[key] < ci["hi"] and ci["hi"] - ci["lo"] < 0.2, key
    # seeded: the same interval twice; another seed, another one; no resamples, no interval
    assert classification_metrics(y, p, ["a", "b", "c"], n_resamples=300, seed=1) == m
    assert classification_metrics(y, p, ["a", "b", "c"], 300, seed=2)["macro_f1_ci95"] != m["macro_f1_ci95"]
    assert classification_metrics(y, p, ["a", "b", "c"], n_resamples=0)["macro_f1_ci95"] is None
    assert bootstrap_interval(np.mean, (np.ones(1),), 100, 0) is None
    # The bootstrap's vectorised statistics are sklearn's metrics (checked on random label sets,
    # including ones missing classes in the truth or the predictions).
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from ferpipe.evaluate.metrics import macro_f1_statistic, mean_class_accuracy_statistic

    for seed in range(20):
        r = np.random.default_rng(seed)
        t, q = r.integers(0, 4, 30) % (2 + seed % 3), r.integers(0, 5, 30)
        present = sorted(set(t.tolist()))
        assert macro_f1_statistic(present, 5)(t, q) == pytest.approx(
            f1_score(t, q, labels=present, average="macro", zero_division=0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert mean_class_accuracy_statistic(5)(t, q) == pytest.approx(balanced_accuracy_score(t, q))
        batch = np.stack([t, t[::-1]]), np.stack([q, q])
        assert macro_f1_statistic(present, 5)(*batch)[1] == pytest.approx(macro_f1_statistic(present, 5)(t[::-1], q))


def test_macro_f1_is_the_confusion_matrix_formula():
    """The macro-F1 the trainer logs and the evaluation reports (scikit-learn's) is 2tp / (row +
    column) averaged over the classes present in the truth (the trainer's former hand-written
    formula), on random label sets missing classes in the truth, the predictions or both."""
    from ferpipe.evaluate.metrics import macro_f1

    for seed in range(40):
        r = np.random.default_rng(seed)
        n = int(r.integers(1, 80))
        t, q = r.integers(0, 7, n) % (1 + seed % 7), r.integers(0, 7, n) % (1 + seed // 6)
        conf = np.zeros((7, 7), np.int64)
        np.add.at(conf, (t, q), 1)
        tp, den, present = np.diag(conf), conf.sum(0) + conf.sum(1), conf.sum(1) > 0
        assert macro_f1(t, q) == pytest.approx(float(np.mean(2 * tp[present] / den[present])), abs=1e-12)
    assert macro_f1([1, 1, 2], [1, 1, 2]) == 1.0 and macro_f1([3, 3], [0, 0]) == 0.0
    assert np.isnan(macro_f1([], []))


def test_robustness_binning():
    edges = [0.0, 0.1, 0.3, 1.0]
    assert assign_bins([0.0, 0.05, 0.1, 0.29, 0.3, 1.0, 1.2, -0.1], edges).tolist() == [0, 0, 1, 1, 2, 2, -1, -1]
    rows = robustness_curve([0.0, 0.05, 0.2, 0.5, 1.0], [True, False, True, False, False], edges)
    assert [(r["bin"], r["n"], r["accuracy"]) for r in rows] == [("0.00-0.10", 2, 0.5), ("0.10-0.30", 1, 1.0),
                                                               ("0.30-1.00", 2, 0.0)]
    assert all(r["few"] and r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"] for r in rows)
    assert robustness_curve([0.05], [True], edges)[2]["accuracy"] is None
    with pytest.raises(ValueError):
        EvaluateParams(fraction_bins=[0.0, 0.5, 0.5])


def test_label_map_mismatch_shows_both_maps(tmp_path):
    check_label_map(BASIC7.name, {"name": "basic7", "classes": CLASSES})
    swapped = CLASSES[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(LabelMapMismatchError) as e:
        check_label_map({"name": "mine", "classes": swapped}, "basic7", "checkpoint best.pt", "test split")
    msg = str(e.value)
    assert "'mine'" in msg and "'basic7'" in msg and "<-" in msg and swapped[0] in msg and CLASSES[0] in msg
    # The checkpoint loader refuses before building any model.
    import torch

    from ferpipe.train.checkpoint import FORMAT

    torch.save({"format": FORMAT, "label_space": {"name": "basic8", "classes": CLASSES + ["contempt"]}},
               tmp_path / "best.pt")
    with pytest.raises(LabelMapMismatchError, match="contempt"):
        CheckpointPredictor(tmp_path / "best.pt", expected_label_space="basic7")


class FakePredictor:
    """Reads keys and labels from the shards; right on every other key (by sorted order)."""

    label_space = {"name": "basic7", "classes": CLASSES}

    def __init__(self):
        self.calls = []

    def predict(self, urls):
        self.calls.append(list(urls))
        keys, y = [], []
        for u in urls:
            for name, data in shards.iter_tar_members(u):
                if name.endswith(".cls"):
                    keys.append(name.split(".")[0])
                    y.append(int(data))
        order = np.argsort(keys)
        keys = [keys[i] for i in order]
        y = np.asarray(y, np.int64)[order]
        pred = np.where(np.arange(len(y)) % 2 == 0, y, (y + 1) % 7)
        prob = np.eye(7, dtype=np.float32)[pred]
        return Predictions(keys, y, pred, prob, np.c_[y, np.arange(len(y))].astype(np.float32))


def test_run_evaluate_writes_metrics_and_plots(tmp_path):
    ds = tmp_path / "data"
    _write_priors(ds / "priors" / "ds", n=12)
    synthetic_occlusion_stage(ds / "priors" / "ds", ds / "occlusion" / "ds", OcclusionParams(), Recorder(), "ds",
                              progress=False)
    pd.DataFrame([{"subset": "occlusion-rafdb", "key": f"test_{i:04d}", "code": f"code_{i % 2 + 1}",
                   "list_label": "0"} for i in range(6)]).to_parquet(ds / "occlusion" / "ds" / "subsets.parquet")
    params = SimpleNamespace(download=SimpleNamespace(dataset="ds"),
                             evaluate=EvaluateParams(tsne=True, fraction_bins=[0.0, 0.2, 0.4, 1.0],
                                                     bootstrap_resamples=200, mistakes_per_class=2))
    fake = FakePredictor()
    rep = run_evaluate(params, tmp_path, predictor=fake)
    reports = tmp_path / "reports"
    first = {p: p.read_bytes() for p in sorted(reports.rglob("*")) if p.is_file() and "timings" not in p.parts}
    m = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert m["clean"]["accuracy"] == pytest.approx(0.5) and m["clean"]["n"] == 12
    assert m["occlusion-rafdb"]["n"] == 6 and set(m["occlusion-rafdb"]["by_code"]) == {"code_1", "code_2"}
    syn = m["synthetic-occlusion"]
    assert syn["n"] == 12 and syn["accuracy"] == pytest.approx(0.5) and syn["accuracy_drop"] == pytest.approx(0.0)
    assert sum(v["n"] for v in syn["by_occluder"].values()) == 12
    assert set(syn["by_fraction"]) == {"0.00-0.20", "0.20-0.40", "0.40-1.00"}
    assert sum(v["n"] for v in syn["by_fraction"].values()) == 12
    assert syn["by_region"] and all(0 <= v["accuracy"] <= 1 for v in syn["by_region"].values())
    plots = tmp_path / "reports" / "plots"
    for f in ("clean_confusion.png", "clean_confusion.csv", "clean_predictions.csv", "robustness.png",
              "robustness.csv", "by_occluder.png", "by_region.csv", "synthetic-occlusion_confusion.png",
              "occlusion-rafdb_confusion.png", "tsne.png"):
        assert (plots / f).stat().st_size > 0, f
    assert len(fake.calls) == 2                       # clean split once (subsets reuse it), synthetic once

    # Every accuracy has its 95% interval, every group its n and few flag; the methods are stated.
    def walk(node):
        if isinstance(node, dict):
            if "accuracy" in node:
                yield node
            for v in node.values():
                yield from walk(v)
    accs = list(walk(m))
    assert len(accs) > 20
    for a in accs:
        ci = a["accuracy_ci95"]
        assert ci["lo"] <= a["accuracy"] <= ci["hi"], a
    assert all(isinstance(g["few"], bool) for g in syn["by_occluder"].values())
    assert m["intervals"]["accuracy_method"] == "Wilson score interval"
    assert "200 resamples" in m["intervals"]["mean_class_accuracy_and_macro_f1_method"]
    assert m["clean"]["macro_f1_ci95"]["lo"] <= m["clean"]["macro_f1"] <= m["clean"]["macro_f1_ci95"]["hi"]
    assert syn["accuracy_drop_pairs"] == 12 and syn["accuracy_drop_ci95"] is not None
    assert set(m["clean"]["per_class"]["anger"]) == {"precision", "recall", "f1", "n"}
    # predictions with every class probability
    pred = pd.read_csv(plots / "clean_predictions.csv")
    assert list(pred.columns) == ["key", "actual", "predicted", "confidence", *(f"p_{c}" for c in CLASSES)]
    assert np.allclose(pred[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1) and len(pred) == 12
    assert list(pd.read_csv(plots / "robustness.csv").columns)[-3:] == ["accuracy_lo", "accuracy_hi", "few"]
    # the mistakes gallery: FakePredictor is wrong on every other key, with probability 1
    mistakes = rep.tables["clean_mistakes"]
    assert mistakes and all(r["actual"] != r["predicted"] and r["confidence"] == 1.0 for r in mistakes)
    assert max(sum(r["actual"] == c for r in mistakes) for c in CLASSES) <= 2
    assert (plots / "clean_mistakes.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert (plots / "synthetic-occlusion_mistakes.jpg").exists()
    # one offline report: tables with intervals, every figure it links exists
    md = (reports / "report.md").read_text()
    assert "Wilson" in md and "| clean | 12 | 0.500 [" in md and "few samples" in md
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert "plots/clean_mistakes.jpg" in links and "plots/robustness.png" in links
    assert all((reports / link).is_file() for link in links)
    # a rerun rewrites every report byte for byte; this run's timings sit apart (not DVC-tracked)
    run_evaluate(params, tmp_path, predictor=FakePredictor())
    again = {p: p.read_bytes() for p in sorted(reports.rglob("*")) if p.is_file() and "timings" not in p.parts}
    assert again.keys() == first.keys() and [p for p in first if first[p] != again[p]] == []
    assert "seconds" not in json.loads((reports / "evaluate" / "ds.json").read_text())
    assert json.loads((reports / "timings" / "evaluate" / "ds.json").read_text())["seconds"] >= 0
    assert "synthetic-occlusion" in rep.summary() and rep.tables["robustness"][0]["bin"] == "0.00-0.20"
    assert set(rep.images) >= {"clean_confusion", "robustness", "by_occluder", "by_region"}


def test_missing_synthetic_set_is_skipped_and_reported(tmp_path):
    _write_priors(tmp_path / "data" / "priors" / "ds", n=4)
    params = SimpleNamespace(download=SimpleNamespace(dataset="ds"), evaluate=EvaluateParams())
    rep = run_evaluate(params, tmp_path, predictor=FakePredictor())
    assert set(rep.skipped_sets) == {"subsets", "synthetic-occlusion"} and "clean" in rep.metrics
    assert "skipped" in rep.summary()


def test_checkpoint_predictor_on_a_real_model(tmp_path):
    """A checkpoint as the trainer writes it (untrained orsanet-cpu) predicts every test sample."""
    import torch

    from ferpipe.models import create_model
    from ferpipe.train import data as D
    from ferpipe.train.checkpoint import FORMAT, save_atomic
    from ferpipe.train.fixtures import write_random_priors
    from ferpipe.train.presets import get_preset, model_kwargs

    root = write_random_priors(tmp_path / "p", kind="maps", counts=(8, 4, 6), size=112, samples_per_shard=4)
    ss = D.probe_shards(root)
    cfg = get_preset("orsanet-cpu")
    kw = model_kwargs(cfg, ss.facts)
    torch.manual_seed(0)
    model = create_model(cfg.model, **kw)
    save_atomic({"format": FORMAT, "model": model.state_dict(), "label_space": ss.label_space,
                 "config": cfg.to_dict(), "model_name": cfg.model, "model_kwargs": kw,
                 "data": {"prior_kind": ss.prior_kind}}, tmp_path / "best.pt")
    p = CheckpointPredictor(tmp_path / "best.pt", expected_label_space="basic7")
    urls = shards.shard_urls(root, "test")
    p.check(urls)
    pr = p.predict(urls)
    assert pr.keys == sorted(pr.keys) and len(pr.keys) == 6 and pr.y_prob.shape == (6, 7)
    assert np.allclose(pr.y_prob.sum(1), 1, atol=1e-5) and pr.features is not None and len(pr.features) == 6
    assert pr.y_true.tolist() == [i % 7 for i in range(6)]
