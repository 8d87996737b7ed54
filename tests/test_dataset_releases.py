"""Datasets exactly as their owners ship them (issue 14): trees built here in the releases'
own layouts (file names, separators, header or none, label numbering), read end to end by the
download stage. Every listed row is either in the manifest or in the report's rejected list."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest

from ferpipe.config import params_from_dict
from ferpipe.errors import DataError
from ferpipe.layout import Layout
from ferpipe.manifest import STATUS_OK, read_manifest
from ferpipe.sources.download import download_stage
from ferpipe.sources.ferplus import vote_label
from ferpipe.sources.readers import READERS
from tests.test_readers import _check, _img

AFFECTNET_COLUMNS = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal"]


def _download(tmp_path: Path, source: Path, fmt: str, **extra):
    params = params_from_dict({"download": {"dataset": "ds", "format": fmt, "source": str(source),
                                            "workers": 1, "val_fraction": 0.0, **extra}}).download
    layout = Layout(tmp_path / "proj")
    report = download_stage(params, layout, log=lambda _: None)
    return report, read_manifest(layout.manifest("ds"))


def _listed_equals_manifest_plus_rejected(report, manifest, listed: int) -> None:
    """Nothing silently dropped: manifest rows + rejected entries that are not manifest rows
    (a manifest row with a bad status is also in the rejected list, with the same reason)."""
    frame = manifest.frame
    bad = {(p, s) for p, s in zip(frame["path"], frame["status"]) if s != STATUS_OK}
    rejected = {(r["path"], r["reason"]) for r in report.rejected}
    assert bad <= rejected
    assert len(frame) + len(report.rejected) - len(bad) == listed, (len(frame), report.rejected)


def _counts(report) -> dict[str, dict[str, int]]:
    return {row["split"]: {k: v for k, v in row.items() if k != "split" and v}
            for row in report.counts}


# ------------------------------------------------------------------- AffectNet, original release


def _affectnet_original(root: Path) -> int:
    """Manually_Annotated/Manually_Annotated_Images/<subdir>/<file> + the two csv lists, with
    validation.csv header-less as released. Returns the number of listed rows."""
    img = root / "Manually_Annotated" / "Manually_Annotated_Images"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    lmk = ";".join(f"{10 + i % 30}.5" for i in range(136))
    train = [("689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg", 1),
             ("689/a.JPG", 7), ("12/b.png", 9), ("12/c.jpg", 0), ("12/gone.jpg", 3),
             ("13/d.jpg", 6)]
    val = [("2/v1.jpg", 3), ("2/v2.jpg", 7), ("3/v3.jpg", 10)]
    for rows, name, header in ((train, "training.csv", True), (val, "validation.csv", False)):
        with open(lists / name, "w", newline="") as fh:
            w = csv.writer(fh)
            if header:
                w.writerow(AFFECTNET_COLUMNS)
            for sub, code in rows:
                if "gone" not in sub:
                    _img(img / sub, (40, 30), "PNG" if sub.endswith(".png") else "JPEG")
                w.writerow([sub, 4, 3, 20, 22, lmk, code, 0.25, -0.5])
    return len(train) + len(val)


@pytest.mark.parametrize("as_zip", [False, True])
def test_affectnet_original_release(tmp_path, as_zip):
    listed = _affectnet_original(tmp_path / "AffectNet")
    source = tmp_path / "AffectNet"
    if as_zip:  # the user's own zip of what they unpacked, wrapped in one folder
        source = tmp_path / "affectnet.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for p in sorted((tmp_path / "AffectNet").rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(tmp_path).as_posix())
    report, man = _download(tmp_path, source, "affectnet", label_space="basic8")
    assert _counts(report) == {
        "train": {"happiness": 1, "anger": 1, "neutral": 1, "contempt": 1, "total": 4},
        "test": {"surprise": 1, "contempt": 1, "total": 2},
    }
    rows = {Path(p).name: r for p, r in zip(man.frame["path"], man.frame.to_dict("records"))}
    first = rows["737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg"]
    assert first["path"] == ("Manually_Annotated/Manually_Annotated_Images/689/"
                             "737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg")
    assert (first["native_label"], first["label"], first["split"]) == ("1", 3, "train")
    assert list(first["bbox"]) == [4.0, 3.0, 24.0, 25.0]
    assert len(first["landmarks"]) == 136 and len(first["landmarks5"]) == 10
    assert (rows["v1.jpg"]["split"], rows["v1.jpg"]["native_label"]) == ("test", "3")
    assert rows["d.jpg"]["label"] == 5  # AffectNet 6 (anger) -> canonical 5
    reasons = {Path(r["path"]).name: r["reason"] for r in report.rejected}
    assert reasons == {
        "b.png": "label 9 (Uncertain) is not an expression",
        "gone.jpg": "image listed in Manually_Annotated_file_lists/training.csv:6 is missing",
        "v3.jpg": "label 10 (Non-face) is not an expression",
    }
    _listed_equals_manifest_plus_rejected(report, man, listed)
    # basic7: contempt rows stay listed, as outside the space, never remapped
    report7, man7 = _download(tmp_path / "b7", source, "affectnet", label_space="basic7")
    outside = [r for r in report7.rejected if r["reason"].startswith("outside label space")]
    assert sorted(Path(r["path"]).name for r in outside) == ["a.JPG", "v2.jpg"]
    _listed_equals_manifest_plus_rejected(report7, man7, listed)


def test_affectnet_images_elsewhere_says_where_it_looked(tmp_path):
    _affectnet_original(tmp_path)
    (tmp_path / "Manually_Annotated").rename(tmp_path / "somewhere_else")
    with pytest.raises(DataError) as err:
        READERS["affectnet"](tmp_path)
    msg = str(err.value)
    assert "looked for <subDirectory_filePath> under Manually_Annotated_file_lists/" \
           "Manually_Annotated/Manually_Annotated_Images/" in msg
    assert "./Manually_Annotated/Manually_Annotated_Images/" not in msg
    assert "Manually_Annotated/Manually_Annotated_Images/" in msg and "689/737db" in msg
    assert len(msg) < 1200


def test_affectnet_headerless_bad_row_is_named(tmp_path):
    _affectnet_original(tmp_path)
    (tmp_path / "Manually_Annotated_file_lists/validation.csv").write_text("a.jpg;1;2\n")
    with pytest.raises(DataError, match=r"validation.csv:1: neither a header .* got 1 fields"):
        READERS["affectnet"](tmp_path)


# ------------------------------------------------------------------------------------- RAF-DB


def _raf(root: Path, lines: list[str], boxes: bool = True) -> None:
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel/list_patition_label.txt").write_text("".join(f"{x}\n" for x in lines))
    for ln in lines:
        name = ln.split()[0]
        stem = name.rsplit(".", 1)[0]
        _img(root / "Image/original" / name, (30, 24), "JPEG")
        _img(root / "Image/aligned" / f"{stem}_aligned.jpg", (10, 10), "JPEG")
        if boxes:
            (root / "Annotation/boundingbox").mkdir(parents=True, exist_ok=True)
            (root / f"Annotation/boundingbox/{stem}_boundingbox.txt").write_text(
                "2.5 3.0 20.0 21.5\n")


def test_rafdb_compound_reads_into_compound11_and_basic_is_refused(tmp_path):
    lines = [f"train_{i:04d}.jpg {lab}" for i, lab in enumerate([1, 9, 11, 4, 9], 1)]
    lines += ["test_0001.jpg 10", "test_0002.jpg 1"]
    _raf(tmp_path / "compound", lines)
    report, man = _download(tmp_path, tmp_path / "compound", "rafdb", label_space="compound11")
    assert _counts(report) == {
        "train": {"happily_surprised": 1, "sadly_angry": 1, "angrily_surprised": 2,
                  "disgustedly_surprised": 1, "total": 5},
        "test": {"happily_surprised": 1, "angrily_disgusted": 1, "total": 2}}
    assert man.label_space["name"] == "compound11"
    row = man.frame[man.frame["key"] == "train_0003"].iloc[0]
    assert (row["native_label"], row["label"]) == ("11", 10)
    assert list(row["bbox"]) == [2.5, 3.0, 20.0, 21.5]
    with pytest.raises(DataError, match=r"RAF-DB compound .*not basic.*label_space: compound11"):
        _download(tmp_path / "b", tmp_path / "compound", "rafdb", label_space="basic7")
    with pytest.raises(DataError, match=r"label '9'.*compound, not basic"):
        _download(tmp_path / "c", tmp_path / "compound", "rafdb", rafdb_variant="basic")


def test_rafdb_basic_refuses_compound11_and_keeps_boxes(tmp_path):
    _raf(tmp_path / "basic", ["train_00001.jpg 5", "test_0001.jpg 7"])
    with pytest.raises(DataError, match=r"not compound.*label_space: basic7"):
        _download(tmp_path, tmp_path / "basic", "rafdb", label_space="compound11")
    res = READERS["rafdb"](tmp_path / "basic")
    assert res.native_map == "rafdb" and res.records[0].bbox == (2.5, 3.0, 20.0, 21.5)
    assert READERS["rafdb"](tmp_path / "basic", images="aligned").records[0].bbox is None


def test_raf_ce_is_refused_by_name(tmp_path):
    (tmp_path / "RAF-CE").mkdir()
    (tmp_path / "RAF-CE/RAFCE_emolabel.txt").write_text("0001.jpg 13\n")
    with pytest.raises(DataError, match=r"RAF-CE/ is RAF-CE .* does not read"):
        READERS["rafdb"](tmp_path)


# --------------------------------------------------------------------------------------- ExpW


def test_expw_one_sample_per_face_with_its_box(tmp_path):
    root = tmp_path / "ExpW"
    _img(root / "image/origin/afraid_African_214.jpg", (200, 160), "JPEG")
    _img(root / "image/origin/angry_actor_104.jpg", (120, 100), "JPEG")
    _img(root / "image/origin/happy_family_7.jpg", (120, 100), "JPEG")
    (root / "label").mkdir()
    (root / "label/label.lst").write_text(
        "afraid_African_214.jpg 0 28 113 174 89 69.7605 2\n"
        "afraid_African_214.jpg 1 30 10 60 50 40.1 6\n"
        "angry_actor_104.jpg 0 10 20 70 80 55.0 0\n"
        "happy_family_7.jpg 0 5 5 5 40 12.0 3\n"      # empty box: left == right
        "missing_photo_1.jpg 0 1 2 30 40 50.0 5\n")
    report, man = _download(tmp_path, root, "expw", folds=2, fold=0, seed=3)
    frame = man.frame.set_index("key")
    assert sorted(frame.index) == ["afraid_African_214-0", "afraid_African_214-1",
                                   "angry_actor_104-0"]
    a0, a1 = frame.loc["afraid_African_214-0"], frame.loc["afraid_African_214-1"]
    assert list(a0["bbox"]) == [113.0, 28.0, 174.0, 89.0]  # left top right bottom
    assert (a0["native_label"], a0["label"], a1["label"]) == ("2", 1, 6)  # fear, neutral
    assert frame.loc["angry_actor_104-0", "label"] == 5  # anger
    assert a0["split"] == a1["split"]  # all faces of one photo in one fold
    assert sorted(Path(r["path"]).name for r in report.rejected) == [
        "happy_family_7.jpg", "missing_photo_1.jpg"]
    _listed_equals_manifest_plus_rejected(report, man, 5)
    (root / "label/label.lst").write_text("afraid_African_214.jpg 0 28 113 89 174 2\n")
    with pytest.raises(DataError, match=r"label/label.lst:1: expected 8 space-separated fields"):
        READERS["expw"](root)


# --------------------------------------------------------------------------- numbered folders


@pytest.mark.parametrize("folders,order,expect", [
    (["0", "3", "6"], "fer2013", {"0": "anger", "3": "happiness", "6": "neutral"}),
    (["00", "03", "06"], ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
     {"00": "neutral", "03": "surprise", "06": "anger"}),
    (["1", "4", "7"], "rafdb", {"1": "surprise", "4": "happiness", "7": "neutral"}),
    (["1", "2"], {1: "Angry", 2: "contempt"}, {"1": "anger", "2": "contempt"}),
])
def test_numbered_imagefolder_class_order(tmp_path, folders, order, expect):
    for f in folders:
        _img(tmp_path / "train" / f / "x.png", fmt="PNG")
        _img(tmp_path / "test" / f / "y.png", fmt="PNG")
    res = READERS["imagefolder"](tmp_path, class_order=order)
    recs = _check(res)
    classes = {r.native_label: res.label_map.canonical_name(r.native_label)
               for r in recs.values()}
    assert classes == expect
    assert res.default_space == ("basic8" if "contempt" in expect.values() else "basic7")


def test_numbered_imagefolder_without_class_order_is_refused(tmp_path):
    _img(tmp_path / "train" / "3" / "x.png", fmt="PNG")
    with pytest.raises(DataError, match=r"'train/3' is a number.*download.class_order"):
        READERS["imagefolder"](tmp_path)
    with pytest.raises(DataError, match=r"folder 7.*not in|allowed names"):
        _img(tmp_path / "train" / "7" / "x.png", fmt="PNG")
        READERS["imagefolder"](tmp_path, class_order=["happy", "sad", "angry", "fear"])
    with pytest.raises(DataError, match="bored"):
        READERS["imagefolder"](tmp_path, class_order=["happy", "bored"])


# ------------------------------------------------------------------------------------ FERPlus


@pytest.mark.parametrize("votes,mode,label", [
    # rows from microsoft/FERPlus data/FER2013Valid/label.csv
    ([7, 0, 0, 0, 2, 0, 0, 1, 0, 0], "majority", "neutral"),       # 7 of 9 after the single vote
    ([4, 0, 0, 0, 1, 0, 0, 4, 1, 0], "majority", None),            # 4 of 8: not more than half
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "majority", None),
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], "plurality", None),           # tie
    ([4, 0, 1, 2, 0, 0, 0, 0, 3, 0], "plurality", "neutral"),
    ([4, 0, 1, 2, 0, 0, 0, 0, 3, 0], "probability", None),         # unknown stops it at 4 of 9
    ([1, 0, 0, 1, 0, 2, 0, 6, 0, 0], "crossentropy", "contempt"),
    ([3, 0, 0, 4, 0, 0, 0, 0, 3, 0], "probability", "sadness"),
    ([0, 0, 0, 0, 0, 0, 0, 0, 2, 8], "majority", None),            # NF wins
])
def test_ferplus_modes_follow_microsoft_ferplus(votes, mode, label):
    win, reason, dist = vote_label(votes, mode)
    assert win == label, reason
    if mode in ("probability", "crossentropy") and label:
        assert len(dist) == 8 and abs(sum(dist) - 1) < 1e-5
    if votes == [3, 0, 0, 4, 0, 0, 0, 0, 3, 0] and mode == "probability":
        assert dist[:4] == pytest.approx((3 / 7, 0, 0, 4 / 7), abs=1e-5)


def test_ferplus_clone_uses_its_data_folders(tmp_path):
    clone = tmp_path / "FERPlus"
    (clone / "src").mkdir(parents=True)
    (clone / "fer2013new.csv").write_text(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
        "unknown,NF\nTraining,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n")
    rows = {"FER2013Train": ['fer0000000.png,"(0, 0, 48, 48)",0,10,0,0,0,0,0,0,0,0',
                             'fer0000001.png,"(0, 0, 48, 48)",6,0,0,1,0,2,0,1,0,0',
                             'fer0000002.png,"(0, 0, 48, 48)",3,0,0,4,0,0,0,0,3,0'],
            "FER2013Valid": ['fer0028638.png,"(0, 0, 48, 48)",4,0,0,0,1,0,0,4,1,0',
                             'fer0028640.png,"(0, 0, 48, 48)",7,0,0,0,2,0,0,1,0,0'],
            "FER2013Test": ['fer0032220.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,0,2,8']}
    for folder, lines in rows.items():
        (clone / "data" / folder).mkdir(parents=True)
        (clone / "data" / folder / "label.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data/FER2013\w+/label.csv lists images but .*"
                                        r"generate_training_data.py"):
        READERS["ferplus"](clone)
    for folder, lines in rows.items():
        for ln in lines:
            _img(clone / "data" / folder / ln.split(",")[0], (48, 48), "PNG")
    report, man = _download(tmp_path, clone, "ferplus", label_space="basic8",
                            ferplus_mode="crossentropy")
    frame = man.frame.set_index("key")
    assert sorted(frame.index) == ["fer0000000", "fer0000001", "fer0000002", "fer0028640"]
    assert frame.loc["fer0000002", "native_label"] == "sadness"
    soft = frame.loc["fer0000002", "soft_label"]  # basic8 order: ... sadness 4, neutral 6
    assert soft[4] == pytest.approx(4 / 7, abs=1e-5) and soft[6] == pytest.approx(3 / 7, abs=1e-5)
    assert frame.loc["fer0028640", "split"] == "val" and frame.loc["fer0028640", "soft_label"] is None
    assert {Path(r["path"]).name for r in report.rejected} == {"fer0028638.png", "fer0032220.png"}
    _listed_equals_manifest_plus_rejected(report, man, 6)


# ----------------------------------------------------------------------------------------- CK+


def _ckplus(root: Path) -> None:
    seqs = {("S005", "001"): (5, "   3.0000000e+00\n"), ("S010", "002"): (4, "2.0000000e+00\n"),
            ("S011", "001"): (3, None), ("S014", "003"): (6, "5.0000000e+00\n")}
    for (subj, seq), (n, emo) in seqs.items():
        for f in range(1, n + 1):
            _img(root / "cohn-kanade-images" / subj / seq / f"{subj}_{seq}_{f:08d}.png",
                 (64, 49), "PNG")
        if emo is not None:
            d = root / "Emotion" / subj / seq
            d.mkdir(parents=True)
            (d / f"{subj}_{seq}_{n:08d}_emotion.txt").write_text(emo)
    lm = root / "Landmarks/S005/001"
    lm.mkdir(parents=True)
    (lm / "S005_001_00000005_landmarks.txt").write_text(
        "".join(f"   {10 + i % 20:.7e}   {20 + i % 15:.7e}\n" for i in range(68)))


def test_ckplus_protocol_folds_and_contempt(tmp_path):
    _ckplus(tmp_path / "CK+")
    report, man = _download(tmp_path, tmp_path / "CK+", "ckplus", label_space="basic7",
                            folds=3, fold=1, seed=0)
    frame = man.frame.set_index("key")
    # S005/001: first frame neutral, last 3 disgust; S010: contempt (outside basic7, listed)
    assert frame.loc["S005-001-00000001", "native_label"] == "0"
    assert [frame.loc[f"S005-001-0000000{i}", "label"] for i in (3, 4, 5)] == [2, 2, 2]
    assert "S005-001-00000002" not in frame.index
    assert frame.loc["S014-003-00000006", "label"] == 3  # happy
    contempt = frame[frame["native_label"] == "2"]
    assert len(contempt) == 3 and (contempt["status"].str.startswith("outside label space")).all()
    assert len(frame.loc["S005-001-00000005", "landmarks"]) == 136
    by_subject = frame.groupby(frame.index.str[:4])["split"].nunique()
    assert (by_subject == 1).all() and set(frame["split"]) <= {"train", "test"}
    assert [r["path"] for r in report.rejected if "Emotion" in r["reason"]] == [
        "cohn-kanade-images/S011/001"]
    report8, man8 = _download(tmp_path / "b8", tmp_path / "CK+", "ckplus", label_space="basic8",
                              folds=3, fold=1, seed=0)
    assert (man8.frame["status"] == STATUS_OK).sum() == 12
    (tmp_path / "CK+/Emotion/S005/001/S005_001_00000005_emotion.txt").write_text("9.0e+00\n")
    with pytest.raises(DataError, match=r"S005_001_00000005_emotion.txt:1: emotion 9.0 is not"):
        READERS["ckplus"](tmp_path / "CK+", folds=3)
