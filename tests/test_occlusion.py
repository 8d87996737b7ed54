"""The occlusion package: occluders land on their regions, fractions are right, the
synthetic-occlusion shards are deterministic and carry priors recomputed from the occluded
image, and RAN's subset lists parse (duplicates, missing entries)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ferpipe import shards
from ferpipe.align.warp import template
from ferpipe.errors import DataError
from ferpipe.occlusion import (
    ALL_OCCLUDERS,
    OcclusionParams,
    SET_NAME,
    gallery_markdown,
    occlude,
    read_metadata,
    sample_seed,
    synthetic_occlusion_stage,
)
from ferpipe.occlusion.face import approx_parsing, coverage, geometry_from_parsing, geometry_from_points5
from ferpipe.occlusion.subsets import build_subsets, parse_subset_list, resolve_subset
from ferpipe.occlusion.synthetic import _rgb

S = 112


def _face(size: int = S):
    pts = np.asarray(template(size), np.float64)
    geom = geometry_from_points5(pts)
    parsing = approx_parsing(geom, (size, size))
    rng = np.random.default_rng(0)
    rgb = np.clip(np.stack([parsing * 20 + 40] * 3, -1) + rng.normal(0, 5, (size, size, 3)), 0, 255).astype(np.uint8)
    return rgb, parsing, pts


def _png(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _jpg(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _write_priors(root: Path, n: int = 10, kind: str = "maps", per_shard: int = 4) -> Path:
    rgb, parsing, pts = _face()
    samples = []
    for i in range(n):
        img = np.roll(rgb, i, axis=1)
        par = np.roll(parsing, i, axis=1)
        p5 = pts + [i, 0]
        meta = {"label_space": "basic7", "points_aligned": p5.reshape(-1).tolist(),
                "priors": {"kind": kind, "backend": "test"}}
        s = {"__key__": f"test_{i:04d}", "jpg": _jpg(img), "cls": i % 7, "json": meta}
        if kind == "maps":
            s["landmarks.npy"] = _npy(np.full((2, 68, 2), np.nan, np.float32))  # -> parsing geometry
            s["parsing.png"] = _png(par)
            s["parsing_flip.png"] = _png(par[:, ::-1].copy())
        else:
            s["lmk.npy"] = _npy(np.zeros((2, 4, 7, 7), np.float16))
            s["seg.npy"] = _npy(np.zeros((2, 4, 7, 7), np.float16))
        samples.append(s)
    plan = shards.plan_shards([{"key": s["__key__"]} for s in samples], per_shard, "test")
    by_key = {s["__key__"]: s for s in samples}
    for spec in plan:
        shards.process_shard(spec, lambda sp, sink: [sink.add(by_key[k]) for k in sp.keys] and None, root)
    shards.write_dataset_index(root, {"test": shards.finalize_split(root, "test", plan)})
    return root


class Recorder:
    """A deterministic stand-in for the priors backend: a 'parsing' of dark pixels."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def describe(self):
        return {"backend": "recorder"}

    def __call__(self, rgb):
        self.seen.append(rgb.copy())
        m = (rgb.mean(-1) < 100).astype(np.uint8)
        return {"landmarks.npy": _npy(np.zeros((2, 68, 2), np.float32)), "parsing.png": _png(m),
                "parsing_flip.png": _png(m[:, ::-1].copy())}


# --- occluders -----------------------------------------------------------------------------------


def _cover(name, seed):
    """Covered pixels: where the same occluder over a black and a white face gives nearly the
    same colour (opacity > 0.5; the layer does not depend on the image, except for shadows)."""
    _, parsing, _ = _face()
    black, white = np.zeros((S, S, 3), np.uint8), np.full((S, S, 3), 255, np.uint8)
    ob, facts = occlude(black, parsing, None, None, name, seed)
    ow, facts_w = occlude(white, parsing, None, None, name, seed)
    assert facts == facts_w
    if name == "shadow":
        return parsing, (255 - ow.astype(int).max(-1)) > 128, facts
    return parsing, np.abs(ow.astype(int) - ob.astype(int)).max(-1) < 128, facts


