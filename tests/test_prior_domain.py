"""Prior nets record their training domain; the priors stage refuses real datasets with nets
that only saw rendered faces unless priors.allow_domain_mismatch is set, and then records it in
the shards, the report and (through the shards the trainer reads) the model card."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from ferpipe.priors import PriorsParams, priors_stage
from ferpipe.priors.domain import (
    DomainMismatchError,
    backend_domain,
    check_domain,
    dataset_domain,
)
from ferpipe.priors.nets import PARSER_ARCH, PriorNet, load_prior_net, save_prior_net
from ferpipe.layout import Layout
from ferpipe.priors.stage import PRIORS
from ferpipe.sources.params import DownloadParams
from tests.test_priors import _samples, aligned_dir, random_prior_nets, synth_set, write_aligned  # noqa: F401


def _real_params(tmp_path, **priors):
    return SimpleNamespace(download=DownloadParams(dataset="rafdb", source=str(tmp_path / "RAF-DB")),
                           priors=PriorsParams(kind="maps", backend="ferpipe", **priors))


def _project(tmp_path, aligned, nets_models, dataset="rafdb"):
    root = tmp_path / "proj"
    shutil.copytree(aligned, root / "data" / "aligned" / dataset)
    shutil.copytree(nets_models / "prior_nets", root / "models" / "prior_nets")
    return root


def test_dataset_domain_follows_download_source():
    assert dataset_domain(DownloadParams()) == "synthetic"
    assert dataset_domain(DownloadParams(source="/data/RAF-DB")) == "real"
    assert dataset_domain(DownloadParams(dataset="synthetic", source="https://example.org/x.zip")) == "real"


def test_old_checkpoints_without_a_domain_read_as_synthetic(random_prior_nets):  # noqa: F811
    net = load_prior_net(random_prior_nets / "prior_nets" / "parser.pt", PARSER_ARCH)
    assert net.domain == "synthetic" and net.domain_recorded is False
    d = backend_domain(PriorsParams(), random_prior_nets)
    assert d["nets"] == "synthetic" and not d["recorded"] and "read as synthetic" in d["detail"]
    # the official backend is a real-face one, whatever the files hold
    assert backend_domain(PriorsParams(backend="official"), random_prior_nets)["nets"] == "real"


def test_real_dataset_with_synthetic_nets_is_refused(tmp_path, aligned_dir, random_prior_nets):  # noqa: F811
    root = _project(tmp_path, aligned_dir, random_prior_nets)
    with pytest.raises(DomainMismatchError) as e:
        PRIORS.run(_real_params(tmp_path), Layout(root))
    msg = str(e.value)
    for hint in ("'rafdb'", "prior_nets.source=lapa", "priors.backend=official", "ferpipe weights",
                 "priors.allow_domain_mismatch=true", "read as synthetic"):
        assert hint in msg, hint
    assert not (root / "data" / "priors" / "rafdb").exists()  # refused before anything was written
    # the library entry point refuses too, before building anything
    with pytest.raises(DomainMismatchError):
        priors_stage(aligned_dir, tmp_path / "out", PriorsParams(), random_prior_nets, progress=False,
                     data_domain="real")
    # the embedded synthetic dataset is fine
    ok = check_domain(PriorsParams(), random_prior_nets, "synthetic")
    assert ok["mismatch"] is False and ok["dataset"] == "synthetic"


def test_lapa_trained_nets_are_accepted_on_real_data(tmp_path, aligned_dir):  # noqa: F811
    models = tmp_path / "models"
    for task, name in (("parser", "parser.pt"), ("landmarks", "landmarks.pt")):
        torch.manual_seed(0)
        save_prior_net(PriorNet(task), models / "prior_nets" / name, {}, {}, domain="lapa")
    rep = priors_stage(aligned_dir, tmp_path / "out", PriorsParams(), models, progress=False,
                       data_domain="real")
    assert rep.domain == {"dataset": "real", "nets": "lapa", "nets_recorded": True,
                          "detail": "ferpipe prior nets trained on lapa", "mismatch": False,
                          "allow_domain_mismatch": False}
    assert "WARNING" not in rep.summary()


def test_opt_in_runs_and_is_recorded_in_shards_report_and_model_card(tmp_path, synth_set, random_prior_nets):  # noqa: F811
    from ferpipe.train import data as D
    from ferpipe.train.model_card import model_card

    archive, gts = synth_set
    # train / val / test, so the trainer's own shard probe reads it
    names = sorted(gts)
    rows = [{"key": nm[:-4], "name": nm, "split": ("train", "val", "test")[i % 3]} for i, nm in enumerate(names)]
    from tests._gt_shards import write_gt_aligned

    aligned = write_gt_aligned(tmp_path / "aligned", archive, gts, rows, ["train", "val", "test"], 96, 8)
    root = _project(tmp_path, aligned, random_prior_nets)
    rep = PRIORS.run(_real_params(tmp_path, allow_domain_mismatch=True), Layout(root))
    assert rep.domain["mismatch"] is True and rep.domain["allow_domain_mismatch"] is True
    assert "WARNING" in rep.summary() and "rendered" in rep.summary()
    saved = json.loads((root / "reports" / "priors" / "rafdb.json").read_text())
    assert saved["domain"]["mismatch"] is True
    out = root / "data" / "priors" / "rafdb"
    meta = json.loads(_samples(out, "train")[0]["json"])["priors"]
    assert meta["domain"] == rep.domain
    shards = D.probe_shards(out)  # what train_stage hands to the model card
    card = model_card(model_name="orsanet", preset="p", config={}, model_kwargs={}, num_params=1,
                      dataset="rafdb", label_space=shards.label_space, index_sha256=shards.index_sha256,
                      counts=shards.counts, metrics={}, prior=shards.prior_meta)
    assert "## Priors" in card and "allow_domain_mismatch: true" in card
    assert "nets trained only on synthetic (rendered) faces" in card


def test_priors_flow_refuses_before_any_shard(prefect_api, tmp_path, aligned_dir, random_prior_nets,  # noqa: F811
                                              monkeypatch):
    """`ferpipe priors` (the Prefect flow) stops with the same error, and writes nothing."""
    import flows.priors as fp

    root = _project(tmp_path, aligned_dir, random_prior_nets)
    monkeypatch.setattr("flows._common.params_for", lambda path, ov: _real_params(tmp_path))
    state = fp.priors_flow(params_path="unused", root=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(DomainMismatchError, match="allow_domain_mismatch"):
        state.result()
    assert not (root / "data" / "priors" / "rafdb").exists()
