"""Each reader on a tiny tree (or archive) in its dataset's real layout."""

import csv
import re
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from ferpipe.errors import DataError
from ferpipe.labels import to_canonical
from ferpipe.sources.archive import extract_archive
from ferpipe.sources.readers import READERS, get_reader

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _img(path, size=(8, 8), fmt=None, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 64, 32)).save(path, format=fmt)
    return path


def _check(result):
    keys = [r.key for r in result.records]
    assert len(set(keys)) == len(keys) and all(KEY_RE.match(k) for k in keys)
    assert all(r.split in ("train", "val", "test") for r in result.records)
    for r in result.records:
        assert "\\" not in r.path and not r.path.startswith("/")
        to_canonical(r.native_label, result.native_map, 8)  # every label is known
    return {r.key: r for r in result.records}


# ----------------------------------------------------------------------------------- RAF-DB


def _rafdb(root, lines, *, missing=(), landmarks=True):
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("".join(f"{ln}\n" for ln in lines))
    for ln in lines:
        name = ln.split()[0]
        stem = name.rsplit(".", 1)[0]
        if name in missing:
            continue
        _img(root / "Image/original" / name, (20, 20), "JPEG")
        _img(root / "Image/aligned" / f"{stem}_aligned.jpg", (10, 10), "JPEG")
        if landmarks:
            (root / "Annotation/manual").mkdir(parents=True, exist_ok=True)
            (root / f"Annotation/manual/{stem}_manu_attri.txt").write_text(
                "1.5\t2.5\n3 4\n5 6\n7 8\n9 10\n0\n1\n2\n")