@pytest.mark.parametrize("seed", range(4))
def test_sunglasses_and_eye_bar_cover_the_eyes(seed):
    for name in ("sunglasses", "eye_bar"):
        parsing, changed, facts = _cover(name, seed)
        eyes = np.isin(parsing, (4, 5))
        assert changed[eyes].mean() > 0.7, name
        assert "eyes" in facts["regions"]
        assert changed[np.isin(parsing, (7, 8, 9))].mean() < 0.05, name   # mouth untouched
        assert facts["region_coverage"]["eyes"] > facts["region_coverage"].get("mouth", 0)


@pytest.mark.parametrize("seed", range(4))
def test_mask_and_scarf_cover_the_lower_face(seed):
    parsing, changed, facts = _cover("medical_mask", seed)
    assert changed[np.isin(parsing, (7, 8, 9))].mean() > 0.9
    assert changed[parsing == 6].mean() > 0.3
    assert changed[np.isin(parsing, (4, 5))].mean() < 0.05
    assert {"mouth", "nose"} <= set(facts["regions"])
    parsing, changed, facts = _cover("scarf", seed)
    assert changed[np.isin(parsing, (7, 8, 9))].mean() > 0.9 and "mouth" in facts["regions"]
    assert changed[np.isin(parsing, (4, 5))].mean() < 0.05


def test_hair_over_brows_and_every_occluder_draws():
    for seed in range(3):
        parsing, changed, facts = _cover("hair_strands", seed)
        assert changed[np.isin(parsing, (2, 3))].mean() > 0.3 and "brows" in facts["regions"]
        assert changed[np.isin(parsing, (7, 8, 9))].mean() < 0.05
    for name in ALL_OCCLUDERS:
        for seed in range(3):
            _, changed, facts = _cover(name, seed)
            assert changed.sum() > 20 and facts["occluder"] == name and 0 < facts["occluded_fraction"] <= 1
    _, changed, facts = _cover("hand", 1)
    assert facts["placement"] in ("mouth", "cheek", "eye")


def test_occluded_fraction_on_a_hand_made_map():
    # 10x10 map: 40 background, 10 hair, 50 face pixels (skin, two 2x2 eyes, 2x2 nose, mouth).
    p = np.zeros((10, 10), np.uint8)
    p[0, :] = 10
    p[5:10, :] = 1
    p[5:7, 1:3], p[5:7, 7:9] = 4, 5
    p[7:9, 4:6] = 6
    p[9, 3:7] = 7
    alpha = np.zeros((10, 10), np.float32)
    alpha[0:9, 0:5] = 1.0       # hair row (not face), background, and 20 face pixels
    alpha[9, 9] = 0.49          # below the threshold: not covered
    geom = geometry_from_parsing(p)
    cov = coverage(alpha, p, geom, cover_alpha=0.5, region_threshold=0.3)
    assert cov["face_pixels"] == 50
    assert cov["occluded_fraction"] == pytest.approx(20 / 50)
    assert cov["region_coverage"]["nose"] == pytest.approx(0.5)
    assert cov["region_coverage"]["eyes"] == pytest.approx(0.5)
    assert cov["region_coverage"]["mouth"] == 0.0
    assert {"nose", "eyes"} <= set(cov["regions"]) and "mouth" not in cov["regions"]


def test_same_seed_same_pixels_and_seed_depends_on_key():
    rgb, parsing, _ = _face()
    a, fa = occlude(rgb, parsing, None, None, None, 7, ALL_OCCLUDERS)
    b, fb = occlude(rgb, parsing, None, None, None, 7, ALL_OCCLUDERS)
    assert np.array_equal(a, b) and fa == fb
    assert sample_seed(0, "k1") == sample_seed(0, "k1") != sample_seed(0, "k2") != sample_seed(1, "k1")


