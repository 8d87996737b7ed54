"""`ferpipe weights`: present / missing / wrong / truncated for every weight file, with files
built from ferpipe's own model classes (random weights) in the official containers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from ferpipe.cli import main
from ferpipe.models import create_model
from ferpipe.models.weights import CATALOGUE, EXPECTED, check_weights
from ferpipe.priors.nets import PriorNet, save_prior_net

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mfn_file(tmp_path_factory) -> bytes:
    """MobileFaceNet, random weights, nested as the official release: {'epoch', 'state_dict'}."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mfn") / "m.pth.tar"
    torch.save({"epoch": 7, "arch": "mobilefacenet", "state_dict": create_model("mobilefacenet").state_dict()}, path)
    return path.read_bytes()


def _put(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _by_id(rows):
    return {r.id: r for r in rows}


def test_catalogue_covers_every_weight_file():
    ids = {w.id for w in CATALOGUE}
    assert {"mobilefacenet", "segface", "ir50", "orsanet", "resnet18_msceleb", "convnext_b",
            "insightface_2d106", "prior_parser", "prior_landmarks"} <= ids
    for w in CATALOGUE:
        assert "http" not in w.publisher and w.sha256 is None  # no owner publishes one
    # the packaged manifests are the reference ones, and ferpipe's classes produce exactly them
    assert EXPECTED["mobilefacenet"]() == {k: tuple(v.shape) for k, v in create_model("mobilefacenet").state_dict().items()}
    assert len(EXPECTED["segface"]()) == 466 and len(EXPECTED["orsanet"]()) == 1533


def test_present_missing_wrong_truncated(tmp_path, mfn_file):
    root = tmp_path / "proj"
    _put(root, "models/pretrain/mobilefacenet_model_best.pth.tar", mfn_file)  # right
    _put(root, "models/pretrain/model_299.pt", mfn_file)  # another checkpoint where SegFace goes
    _put(root, "models/pretrain/ir50.pth", mfn_file[: len(mfn_file) // 2])  # a download cut short
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3)}, "note": argparse.Namespace(a=1)},
               root / "models/pretrain/resnet18_msceleb.pth")  # pickled objects: refused by weights_only
    sd = torch.load(root / "models/pretrain/mobilefacenet_model_best.pth.tar", weights_only=True)["state_dict"]
    torch.save({"iter": 1, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
               root / "models/pretrain/orsanet_release.pth")
    for task, name in (("parser", "parser.pt"), ("landmarks", "landmarks.pt")):
        save_prior_net(PriorNet(task), root / "models/prior_nets" / name, {}, {}, domain="lapa")
    rows = _by_id(check_weights(None, root))
    ok = rows["mobilefacenet"]
    assert ok.status == "ok" and "of the 333 expected names and shapes matches" in ok.detail and len(ok.sha256) == 64
    assert ok.size == len(mfn_file)
    wrong = rows["segface"]
    assert wrong.status == "wrong" and "this is mobilefacenet" in wrong.detail
    assert "no state dict under ['state_dict_backbone']" in wrong.detail
    other = rows["orsanet"]  # the right container, another network's tensors
    assert other.status == "wrong" and "this is mobilefacenet" in other.detail
    assert "1533 expected tensors absent" in other.detail and "333 unexpected" in other.detail
    assert rows["ir50"].status == "truncated" and "incomplete" in rows["ir50"].detail
    assert rows["resnet18_msceleb"].status == "wrong" and "weights_only" in rows["resnet18_msceleb"].detail
    assert rows["prior_parser"].status == "ok" and rows["prior_parser"].info["domain"] == "lapa"
    for mid in ("convnext_b", "insightface_2d106", "resnet18_ijba"):
        assert rows[mid].status == "missing" and "never downloads" in rows[mid].detail
    assert rows["segface"].expected_sha256 == "not published"


def test_wrong_shapes_and_truncated_prior_net(tmp_path, mfn_file):
    root = tmp_path / "proj"
    sd = create_model("mobilefacenet", embedding_size=98 * 2).state_dict()  # a 98-point (WFLW) variant
    p = root / "models/pretrain/mobilefacenet_model_best.pth.tar"
    p.parent.mkdir(parents=True)
    torch.save({"state_dict": sd}, p)
    save_prior_net(PriorNet("parser"), root / "models/prior_nets/parser.pt", {}, {})
    data = (root / "models/prior_nets/parser.pt").read_bytes()
    (root / "models/prior_nets/parser.pt").write_bytes(data[:-4096])
    rows = _by_id(check_weights(None, root, sha=False))
    assert rows["mobilefacenet"].status == "wrong" and "of another shape" in rows["mobilefacenet"].detail
    assert rows["prior_parser"].status == "truncated"


def test_cli_json_and_exit_code(tmp_path, mfn_file, capsys):
    root = tmp_path / "proj"
    _put(root, "models/pretrain/mobilefacenet_model_best.pth.tar", mfn_file)
    args = ["weights", "--params", str(REPO / "params.yaml"), "--root", str(root)]
    assert main(args + ["--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mobilefacenet"]["status"] == "ok" and rows["segface"]["status"] == "missing"
    assert rows["mobilefacenet"]["param"] == "priors.mobilefacenet_checkpoint"
    _put(root, "models/pretrain/model_299.pt", mfn_file[:1000])
    assert main(args + ["--no-sha256"]) == 1  # a wrong or truncated file fails the command
    text = capsys.readouterr().out
    assert "[truncated] segface" in text and "[ok] mobilefacenet" in text and "1 truncated" in text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_insightface_onnx_ok_and_wrong(tmp_path):
    root = tmp_path / "proj"
    pack = root / "models/insightface/buffalo_l"
    pack.mkdir(parents=True)

    class Tiny(torch.nn.Module):  # 2d106det's signature: [N,3,192,192] -> 212
        def __init__(self, out):
            super().__init__()
            self.fc = torch.nn.Linear(3, out)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    for out, name in ((212, "2d106det.onnx"), (10, "det_10g.onnx")):
        torch.onnx.export(Tiny(out).eval(), torch.zeros(1, 3, 192, 192), str(pack / name),
                          input_names=["data"], output_names=["fc1"], dynamo=False)
    from ferpipe.priors import PriorsParams
    from types import SimpleNamespace

    params = SimpleNamespace(priors=PriorsParams(insightface_dir="insightface/buffalo_l"))
    assert _by_id(check_weights(params, root, sha=False))["insightface_2d106"].status == "ok"
    params.priors = PriorsParams(insightface_dir="insightface/buffalo_l", insightface_model="det_10g.onnx")
    r = _by_id(check_weights(params, root, sha=False))["insightface_2d106"]
    assert r.status == "wrong" and "another ONNX model" in r.detail
    data = (pack / "2d106det.onnx").read_bytes()
    (pack / "det_10g.onnx").write_bytes(data[: len(data) // 3])
    assert _by_id(check_weights(params, root, sha=False))["insightface_2d106"].status == "truncated"