def test_rafdb_from_zip_archive(tmp_path):
    src = tmp_path / "src" / "basic"
    _rafdb(src, ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 7"])
    arc = tmp_path / "basic.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(tmp_path / "src").as_posix())
    extract_archive(arc, tmp_path / "raw")
    res = get_reader("rafdb")(tmp_path / "raw")
    recs = _check(res)
    assert res.native_map == "rafdb" and res.default_space == "basic7" and not res.problems
    r = recs["train_00001"]
    assert (r.split, r.path, r.native_label) == ("train", "basic/Image/original/train_00001.jpg", "5")
    assert r.landmarks5 == (1.5, 2.5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert recs["test_0001"].split == "test"
    assert to_canonical(r.native_label, res.native_map, 7) == 4  # sadness


def test_rafdb_aligned_has_no_landmarks(tmp_path):
    _rafdb(tmp_path, ["train_00001.jpg 5"])
    res = READERS["rafdb"](tmp_path, images="aligned")
    (r,) = res.records
    assert r.path == "Image/aligned/train_00001_aligned.jpg" and r.landmarks5 is None


def test_rafdb_missing_image_is_a_problem(tmp_path):
    _rafdb(tmp_path, ["train_00001.jpg 5", "train_00002.jpg 3"], missing={"train_00002.jpg"})
    res = READERS["rafdb"](tmp_path)
    assert [r.key for r in res.records] == ["train_00001"]
    (p,) = res.problems
    assert p.path == "Image/original/train_00002.jpg" and "missing" in p.reason
    assert "list_patition_label.txt:2" in p.reason


@pytest.mark.parametrize(
    "bad,match",
    [("train_00002.jpg 8", r"list_patition_label.txt:2: label '8'.*compound, not basic.*"
                           r"download.label_space: compound11"),
     ("train_00002.jpg 12", r"list_patition_label.txt:2: label '12'.*basic label \(1-7, 1-based\)"),
     ("train_00002.jpg", r"list_patition_label.txt:2: expected '<name>.jpg <label 1-7>'"),
     ("val_00002.jpg 3", r":2: image name 'val_00002.jpg'")],
)
def test_rafdb_wrong_label_file(tmp_path, bad, match):
    _rafdb(tmp_path, ["train_00001.jpg 5"])
    with open(tmp_path / "EmoLabel/list_patition_label.txt", "a") as fh:
        fh.write(bad + "\n")
    with pytest.raises(DataError, match=match):
        READERS["rafdb"](tmp_path)


def test_rafdb_bad_landmarks_warn(tmp_path):
    _rafdb(tmp_path, ["train_00001.jpg 5"])
    (tmp_path / "Annotation/manual/train_00001_manu_attri.txt").write_text("1 2\nfoo\n")
    res = READERS["rafdb"](tmp_path)
    assert res.records[0].landmarks5 is None and len(res.warnings) == 1


def test_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="list_patition_label"):
        READERS["rafdb"](tmp_path)


# -------------------------------------------------------------------------------- AffectNet


def _affectnet_npy(root, entries):
    for set_name, img_id, code in entries:
        _img(root / set_name / "images" / f"{img_id}.jpg", fmt="JPEG")
        ann = root / set_name / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        np.save(ann / f"{img_id}_exp.npy", np.array(str(code)))
        np.save(ann / f"{img_id}_lnd.npy", np.arange(136, dtype=np.float64))
        np.save(ann / f"{img_id}_val.npy", np.array("0.5"))
        np.save(ann / f"{img_id}_aro.npy", np.array("0.1"))


def test_affectnet_npy_layout(tmp_path):
    _affectnet_npy(tmp_path, [("train_set", 0, 1), ("train_set", 1, 7), ("train_set", 2, 8),
                              ("train_set", 3, 10), ("val_set", 0, 6)])
    res = READERS["affectnet"](tmp_path)
    recs = _check(res)
    assert sorted(recs) == ["train-0", "train-1", "val-0"]
    assert recs["val-0"].split == "test" and recs["val-0"].native_label == "6"
    assert recs["train-1"].native_label == "7"
    assert to_canonical("7", res.native_map, 7) == -1 and to_canonical("7", res.native_map, 8) == 7
    assert recs["train-0"].path == "train_set/images/0.jpg" and recs["train-0"].landmarks5 is None
    reasons = sorted(p.reason for p in res.problems)
    assert reasons == ["label 10 (Non-face) is not an expression",
                       "label 8 (None) is not an expression"]
    with_lmk = READERS["affectnet"](tmp_path, npy_landmarks=True)
    lmk = {r.key: r for r in with_lmk.records}["train-0"].landmarks5
    assert lmk[4:6] == (60.0, 61.0)  # nose tip = point 30


def test_affectnet_npy_missing_image_and_bad_label(tmp_path):
    _affectnet_npy(tmp_path, [("train_set", 0, 1), ("train_set", 1, 2)])
    (tmp_path / "train_set/images/1.jpg").unlink()
    res = READERS["affectnet"](tmp_path)
    assert [r.key for r in res.records] == ["train-0"]
    assert res.problems[0].path == "train_set/images/1.jpg" and "missing" in res.problems[0].reason
    np.save(tmp_path / "train_set/annotations/0_exp.npy", np.array("12"))
    with pytest.raises(DataError, match=r"0_exp.npy: expression '12'"):
        READERS["affectnet"](tmp_path)


def _affectnet_csv(root, name, rows):
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    with open(root / name, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for sub, code in rows:
            lmk = ";".join(str(float(i)) for i in range(136))
            w.writerow([sub, 0, 0, 8, 8, lmk, code, 0.1, 0.2])


def test_affectnet_csv_layout(tmp_path):
    _img(tmp_path / "Manually_Annotated_Images/689/ab12.cd.jpg", fmt="JPEG")
    _img(tmp_path / "Manually_Annotated_Images/12/ff.png", fmt="PNG")
    _affectnet_csv(tmp_path, "training.csv", [("689/ab12.cd.jpg", 3), ("689/gone.jpg", 1),
                                              ("12/ff.png", 9)])
    _img(tmp_path / "Manually_Annotated_Images/5/v.jpg", fmt="JPEG")
    _affectnet_csv(tmp_path, "validation.csv", [("5/v.jpg", 0)])
    res = READERS["affectnet"](tmp_path)
    recs = _check(res)
    assert sorted(recs) == ["5-v", "689-ab12_cd"]
    r = recs["689-ab12_cd"]
    assert (r.split, r.native_label, r.path) == ("train", "3", "Manually_Annotated_Images/689/ab12.cd.jpg")
    assert r.landmarks5 is not None and len(r.landmarks5) == 10
    assert recs["5-v"].split == "test"
    assert {p.path: p.reason for p in res.problems} == {
        "Manually_Annotated_Images/689/gone.jpg": "image listed in training.csv:3 is missing",
        "Manually_Annotated_Images/12/ff.png": "label 9 (Uncertain) is not an expression",
    }


def test_affectnet_csv_wrong_header(tmp_path):
    (tmp_path / "training.csv").write_text("subDirectory_filePath,label\na.jpg,1\n")
    with pytest.raises(DataError, match=r"training.csv:1: header .* lacks the columns \['expression'\]"):
        READERS["affectnet"](tmp_path)
    (tmp_path / "training.csv").write_text("path,label\na.jpg,1\n")
    with pytest.raises(DataError, match=r"training.csv:1: neither a header .* nor a data row"):
        READERS["affectnet"](tmp_path)


# ---------------------------------------------------------------------------------- FERPlus

VOTES = {  # neutral happiness surprise sadness anger disgust fear contempt unknown NF
    "happy": [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],
    "tie": [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],
    "nf": [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
    "contempt": [2, 0, 0, 0, 0, 0, 0, 6, 2, 0],
    "weak": [4, 3, 3, 0, 0, 0, 0, 0, 0, 0],
}


def _ferplus_csv(root, rows):
    """rows: (usage, name, votes-key)."""
    rng = np.random.default_rng(0)
    with open(root / "fer2013.csv", "w", newline="") as fo, \
            open(root / "fer2013new.csv", "w", newline="") as fn:
        wo, wn = csv.writer(fo), csv.writer(fn)
        wo.writerow(["emotion", "pixels", "Usage"])
        wn.writerow(["Usage", "Image name", "neutral", "happiness", "surprise", "sadness",
                     "anger", "disgust", "fear", "contempt", "unknown", "NF"])
        for usage, name, v in rows:
            px = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
            wo.writerow([3, px, usage])
            wn.writerow([usage, name, *VOTES[v]])


def test_ferplus_csv_materialises_pngs(tmp_path):
    rows = [("Training", "fer0000000.png", "happy"), ("Training", "fer0000001.png", "tie"),
            ("Training", "fer0000002.png", "nf"), ("PublicTest", "fer0000003.png", "contempt"),
            ("PrivateTest", "fer0000004.png", "weak"), ("PrivateTest", "", "happy")]
    _ferplus_csv(tmp_path, rows)
    res = READERS["ferplus"](tmp_path, mode="plurality", eval_mode="plurality")
    recs = _check(res)
    assert {k: (r.split, r.native_label) for k, r in recs.items()} == {
        "fer0000000": ("train", "happiness"), "fer0000003": ("val", "contempt"),
        "fer0000004": ("test", "neutral")}
    png = tmp_path / recs["fer0000000"].path
    assert recs["fer0000000"].path == "images/train/fer0000000.png"
    with Image.open(png) as im:
        assert im.size == (48, 48) and im.mode == "L"
    reasons = sorted(p.reason for p in res.problems)
    assert any("tied vote between neutral, happiness" in r for r in reasons)
    assert any("most votes for NF" in r for r in reasons)
    assert any("no image name" in r for r in reasons)
    first = png.read_bytes()
    png.unlink()
    READERS["ferplus"](tmp_path)
    assert png.read_bytes() == first  # deterministic
    strict = READERS["ferplus"](tmp_path)  # majority, FERPlus's default
    assert "fer0000004" not in {r.key for r in strict.records}


def test_ferplus_csv_wrong_files(tmp_path):
    _ferplus_csv(tmp_path, [("Training", "fer0000000.png", "happy")])
    text = (tmp_path / "fer2013new.csv").read_text().replace("Training", "Trainning", 1)
    bad = tmp_path / "fer2013new.csv"
    bad.write_text(text)
    with pytest.raises(DataError, match=r"fer2013new.csv:2: Usage 'Trainning'"):
        READERS["ferplus"](tmp_path)
    bad.write_text("Usage,Image name,neutral\n")
    with pytest.raises(DataError, match="fer2013new.csv:1: expected header"):
        READERS["ferplus"](tmp_path)


def test_ferplus_folder_layout(tmp_path):
    for folder in ("FER2013Train", "FER2013Valid"):
        (tmp_path / folder).mkdir()
    _img(tmp_path / "FER2013Train/fer0000000.png", (48, 48), "PNG")
    rows = ['fer0000000.png,"(0, 0, 48, 48)",0,9,1,0,0,0,0,0,0,0',
            'fer0000001.png,"(0, 0, 48, 48)",0,9,1,0,0,0,0,0,0,0']
    (tmp_path / "FER2013Train/label.csv").write_text("\n".join(rows) + "\n")
    _img(tmp_path / "FER2013Valid/fer0000009.png", (48, 48), "PNG")
    (tmp_path / "FER2013Valid/label.csv").write_text(
        "fer0000009.png,(0, 0, 48, 48),0,0,0,8,0,0,0,0,2,0\n")  # unquoted box
    res = READERS["ferplus"](tmp_path)
    recs = _check(res)
    assert {k: (r.split, r.native_label, r.path) for k, r in recs.items()} == {
        "fer0000000": ("train", "happiness", "FER2013Train/fer0000000.png"),
        "fer0000009": ("val", "sadness", "FER2013Valid/fer0000009.png")}
    (p,) = res.problems
    assert p.path == "FER2013Train/fer0000001.png" and "missing" in p.reason
    (tmp_path / "FER2013Valid/label.csv").write_text("fer0000009.png,0,x\n")
    with pytest.raises(DataError, match=r"FER2013Valid/label.csv:1: expected"):
        READERS["ferplus"](tmp_path)


# ------------------------------------------------------------------ SFEW, Occlu-FER, ImageFolder


def test_sfew_from_tar(tmp_path):
    src = tmp_path / "src"
    _img(src / "Train/Angry/a1.png", fmt="PNG")
    _img(src / "Train/Happy/h.1.jpg", fmt="JPEG")
    _img(src / "Val/Surprise/s1.png", fmt="PNG")
    (src / "Train/Happy/notes.txt").write_text("x")
    (src / "Train/Happy/.DS_Store").write_text("x")
    (src / "Test").mkdir()
    arc = tmp_path / "sfew.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, p.relative_to(src).as_posix(), recursive=False)
    extract_archive(arc, tmp_path / "raw")
    res = READERS["sfew"](tmp_path / "raw")
    recs = _check(res)
    assert {k: (r.split, r.native_label, r.path) for k, r in recs.items()} == {
        "Train-Angry-a1": ("train", "Angry", "Train/Angry/a1.png"),
        "Train-Happy-h_1": ("train", "Happy", "Train/Happy/h.1.jpg"),
        "Val-Surprise-s1": ("test", "Surprise", "Val/Surprise/s1.png")}
    assert [p.path for p in res.problems] == ["Train/Happy/notes.txt"]
    assert [w.path for w in res.warnings] == ["Test"]


def test_sfew_unknown_class_folder(tmp_path):
    _img(tmp_path / "Train/Bored/a.png", fmt="PNG")
    with pytest.raises(DataError, match=r"unknown class folder 'Train/Bored'.*Angry"):
        READERS["sfew"](tmp_path)


@pytest.mark.parametrize("codes,space", [(["AN", "DI", "FE", "HA", "NE", "SA", "SU"], "basic7"),
                                         (["AN", "CO", "DI", "FE", "HA", "NE", "SA", "SU"], "basic8")])
def test_occlufer_7_or_8_folders(tmp_path, codes, space):
    for c in codes:
        _img(tmp_path / "Occlu-FER/train" / c / f"{c.lower()}1.jpg", fmt="JPEG")
        _img(tmp_path / "Occlu-FER/valid" / c / f"{c.lower()}2.jpg", fmt="JPEG")
    (tmp_path / "Occlu-FER/valid/HA/empty.jpg").write_bytes(b"")
    res = READERS["occlufer"](tmp_path)
    recs = _check(res)
    assert res.default_space == space and len(recs) == 2 * len(codes)
    assert recs["valid-HA-ha2"].split == "test" and recs["train-AN-an1"].native_label == "AN"
    assert recs["train-AN-an1"].path == "Occlu-FER/train/AN/an1.jpg"
    assert [(p.path, p.reason) for p in res.problems] == [("Occlu-FER/valid/HA/empty.jpg", "empty file")]
    if "CO" in codes:
        assert to_canonical("CO", res.native_map, 7) == -1


def test_occlufer_unknown_code(tmp_path):
    _img(tmp_path / "train/XX/a.jpg", fmt="JPEG")
    with pytest.raises(DataError, match="allowed names: AN, CO, DI"):
        READERS["occlufer"](tmp_path)


def test_imagefolder(tmp_path):
    _img(tmp_path / "train/Happy/1.png", fmt="PNG")
    _img(tmp_path / "train/angry/sub/2.png", fmt="PNG")
    _img(tmp_path / "validation/Sad/3.png", fmt="PNG")
    _img(tmp_path / "test/contempt/4.png", fmt="PNG")
    (tmp_path / "train/stray.png").write_bytes(b"x")
    res = READERS["imagefolder"](tmp_path)
    recs = _check(res)
    assert {k: r.split for k, r in recs.items()} == {
        "train-Happy-1": "train", "train-angry-sub-2": "train",
        "validation-Sad-3": "val", "test-contempt-4": "test"}
    assert res.default_space == "basic8"
    assert res.problems[0].reason == "file is not in a class folder"
    _img(tmp_path / "test/bored/5.png", fmt="PNG")
    with pytest.raises(DataError, match="bored"):
        READERS["imagefolder"](tmp_path)


def test_imagefolder_no_splits(tmp_path):
    _img(tmp_path / "happy/1.png", fmt="PNG")
    with pytest.raises(DataError, match="train"):
        READERS["imagefolder"](tmp_path)


def test_key_collisions_get_path_hash(tmp_path):
    _img(tmp_path / "train/happy/a.b.png", fmt="PNG")
    _img(tmp_path / "train/happy/a_b.png", fmt="PNG")
    res = READERS["imagefolder"](tmp_path)
    keys = [r.key for r in res.records]
    assert len(set(keys)) == 2 and all(k.startswith("train-happy-a_b-") for k in keys)
    assert keys == [r.key for r in READERS["imagefolder"](tmp_path).records]  # stable


def test_get_reader_lists_choices():
    with pytest.raises(DataError, match="affectnet, ckplus, expw, ferplus, imagefolder, occlufer, rafdb, sfew"):
        get_reader("raf")


def test_sfew_wrapper_folder(tmp_path):
    _img(tmp_path / "Train/Train_Aligned_Faces/Angry/a.png", fmt="PNG")
    res = READERS["sfew"](tmp_path)
    assert [r.path for r in res.records] == ["Train/Train_Aligned_Faces/Angry/a.png"]


def test_fold_splits_deal_each_group_into_one_test_fold():
    from ferpipe.sources.records import fold_splits

    groups = [f"S{i:03d}" for i in range(23)]
    tests = [{g for g, s in fold_splits(groups, 5, f, seed=3, what="ckplus").items() if s == "test"}
             for f in range(5)]
    assert set().union(*tests) == set(groups) and sum(map(len, tests)) == len(groups)  # a partition
    assert {len(t) for t in tests} == {4, 5}
    assert fold_splits(groups, 5, 2, seed=3, what="ckplus") == fold_splits(groups[::-1], 5, 2, seed=3, what="ckplus")
    with pytest.raises(DataError, match=r"ckplus: download.fold=5 is not in 0\.\.4"):
        fold_splits(groups, 5, 5, seed=3, what="ckplus")
    with pytest.raises(DataError, match="cannot make download.folds=30"):
        fold_splits(groups, 30, 0, seed=3, what="ckplus")