# --- the stage -----------------------------------------------------------------------------------


def test_stage_deterministic_recomputes_from_occluded_image(tmp_path):
    src = _write_priors(tmp_path / "priors")
    params = OcclusionParams(seed=3)
    rec = Recorder()
    rep = synthetic_occlusion_stage(src, tmp_path / "o1", params, rec, "ds", progress=False)
    assert rep.samples == 10 and rep.skipped == 0
    tars = sorted((tmp_path / "o1").glob(f"{SET_NAME}-*.tar"))
    assert [t.name for t in tars] == [f"{SET_NAME}-00000{i}.tar" for i in range(3)]
    # The callable saw each occluded image exactly as stored, never the clean one.
    samples = list(shards.iter_samples(tmp_path / "o1", SET_NAME, decode=None))
    assert len(rec.seen) == 10
    clean = {s["__key__"]: s["jpg"] for s in shards.iter_samples(src, "test", decode=None)}
    for seen, s in zip(rec.seen, samples):
        assert np.array_equal(seen, _rgb(s["jpg"]))
        assert not np.array_equal(seen, _rgb(clean[s["__key__"]]))
        meta = json.loads(s["json"])
        occ = meta["occlusion"]
        assert occ["set"] == SET_NAME and occ["priors_recomputed"] and occ["source_key"] == s["__key__"]
        # Placed from the aligned points, never from the source's priors (a network's output).
        assert occ["parsing_source"] == "approximated-from-points" and occ["geometry_source"] == "aligned-5"
        m = (seen.mean(-1) < 100).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["parsing.png"]))), m)
        assert int(s["cls"]) == int(s["__key__"][-4:]) % 7
    md = read_metadata(tmp_path / "o1" / f"{SET_NAME}.parquet")
    assert list(md.columns[:8]) == ["key", "source_key", "variant", "label", "occluder", "placement", "regions",
                                    "occluded_fraction"]
    assert len(md) == 10 and md["seed"].tolist() == [sample_seed(3, k) for k in md["key"]]
    # Byte-identical rerun into a fresh directory; and a rerun in place resumes every shard.
    synthetic_occlusion_stage(src, tmp_path / "o2", params, Recorder(), "ds", progress=False)
    for name in [t.name for t in tars] + [f"{SET_NAME}_index.json", "index.json", f"{SET_NAME}.parquet"]:
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes(), name
    again = synthetic_occlusion_stage(src, tmp_path / "o1", params, Recorder(), "ds", progress=False)
    assert again.shards_resumed == 3
    md_text = gallery_markdown(tmp_path / "o1", src, limit=4)
    assert md_text.count("data:image/jpeg;base64,") == 8 and "Occlu-FER" in md_text  # "not Occlu-FER"


def test_features_kind_falls_back_to_points_aligned(tmp_path):
    src = _write_priors(tmp_path / "priors", n=3, kind="features", per_shard=3)

    def recompute(rgb):
        return {"lmk.npy": _npy(np.ones((2, 4, 7, 7), np.float16)), "seg.npy": _npy(np.ones((2, 4, 7, 7), np.float16))}

    rep = synthetic_occlusion_stage(src, tmp_path / "o", OcclusionParams(variants=2), recompute, "ds",
                                    progress=False)
    assert rep.samples == 6
    s = next(iter(shards.iter_samples(tmp_path / "o", SET_NAME, decode=None)))
    occ = json.loads(s["json"])["occlusion"]
    assert s["__key__"].endswith("_v0") and occ["geometry_source"] == "aligned-5"
    assert occ["parsing_source"] == "approximated-from-points"
    assert np.load(io.BytesIO(s["lmk.npy"])).sum() > 0


