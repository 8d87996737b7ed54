"""The trainer: pipelines, SAM, loop, checkpoints, resume, DDP, NaN stop, stage outputs.

Everything runs on tiny learnable random shards (ferpipe.train.fixtures) and a tiny ORSANet
(same architecture, widths of 8-32) at 56 px, single-threaded so timings stay sane on a shared
2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ferpipe.errors import ConfigError, FerpipeError
from ferpipe.layout import Layout
from ferpipe.train import data as D
from ferpipe.losses.criterion import Criterion, list_criteria, logits_of, register_criterion
from ferpipe.train import presets
from ferpipe.train.checkpoint import FORMAT, load
from ferpipe.train.fixtures import FLIP68, flip_landmarks, flip_parsing, write_random_priors
from ferpipe.train.loop import NonFiniteLossError, RunOptions, fit
from ferpipe.train.optim import SAM, build_scheduler
from ferpipe.train.params import TrainParams

torch.set_num_threads(1)

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "ir_widths": (8, 8, 16), "ir_units": (1, 1, 1),
        "ir_stem_width": 8, "ir_input_size": None, "spade_hidden": 8, "encoder_widths": (8, 8, 16),
        "drop_path_rate": 0.1}
SIZE = 56  # 56 -> IR 7x7 (49 tokens); maps: 56/7 = 8


def tiny_cfg(**kw) -> presets.TrainConfig:
    base = dataclasses.replace(presets.get_preset("orsanet-cpu"), model_kwargs=TINY, img_size=SIZE,
                               batch_size=16, eval_batch_size=32, epochs=2, lr=3e-3, shuffle_buffer=64,
                               scheduler="exponential", warmup_epochs=0)
    return dataclasses.replace(base, **kw)


@pytest.fixture(scope="module")
def feat(tmp_path_factory) -> D.ShardSet:
    root = write_random_priors(tmp_path_factory.mktemp("feat"), "features", counts=(96, 21, 21), size=SIZE,
                               samples_per_shard=24)
    return D.probe_shards(root)


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> D.ShardSet:
    root = write_random_priors(tmp_path_factory.mktemp("maps"), "maps", counts=(48, 14, 14), size=SIZE,
                               samples_per_shard=24)
    return D.probe_shards(root)


def _keys(loader) -> list[str]:
    return [k for b in loader for k in b["key"]]


# --- data ------------------------------------------------------------------------------------------


def test_probe(feat, maps):
    assert feat.prior_kind == "features" and feat.facts["lmk_channels"] == 8 and feat.facts["seg_channels"] == 16
    assert maps.prior_kind == "maps" and maps.num_classes == 7
    assert set(feat.index_sha256) == {"train", "val", "test"}
    with pytest.raises(FerpipeError, match="priors stage"):
        D.probe_shards(feat.root / "nowhere")


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_epoch_is_a_permutation_and_deterministic(feat, workers):
    aug = D.Augment(prior_kind="features", img_size=SIZE, seed=1, epoch=3)
    run = lambda: _keys(D.make_loader(D.train_pipeline(feat.urls("train"), aug, 8, seed=1, epoch=3,  # noqa: E731
                                                       shuffle_buffer=32), workers))
    a, b = run(), run()
    assert a == b and sorted(a) == sorted(D.build_index(feat.urls("train")).keys) and len(set(a)) == 96
    other = _keys(D.make_loader(D.train_pipeline(feat.urls("train"), aug, 8, seed=1, epoch=4), workers))
    assert other != a  # a new epoch reshuffles


def test_rebalanced_draws_follow_imbalanced_sampler(feat):
    idx = D.build_index(feat.urls("train"))
    draws = D.epoch_draws(idx, 7, seed=0, epoch=1)
    assert sum(draws.values()) == len(idx) and draws == D.epoch_draws(idx, 7, seed=0, epoch=1)
    # Over many epochs every class is drawn about equally often (weights 1 / class count).
    per_class = np.zeros(7)
    for e in range(1, 60):
        for k, n in D.epoch_draws(idx, 7, 0, e).items():
            per_class[idx.labels[idx.keys.index(k)]] += n
    share = per_class / per_class.sum()
    assert np.allclose(share, 1 / 7, atol=0.02), share
    aug = D.Augment(prior_kind="features", img_size=SIZE, seed=0, epoch=1)
    got = _keys(D.make_loader(D.train_pipeline(feat.urls("train"), aug, 8, seed=0, epoch=1, draws=draws), 2))
    assert sorted(got) == sorted(k for k, n in draws.items() for _ in range(n))


def test_workers_and_ranks_get_disjoint_data_even_with_few_shards(feat):
    aug = D.Augment(prior_kind="features", img_size=SIZE, seed=0, epoch=1)
    urls = feat.urls("train")[:1]  # one shard, 2 ranks x 2 workers: sample-level split
    parts = [_keys(D.make_loader(D.train_pipeline(urls, aug, 4, seed=0, epoch=1, rank=r, world=2), 2))
             for r in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(D.build_index(urls).keys)
    # Resampled (DDP) mode: endless per rank, cut by with_epoch, still disjoint pools.
    w = D.class_weights(D.build_index(urls).labels, 7)
    res = [_keys(D.make_loader(D.train_pipeline(urls, aug, 4, seed=0, epoch=1, rank=r, world=2, resampled=True,
                                                label_weights=w), 1, nbatches=5)) for r in range(2)]
    assert len(res[0]) == len(res[1]) == 20 and not set(res[0]) & set(res[1])


def test_flip_takes_the_cached_flipped_view(tmp_path):
    root = write_random_priors(tmp_path, "features", counts=(4, 2, 2), size=SIZE)
    ss = D.probe_shards(root)
    raw = next(iter(__import__("webdataset").WebDataset(ss.urls("train"), shardshuffle=False, empty_check=False)))
    no = D.transform_sample(raw, D.Augment("features", SIZE, flip_p=0.0, erase_p=0.0))
    yes = D.transform_sample(raw, D.Augment("features", SIZE, flip_p=1.0, erase_p=0.0))
    lmk = np.load(__import__("io").BytesIO(raw["lmk.npy"]))
    assert torch.equal(no[1][0], torch.from_numpy(lmk[0])) and torch.equal(yes[1][0], torch.from_numpy(lmk[1]))
    assert torch.allclose(yes[0], no[0].flip(-1))


def test_maps_flip_view_and_erase_modes(maps):
    import io

    import webdataset as wds

    raw = next(iter(wds.WebDataset(maps.urls("train"), shardshuffle=False, empty_check=False)))
    pts = np.load(io.BytesIO(raw["landmarks.npy"]))
    flipped = D.transform_sample(raw, D.Augment("maps", SIZE, flip_p=1.0, erase_p=0.0))
    assert np.allclose(flipped[1][0].numpy(), pts[1])
    assert np.allclose(flip_landmarks(flip_landmarks(pts[0], SIZE), SIZE), pts[0]) and len(set(FLIP68)) == 68
    par = np.arange(11, dtype=np.uint8)[None].repeat(3, 0)
    assert np.array_equal(flip_parsing(flip_parsing(par)), par)
    clean = D.transform_sample(raw, D.Augment("maps", SIZE, flip_p=0.0, erase_p=1.0, erase_priors="clean"))
    zero = D.transform_sample(raw, D.Augment("maps", SIZE, flip_p=0.0, erase_p=1.0, erase_priors="zero"))
    assert torch.equal(clean[0], zero[0]) and (clean[0] == 0).all(0).sum() > 0  # the box, value 0
    assert np.allclose(clean[1][0].numpy(), pts[0])  # clean-prior: priors untouched
    assert (zero[1][1] == D.PARSING_IGNORE).any()


def test_erase_zero_cells_for_features(feat):
    import webdataset as wds

    raw = next(iter(wds.WebDataset(feat.urls("train"), shardshuffle=False, empty_check=False)))
    clean = D.transform_sample(raw, D.Augment("features", SIZE, flip_p=0.0, erase_p=1.0))
    zero = D.transform_sample(raw, D.Augment("features", SIZE, flip_p=0.0, erase_p=1.0, erase_priors="zero"))
    box = (clean[0] == 0).all(0)
    assert 0.01 * SIZE**2 <= box.sum() <= 0.12 * SIZE**2  # scale 0.02-0.1 (integer rounding)
    cells = (zero[1][0] == 0).all(0)
    assert cells.any() and not (clean[1][0] == 0).all(0).any()


# --- optimiser -------------------------------------------------------------------------------------


def test_sam_step_matches_hand_computation():
    torch.manual_seed(0)
    lin = nn.Linear(3, 1)
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    w0 = [p.detach().clone() for p in lin.parameters()]
    lr, rho = 0.1, 0.05
    opt = SAM(lin.parameters(), torch.optim.SGD, rho=rho, lr=lr)

    def loss_at(params):
        return ((x @ params[0].T + params[1] - y) ** 2).mean()

    # Hand: g = grad at w0; e = rho g/||g||; g' = grad at w0 + e; w1 = w0 - lr g'.
    p = [t.clone().requires_grad_(True) for t in w0]
    g = torch.autograd.grad(loss_at(p), p)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    pe = [(wi + rho * gi / norm).requires_grad_(True) for wi, gi in zip(w0, g)]
    g2 = torch.autograd.grad(loss_at(pe), pe)
    expect = [wi - lr * gi for wi, gi in zip(w0, g2)]

    loss_at(list(lin.parameters())).backward()
    opt.first_step(zero_grad=True)
    assert all(torch.allclose(a, b) for a, b in zip(lin.parameters(), pe))  # perturbed
    loss_at(list(lin.parameters())).backward()
    opt.second_step(zero_grad=True)
    for a, b in zip(lin.parameters(), expect):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_schedulers():
    p = [nn.Parameter(torch.zeros(1))]
    opt = SAM(p, torch.optim.Adam, rho=0.05, lr=1.0)
    s = build_scheduler("exponential", opt, epochs=10, gamma=0.98)
    for _ in range(3):
        s.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.98**3)
    opt2 = torch.optim.AdamW(p, lr=1.0)
    s2 = build_scheduler("cosine", opt2, epochs=4, warmup_epochs=1)
    lrs = []
    for _ in range(5):
        lrs.append(opt2.param_groups[0]["lr"])
        s2.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] == 0.0


# --- presets / params ----------------------------------------------------------------------------------


def test_presets_and_overrides():
    assert {"orsanet-large", "orsanet-cpu"} <= set(presets.list_presets())
    large = presets.get_preset("orsanet-large")
    assert (large.optimizer, large.lr, large.gamma, large.batch_size, large.img_size) == ("sam-adam", 4e-5, 0.98, 20, 224)
    assert (large.sampler, large.erase_p, large.loss) == ("rebalance", 0.5, "orsanet")
    cfg = presets.resolve(TrainParams(preset="orsanet-large", lr=1e-4, epochs=3, model_kwargs={"depth": 6}))
    assert (cfg.lr, cfg.epochs, cfg.model_kwargs["depth"], cfg.model_kwargs["variant"]) == (1e-4, 3, 6, "large")
    assert presets.resolve(TrainParams()).preset == "orsanet-cpu"   # <model>-cpu when no preset is named
    with pytest.raises(ConfigError, match="unknown preset"):
        presets.resolve(TrainParams(preset="nope"))
    with pytest.raises(ConfigError, match="no recipe for model 'nope'.*models with presets: ada_df, dacl"):
        presets.resolve(TrainParams(model="nope"))
    with pytest.raises(ConfigError, match="trains model 'orsanet'"):
        presets.resolve(TrainParams(model="ran", preset="orsanet-large"))
    with pytest.raises(ConfigError, match="loss_kwargs"):
        presets.resolve(TrainParams(loss_kwargs={"no_such_knob": 1}))
    with pytest.raises(ConfigError, match="loss"):
        presets.resolve(TrainParams(loss="nope"))
    kw = presets.model_kwargs(large, {"prior_kind": "features", "num_classes": 7, "lmk_channels": 512,
                                      "seg_channels": 1024})
    assert kw["priors"] == "features" and kw["seg_dim"] == 1024 and kw["img_size"] == 224


# --- the loop -------------------------------------------------------------------------------------------


def _opts(**kw) -> RunOptions:
    return RunOptions(**{"num_workers": 0, "progress": False, **kw})


def test_few_steps_lower_the_loss_and_test_is_read_once_at_the_end(feat, tmp_path):
    res = fit(tiny_cfg(epochs=3, optimizer="sam-adam"), feat, tmp_path / "m", _opts())
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert res.reads == [(1, "val"), (2, "val"), (3, "val"), (3, "test")]
    assert res.test["n"] == 21 and 0 <= res.test["acc"] <= 1


def test_maps_priors_train(maps, tmp_path):
    res = fit(tiny_cfg(epochs=1, optimizer="adamw", erase_priors="zero"), maps, tmp_path / "m", _opts())
    assert res.completed and math.isfinite(res.history[0]["train_loss"])


def test_checkpoint_contents(feat, tmp_path):
    cfg = tiny_cfg(epochs=1)
    fit(cfg, feat, tmp_path / "m", _opts())
    for name in ("last.pt", "best.pt"):
        ck = load(tmp_path / "m" / name)
        assert ck["format"] == FORMAT and ck["epoch"] == 1
        for key in ("model", "optimizer", "scheduler", "sampler", "rng", "label_space", "config", "data", "best",
                    "history", "model_kwargs"):
            assert key in ck, key
        assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda", "generator"}
        assert ck["label_space"]["classes"][0] == "surprise"
        assert ck["data"]["index_sha256"] == feat.index_sha256 and ck["config"] == cfg.to_dict()
        assert ck["sampler"]["kind"] == "rebalance" and sum(ck["sampler"]["class_counts"]) == 96
    assert not list((tmp_path / "m").glob(".*partial*"))  # atomic: no temp files left
    # The checkpoint rebuilds the network through the registry.
    from ferpipe.models import create_model

    net = create_model(ck["model_name"], **ck["model_kwargs"])
    net.load_state_dict(ck["model"])


def _metrics(res):
    keep = ("epoch", "train_loss", "val_acc", "val_macro_f1", "val_loss", "lr", "best_epoch")
    return [{k: h[k] for k in keep} for h in res.history], res.test


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(feat, tmp_path):
    cfg = tiny_cfg(epochs=3, optimizer="sam-adam", scheduler="cosine", warmup_epochs=1)
    straight = fit(cfg, feat, tmp_path / "a", _opts(num_workers=2))
    first = fit(cfg, feat, tmp_path / "b", _opts(num_workers=2, stop_after_epoch=2))
    assert not first.completed and first.reads == [(1, "val"), (2, "val")]  # no test read
    resumed = fit(cfg, feat, tmp_path / "b", _opts(num_workers=2, resume=True))
    assert resumed.resumed_from == 2
    assert resumed.weights_sha256 == straight.weights_sha256
    assert _metrics(resumed) == _metrics(straight)


def test_incompatible_resume_is_refused(feat, tmp_path):
    fit(tiny_cfg(epochs=1), feat, tmp_path / "m", _opts())
    with pytest.raises(FerpipeError, match="config.lr"):
        fit(tiny_cfg(epochs=2, lr=1e-2), feat, tmp_path / "m", _opts(resume=True))
    # auto: incompatible -> fresh start
    res = fit(tiny_cfg(epochs=1, lr=1e-2), feat, tmp_path / "m", _opts(resume="auto"))
    assert res.resumed_from is None
    with pytest.raises(FerpipeError, match="no .*last.pt"):
        fit(tiny_cfg(epochs=1), feat, tmp_path / "empty", _opts(resume=True))


def test_nan_loss_stops_naming_epoch_and_step(feat, tmp_path):
    class NanAtEpoch2(Criterion):
        def forward(self, outputs, y):
            base = nn.functional.cross_entropy(logits_of(outputs), y)
            return base * float("nan") if self.epoch == 2 else base

    if "test-nan-at-2" not in list_criteria():
        register_criterion("test-nan-at-2", NanAtEpoch2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1"):
        fit(tiny_cfg(epochs=3, loss="test-nan-at-2"), feat, tmp_path / "m", _opts())
    assert load(tmp_path / "m" / "last.pt")["epoch"] == 1


# --- DDP ---------------------------------------------------------------------------------------------------


def _ddp_worker(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.pop("RANK", None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ss = D.probe_shards(root)
        res = fit(tiny_cfg(epochs=2, optimizer="sam-adam"), ss, Path(out) / "m", _opts(record_keys=True))
        Path(out, f"rank{rank}.json").write_text(json.dumps(
            {"keys": res.seen_keys, "sha": res.weights_sha256, "test": res.test["acc"],
             "steps": len(res.seen_keys)}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_disjoint_data_identical_weights(feat, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(feat.root), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["keys"] and r1["keys"] and len(r0["keys"]) == len(r1["keys"])
    assert not set(r0["keys"]) & set(r1["keys"])
    assert r0["sha"] == r1["sha"] and r0["test"] == r1["test"]


# --- the stage -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_writes_model_dir_and_reports(feat, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(feat.root, tmp_path / "data" / "priors" / "tiny")
    monkeypatch.setitem(presets._PRESETS, "tiny-test", dataclasses.replace(tiny_cfg(epochs=2), preset="tiny-test"))
    from ferpipe.train.stage import train_stage

    seen = []
    rep = train_stage(TrainParams(dataset="tiny", preset="tiny-test", num_workers=0, threads=1),
                      Layout(tmp_path), callbacks=[seen.append])
    assert [s["epoch"] for s in seen] == [1, 2]
    assert (tmp_path / "models/train/tiny/best.pt").exists() and (tmp_path / "models/train/tiny/last.pt").exists()
    m = json.loads((tmp_path / "reports/train/metrics.json").read_text())
    assert {"val_acc", "test_acc", "best_epoch", "test_macro_f1"} <= set(m) and m["epochs"] == 2
    ci = m["test_acc_ci95"]  # a Wilson interval around the accuracy, as evaluate's
    assert 0.0 <= ci["lo"] <= m["test_acc"] <= ci["hi"] <= 1.0 and ci["hi"] - ci["lo"] > 0
    assert (tmp_path / "reports/train/live/metrics.json").exists()
    assert list((tmp_path / "reports/train/live/plots/metrics").rglob("*.tsv"))
    assert (tmp_path / "reports/train/curves.png").exists()
    assert "test acc" in rep.summary()
    card = (tmp_path / "models/train/tiny/MODEL_CARD.md").read_text()
    assert card.startswith("# orsanet trained on `tiny` (preset `tiny-test`)")
    assert f"| test_acc | {m['test_acc']:.4f} |" in card and "erase_priors: clean" in card
    # Resume with one more epoch: DVCLive logs hold every epoch, not just the resumed one.
    rep = train_stage(TrainParams(dataset="tiny", preset="tiny-test", num_workers=0, threads=1, epochs=3),
                      Layout(tmp_path))
    assert rep.metrics["resumed_from_epoch"] == 2
    rows = (tmp_path / "reports/train/live/plots/metrics/val/acc.tsv").read_text().split()
    assert rows[0] == "step" and rows[2::2] == ["1", "2", "3"]


@pytest.mark.slow
def test_flow_publishes_progress_and_tables(feat, tmp_path, monkeypatch, prefect_api):
    import shutil

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.train import run_train_params

    shutil.copytree(feat.root, tmp_path / "data" / "priors" / "tiny")
    monkeypatch.setitem(presets._PRESETS, "tiny-test", dataclasses.replace(tiny_cfg(epochs=2), preset="tiny-test"))

    @flow(name="train-test")
    def f():
        return run_train_params(TrainParams(dataset="tiny", preset="tiny-test", num_workers=0, threads=1),
                                str(tmp_path))

    rep = f()
    assert rep.metrics["epochs"] == 2

    async def artifacts():
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as c:
            out = {}
            for key in ("train-tiny-progress", "train-tiny-history", "train-tiny-metrics"):
                arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
                out[key] = arts
            return out

    import asyncio

    got = asyncio.run(artifacts())
    assert got["train-tiny-progress"] and float(got["train-tiny-progress"][0].data) == 100.0
    assert got["train-tiny-history"] and got["train-tiny-metrics"]


def test_bf16_autocast_runs_on_cpu(feat, tmp_path):
    res = fit(tiny_cfg(epochs=1, amp="bf16", optimizer="sam-adam"), feat, tmp_path / "m", _opts())
    assert math.isfinite(res.history[0]["train_loss"])


# --- crops, RandAugment, priors off, stateful criteria ------------------------------------------------


def _raw_sample(ss: D.ShardSet):
    import webdataset as wds

    return next(iter(wds.WebDataset(ss.urls("train"), shardshuffle=False, empty_check=False)))


def test_crops_and_rand_augment_are_deterministic(feat):
    raw = _raw_sample(feat)
    base = dict(prior_kind="none", img_size=48, resize_to=SIZE, flip_p=0.0, erase_p=0.0, seed=3, epoch=2)
    five = D.transform_sample(raw, D.Augment(**base, train_crop="five"))
    assert five[0].shape == (3, 48, 48) and five[1] == ()
    ten = D.transform_sample(raw, D.Augment(**base, train_crop="ten"))
    assert ten[0].shape == (10, 3, 48, 48)
    # The ten crops are FiveCrop's five and their mirrors; the five-crop draw is one of them.
    assert torch.equal(ten[0][5], ten[0][0].flip(-1))
    assert any(torch.equal(five[0], c) for c in ten[0][:5])
    centre = D.transform_sample(raw, D.Augment(**base, train=False, test_crop="center"))
    assert torch.equal(centre[0], ten[0][4])
    ra = D.Augment(prior_kind="none", img_size=SIZE, randaugment="rand-m9-n3-mstd0.5", seed=1, epoch=1)
    a, b = D.transform_sample(raw, ra), D.transform_sample(raw, ra)
    assert torch.equal(a[0], b[0])  # a pure function of (seed, epoch, key, repeat)
    plain = D.transform_sample(raw, D.Augment(**{**ra.__dict__, "randaugment": None}))
    assert not torch.equal(a[0], plain[0])
    with pytest.raises(FerpipeError, match="priors"):
        D.transform_sample(raw, D.Augment("features", 48, resize_to=SIZE, train_crop="five"))


def test_drop_last_keeps_only_full_batches(feat):
    aug = D.Augment(prior_kind="none", img_size=SIZE, seed=0, epoch=1)
    sizes = [len(b["key"]) for b in D.make_loader(D.train_pipeline(feat.urls("train"), aug, 40, seed=0, epoch=1,
                                                                   drop_last=True), 0)]
    assert sizes == [40, 40]  # 96 samples: the last 16 are dropped


class _CountingCriterion(Criterion):
    """CE plus a buffer counting steps and end-of-epoch passes (checks the trainer's hooks)."""

    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen_in_end_epoch", torch.zeros((), dtype=torch.long))

    def forward(self, outputs, y):
        return nn.functional.cross_entropy(logits_of(outputs), y)

    def after_step(self):
        self.steps += 1

    def end_epoch(self, ctx):
        for img, priors, y in ctx.train_batches():
            assert priors == [] and img.shape[-1] == SIZE
            self.seen_in_end_epoch += len(y)


def test_stateful_criterion_hooks_ten_crop_and_no_priors(feat, tmp_path):
    if "test-counting" not in list_criteria():
        register_criterion("test-counting", _CountingCriterion)
    cfg = tiny_cfg(epochs=2, loss="test-counting", priors=False, resize_to=64, train_crop="ten", test_crop="ten",
                   sampler="shuffle", batch_size=16)
    res = fit(cfg, feat, tmp_path / "m", _opts())
    state = load(tmp_path / "m" / "last.pt")
    assert state["model_kwargs"]["priors"] == "none" and "lmk_const" in "".join(state["model"])
    # 96 train samples, batch 16 -> 6 steps per epoch; every sample (x10 crops) seen at each epoch end.
    assert int(state["criterion"]["steps"]) == 12 and int(state["criterion"]["seen_in_end_epoch"]) == 2 * 960
    assert res.test["n"] == 21 and 0.0 <= res.test["acc"] <= 1.0


def test_a_run_that_fails_early_keeps_the_previous_logs(feat, tmp_path):
    import shutil

    from ferpipe.errors import MissingCheckpointError
    from ferpipe.train.stage import train_stage

    shutil.copytree(feat.root, tmp_path / "data" / "priors" / "tiny")
    live = tmp_path / "reports/train/live"
    (live / "plots").mkdir(parents=True)
    (live / "metrics.json").write_text('{"kept": true}')
    with pytest.raises(MissingCheckpointError):
        train_stage(TrainParams(dataset="tiny", model="resnet18", num_workers=0, threads=1,
                                model_kwargs={"checkpoint": str(tmp_path / "nothere.pth")}), Layout(tmp_path))
    assert (live / "metrics.json").read_text() == '{"kept": true}'
