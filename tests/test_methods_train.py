"""Every method's CPU preset trains through the one trainer and its checkpoint evaluates.

Each preset is run as configured (model, loss, input recipe: crops, RandAugment, normalisation,
drop_last) at 56 px for two short epochs on the trainer's tiny learnable shards; the loss must
go down and the best checkpoint must load in the evaluate stage's predictor.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ferpipe.evaluate.predict import CheckpointPredictor
from ferpipe.train import data as D
from ferpipe.train import presets
from ferpipe.train.fixtures import write_random_priors
from ferpipe.train.loop import RunOptions, fit
from ferpipe.train.params import TrainParams

torch.set_num_threads(1)
SIZE = 56

METHODS = ["ran", "dacl", "ada_df", "mfer", "resnet18", "ir50_baseline"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> D.ShardSet:
    root = write_random_priors(tmp_path_factory.mktemp("shards"), "maps", counts=(96, 21, 21), size=SIZE,
                               samples_per_shard=48)
    return D.probe_shards(root)


def _small(cfg: presets.TrainConfig) -> presets.TrainConfig:
    change = {"img_size": SIZE, "epochs": 3, "batch_size": 16, "eval_batch_size": 32, "warmup_epochs": 0,
              "shuffle_buffer": 64, "scheduler": "none", "lr": 3e-4 if cfg.optimizer != "sgd" else 0.01}
    if cfg.resize_to:
        change["resize_to"] = SIZE + 8
    if cfg.model == "ran":  # eight trunk passes per image: keep it small
        change["img_size"] = 32
    if cfg.model == "ir50_baseline":
        change["model_kwargs"] = {**cfg.model_kwargs, "input_size": None}
    return dataclasses.replace(cfg, **change)


@pytest.mark.parametrize("model", METHODS)
def test_cpu_preset_trains_and_its_checkpoint_evaluates(model, shards, tmp_path):
    cfg = _small(presets.resolve(TrainParams(model=model)))
    assert cfg.preset == f"{model}-cpu" and cfg.priors is False
    res = fit(cfg, shards, tmp_path / model, RunOptions(num_workers=0, progress=False))
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    pred = CheckpointPredictor(tmp_path / model / "best.pt", device="cpu", batch_size=16)
    out = pred.predict(shards.urls("test"))
    assert len(out.keys) == 21 and out.y_prob.shape == (21, 7)
    # The predictor rebuilds the run's own inputs from the checkpoint: same accuracy as the trainer's test.
    assert abs(float((out.y_pred == out.y_true).mean()) - res.test["acc"]) < 1e-9


def test_every_method_has_a_release_and_a_cpu_preset():
    names = set(presets.list_presets())
    for m in METHODS + ["orsanet"]:
        assert f"{m}-cpu" in names
    assert {"ran-release", "dacl-release", "ada_df-release", "ada_df-sfew", "mfer-release", "resnet18-release",
            "ir50_baseline-release", "orsanet-large"} <= names


def test_mfer_model_card_says_dsf_is_not_shipped():
    from ferpipe.train.model_card import model_card

    cfg = presets.get_preset("mfer-cpu")
    card = model_card(model_name="mfer", preset=cfg.preset, config=cfg.to_dict(), model_kwargs=cfg.model_kwargs,
                      num_params=1, dataset="d", label_space={"classes": ["a"]}, index_sha256={"train": "0" * 64},
                      counts={"train": 1}, metrics={"test_acc": 0.5})
    assert "Trained without the DSF loss" in card and "| test_acc | 0.5000 |" in card
