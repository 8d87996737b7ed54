"""The evaluate package: metrics against hand-computed values, label-map refusal, robustness
binning, and the whole stage (metrics.json + plots) with a stand-in predictor."""

from __future__ import annotations

import json
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
    assert m["recall"] == {"a": pytest.approx(0.75), "b": pytest.approx(0.5), "c": pytest.approx(0.5)}
    assert m["mean_class_accuracy"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    # precision a 3/4, b 1/2, c 1/2 -> F1 a 0.75, b 0.5, c 0.5
    assert m["macro_f1"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 1]]
    # A class absent from y_true: recall None, left out of the means.
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["recall"]["c"] is None and m["mean_class_accuracy"] == pytest.approx(0.75)
    g = group_accuracy([True, False, True], [["eyes", "nose"], ["eyes"], "mouth"])
    assert g == {"eyes": {"accuracy": 0.5, "n": 2}, "mouth": {"accuracy": 1.0, "n": 1},
                 "nose": {"accuracy": 1.0, "n": 1}}


def test_robustness_binning():
    edges = [0.0, 0.1, 0.3, 1.0]
    assert assign_bins([0.0, 0.05, 0.1, 0.29, 0.3, 1.0, 1.2, -0.1], edges).tolist() == [0, 0, 1, 1, 2, 2, -1, -1]
    rows = robustness_curve([0.0, 0.05, 0.2, 0.5, 1.0], [True, False, True, False, False], edges)
    assert [(r["bin"], r["n"], r["accuracy"]) for r in rows] == [("0.00-0.10", 2, 0.5), ("0.10-0.30", 1, 1.0),
                                                               ("0.30-1.00", 2, 0.0)]
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
                             evaluate=EvaluateParams(tsne=True, fraction_bins=[0.0, 0.2, 0.4, 1.0]))
    fake = FakePredictor()
    rep = run_evaluate(params, tmp_path, predictor=fake)
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
    assert (plots / "clean_predictions.csv").read_text().splitlines()[0] == "key,actual,predicted"
    assert len(fake.calls) == 2                       # clean split once (subsets reuse it), synthetic once
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
