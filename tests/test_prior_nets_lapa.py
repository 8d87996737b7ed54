"""`ferpipe prior-nets -S prior_nets.source=lapa` end to end on a LaPa-layout tree of real
photos (tests/_lapa_tree.py; approximate ground truth from MTCNN points: a plumbing test, the
numbers it reaches mean nothing), and LaPa's side convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferpipe.priors.conventions import IBUG68_FLIP
from ferpipe.priors.data import image_side, lapa_faces, lapa_items
from ferpipe.priors.nets import LANDMARK_ARCH, PARSER_ARCH, load_prior_net
from tests._lapa_tree import SPLITS, write_lapa_tree
from tests.test_priors import synth_set  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lapa_root(tmp_path_factory, synth_set):  # noqa: F811
    return write_lapa_tree(tmp_path_factory.mktemp("lapa") / "LaPa", *synth_set)


def test_tree_is_in_lapa_layout(lapa_root):
    for split, names in SPLITS.items():
        items = lapa_items(lapa_root, split)
        assert [i[0] for i in items] == sorted(names)
        txt = items[0][3].read_text().splitlines()
        assert txt[0] == "106" and len(txt) == 107
    fs = lapa_faces(lapa_root, "test", 112, 0.0, 112, 0, (0, 0, 0))
    assert fs.images.shape == (2, 112, 112, 3) and fs.parsing.max() <= 10
    # aligned on its own 5 points, the eyes land where the ArcFace template puts them
    from ferpipe.align.warp import template

    eyes = fs.points[:, 36:42].mean(1) * 112 - 0.5
    assert np.abs(eyes - template(112)[0]).max() < 3.0


def test_image_side_normalises_subject_side_markup():
    rng = np.random.default_rng(0)
    p = np.zeros((68, 2))
    p[:, 0] = np.linspace(10, 90, 68)  # any layout with left < right in every group
    p[0:17, 0] = np.linspace(10, 90, 17)
    p[17:22, 0], p[22:27, 0] = np.linspace(20, 40, 5), np.linspace(60, 80, 5)
    p[36:42, 0], p[42:48, 0] = rng.uniform(20, 40, 6), rng.uniform(60, 80, 6)
    p[31:36, 0], p[48:60, 0], p[60:68, 0] = np.linspace(40, 60, 5), np.linspace(30, 70, 12), np.linspace(35, 65, 8)
    p[48, 0], p[54, 0] = 30, 70
    same, _ = image_side(p, None)
    np.testing.assert_array_equal(same, p)
    swapped = p[IBUG68_FLIP]  # the same face with every "left" label on the image's right
    back, _ = image_side(swapped, None)
    np.testing.assert_array_equal(back, p)
    lab = np.zeros((8, 8), np.uint8)
    lab[:, :4], lab[:, 4:] = 5, 4  # "left eye" class on the image's right
    np.testing.assert_array_equal(image_side(p, lab)[1][:, :4], 4)


@pytest.mark.slow
def test_prior_nets_train_on_lapa_layout_end_to_end(lapa_root, tmp_path):
    from ferpipe.cli import main

    torch.set_num_threads(1)
    rc = main(["prior-nets", "--no-flow", "--root", str(tmp_path), "--params", str(REPO / "params.yaml"),
               "-S", "prior_nets.source=lapa", "-S", f"prior_nets.lapa_dir={lapa_root}",
               "-S", "prior_nets.epochs=2", "-S", "prior_nets.batch_size=2", "-S", "prior_nets.threads=1"])
    assert rc == 0
    out = tmp_path / "models" / "prior_nets"
    m = json.loads((out / "metrics.json").read_text())
    assert m["setup"]["source"] == "lapa" and m["setup"]["domain"] == "lapa"
    assert m["setup"]["n_train"] == len(SPLITS["train"]) and m["setup"]["n_test"] == len(SPLITS["test"])
    assert np.isfinite(m["landmarks"]["nme"]) and 0.0 <= m["parser"]["miou"] <= 1.0
    for name, arch in (("parser.pt", PARSER_ARCH), ("landmarks.pt", LANDMARK_ARCH)):
        assert torch.load(out / name, weights_only=True)["domain"] == "lapa"
        net = load_prior_net(out / name, arch)
        assert net.domain == "lapa" and net.domain_recorded
    # such nets are accepted for a real dataset
    from ferpipe.priors import PriorsParams
    from ferpipe.priors.domain import check_domain

    rec = check_domain(PriorsParams(), tmp_path / "models", "real")
    assert rec["nets"] == "lapa" and not rec["mismatch"]