def test_run_occlusion_writes_report(tmp_path):
    from ferpipe.layout import Layout
    from ferpipe.occlusion.stage import OcclusionStage

    _write_priors(tmp_path / "data" / "priors" / "ds", n=4)
    params = SimpleNamespace(download=SimpleNamespace(dataset="ds"), occlusion=OcclusionParams())
    rep = OcclusionStage(Recorder()).run(params, Layout(tmp_path))
    assert "synthetic-occlusion ds: 4 samples" in rep.summary()
    assert (tmp_path / "reports" / "occlusion" / "ds.json").is_file()


# --- RAN subset lists ----------------------------------------------------------------------------


def _manifest(keys_splits):
    return pd.DataFrame([{"key": k, "split": s, "path": f"Image/aligned/{k}_aligned.jpg", "status": "ok",
                          "label": lab} for k, s, lab in keys_splits])


def test_ran_rafdb_occlusion_list(tmp_path):
    f = tmp_path / "rafdb_occlusion_list.txt"
    f.write_text("test_0001_aligned 3 1\ntest_0002_aligned 0 4\ntest_0002_aligned 0 4\n\n"
                 "test_0003_aligned 6 2\ntest_0009_aligned 5 3\n")
    sub = parse_subset_list(f, "ran-rafdb-occlusion", "occlusion-rafdb")
    assert [e.stem for e in sub.entries] == ["test_0001", "test_0002", "test_0003", "test_0009"]
    assert sub.duplicates == [{"subset": "occlusion-rafdb", "stem": "test_0002", "line": 3, "first_line": 2,
                               "same": True}]
    frame = _manifest([("test_0001", "test", 3), ("test_0002", "test", 0), ("test_0003", "train", 6),
                       ("test_0005", "test", 1)])
    res = resolve_subset(sub, frame)
    assert res.keys == ["test_0001", "test_0002"]
    assert res.codes == {"test_0001": "code_1", "test_0002": "code_4"}
    missing = {p["stem"]: p["detail"] for p in res.problems if p["problem"] == "missing"}
    assert set(missing) == {"test_0003", "test_0009"}
    assert "found in train" in missing["test_0003"] and "not in the manifest" in missing["test_0009"]
    f.write_text("test_0001_aligned 9 1\n")
    with pytest.raises(DataError, match=r"rafdb_occlusion_list.txt:1"):
        parse_subset_list(f, "ran-rafdb-occlusion", "x")


def test_pose_ferplus_affectnet_lists(tmp_path):
    pose = tmp_path / "val_raf_db_list.txt"
    pose.write_text("3/test_0001_aligned.jpg\n0/test_0002_aligned.jpg\n")
    lab = tmp_path / "val_raf_db_list_label.txt"
    lab.write_text("1247 7\n")
    sub = parse_subset_list(pose, "ran-rafdb-pose", "pose30-rafdb", lab)
    assert [e.label for e in sub.entries] == ["3", "0"]
    assert [p["problem"] for p in sub.problems] == ["count_mismatch"]
    fer = tmp_path / "jianfei_occlusion_list.txt"
    fer.write_text("1_fer0032222.png 8 0\n4_fer0000007.png 8 3\n")
    sub = parse_subset_list(fer, "ran-ferplus-occlusion", "occlusion-ferplus")
    assert [(e.stem, e.label, e.code) for e in sub.entries] == [("fer0032222", "1", "code_0"),
                                                                 ("fer0000007", "4", "code_3")]
    aff = tmp_path / "occlusion_affectnet_list.txt"
    aff.write_text("val/2/0a1b2c3d/\nval/5/ffee/\n")
    sub = parse_subset_list(aff, "ran-affectnet-occlusion", "occlusion-affectnet")
    assert [(e.stem, e.label) for e in sub.entries] == [("0a1b2c3d", "2"), ("ffee", "5")]


def test_build_subsets_writes_parquet_and_problems(tmp_path):
    from ferpipe.occlusion.params import SubsetListParams

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "occ.txt").write_text("test_0001_aligned 3 1\ntest_0001_aligned 3 1\ntest_0004_aligned 2 2\n")
    frame = _manifest([("test_0001", "test", 3), ("test_0002", "test", 0)])
    frame["dataset"] = "ds"
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame.assign(landmarks5=[None] * len(frame)), preserve_index=False)
    table = table.replace_schema_metadata({b"ferpipe.label_space": json.dumps({"name": "basic7"}).encode()})
    pq.write_table(table, tmp_path / "m.parquet")
    doc = build_subsets([SubsetListParams(name="occlusion-rafdb", format="ran-rafdb-occlusion", path="occ.txt")],
                        tmp_path / "m.parquet", raw, tmp_path / "out")
    assert doc["subsets"]["occlusion-rafdb"]["keys"] == 1 and len(doc["duplicates"]) == 1
    assert [p["stem"] for p in doc["problems"]] == ["test_0004"]
    got = pd.read_parquet(tmp_path / "out" / "subsets.parquet")
    assert got.to_dict("records") == [{"subset": "occlusion-rafdb", "key": "test_0001", "code": "code_1",
                                       "list_label": "3"}]


# --- placement: from the data, never from a network ------------------------------------------------


def test_placement_sources_in_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ferpipe.align.warp import estimate_similarity, transform_points
    from ferpipe.occlusion.placement import PlacementSource
    from ferpipe.sources.synthetic import load_ground_truth, render_archive

    res = render_archive(tmp_path / "synth", n_per_class=1, size=128, seed=3, workers=1, progress=False)
    gts = load_ground_truth(res.groundtruth)
    name, g = sorted(gts.items())[0]
    m = estimate_similarity(g.points5, template(S))
    meta = {"key": name[:-4], "source": {"path": f"Image/original/{name}"}, "matrix": m.round(6).tolist(),
            "points_aligned": transform_points(g.points5, m).round(2).tolist()}
    lm5 = (g.points5 + 1.0).reshape(-1).tolist()
    pq.write_table(pa.table({"key": [name[:-4]], "landmarks5": [lm5]}), tmp_path / "m.parquet")

    full = PlacementSource(res.groundtruth, tmp_path / "m.parquet")
    where = full(meta, (S, S))
    assert (where.geometry_source, where.parsing_source) == ("groundtruth", "groundtruth")
    assert np.allclose(where.landmarks68, transform_points(g.points68, np.asarray(meta["matrix"])))
    assert where.parsing.shape == (S, S) and set(np.unique(where.parsing)) >= {0, 1, 4, 5, 6}
    # the parsing map lands where the 68 points say the eyes are
    eye = np.round(where.landmarks68[36:42].mean(0)).astype(int)
    assert where.parsing[eye[1], eye[0]] in (4, 5)

    no_gt = PlacementSource(None, tmp_path / "m.parquet")
    where = no_gt(meta, (S, S))
    assert where.geometry_source == "dataset-5" and where.parsing is None
    assert np.allclose(where.points5, transform_points(np.asarray(lm5).reshape(5, 2), np.asarray(meta["matrix"])))
    assert PlacementSource()({**meta, "points68_aligned": np.zeros((68, 2)).tolist()}, (S, S)).geometry_source \
        == "dataset-68"
    assert PlacementSource()(meta, (S, S)).geometry_source == "aligned-5"
    # a manifest with the dataset's 68 points (136 values, source pixels) places through the matrix
    pq.write_table(pa.table({"key": [name[:-4]], "landmarks5": [lm5],
                             "landmarks": [g.points68.reshape(-1).tolist()]}), tmp_path / "m68.parquet")
    where = PlacementSource(None, tmp_path / "m68.parquet")(meta, (S, S))
    assert where.geometry_source == "dataset-68"
    assert np.allclose(where.landmarks68, transform_points(g.points68, np.asarray(meta["matrix"])))
    with pytest.raises(ValueError, match="no ground truth"):
        PlacementSource()({"key": "x"}, (S, S))
    # What identifies the placements is in the shards' fingerprint; pickling drops the caches.
    import pickle

    assert full.describe()["ground_truth"] and pickle.loads(pickle.dumps(full)).describe() == full.describe()
