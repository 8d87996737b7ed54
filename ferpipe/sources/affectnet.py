"""AffectNet (manually annotated part), in either of its two release layouts.

* npy layout: ``train_set/images/<id>.jpg`` + ``train_set/annotations/<id>_exp.npy`` (also
  ``_lnd.npy``, ``_val.npy``, ``_aro.npy``), and the same under ``val_set/``.
* csv layout: ``training.csv`` / ``validation.csv`` (subDirectory_filePath, face_x, face_y,
  face_width, face_height, facial_landmarks, expression, valence, arousal) with images under
  ``Manually_Annotated_Images/``.

AffectNet's validation set is the test set everyone reports, so it becomes our ``test`` split.
Codes 8-10 (None, Uncertain, Non-face) are dropped and listed as problems; 7 (contempt) is kept
and the label space decides. Keys use AffectNet's own split name (``train-<id>``, ``val-<id>``).

Landmarks: the csv layout's 68 points are in the pixels of the image it lists and are reduced to
5 (eye centres, nose tip, mouth corners). In the npy layout the frame of ``_lnd.npy`` is not
documented with the release, so it is read only with ``npy_landmarks=True``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ferpipe.errors import DataError
from ferpipe.labels import get_native_map
from ferpipe.sources.records import (
    Problem,
    RawRecord,
    ReaderResult,
    finalize,
    landmarks68_to_5,
    listdir_set,
    make_key,
    rel,
)

_NPY_SETS = (("train_set", "train", "train"), ("val_set", "test", "val"))
_CSV_SETS = (("training.csv", "train"), ("validation.csv", "test"))
_CSV_IMAGES = "Manually_Annotated_Images"
_CSV_REQUIRED = ("subDirectory_filePath", "expression")
_DROPPED = {"8": "None", "9": "Uncertain", "10": "Non-face"}


def read_affectnet(root: str | os.PathLike, *, npy_landmarks: bool = False) -> ReaderResult:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"affectnet: dataset root {root} does not exist or is not a directory")
    for base in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        if any((base / s / "annotations").is_dir() for s, _, _ in _NPY_SETS):
            return _read_npy(root, base, npy_landmarks)
        if any((base / f).is_file() for f, _ in _CSV_SETS):
            return _read_csv(root, base)
    raise DataError(
        f"affectnet: {root} holds neither train_set/annotations/ (npy layout) nor "
        f"training.csv/validation.csv (csv layout)"
    )


def _dropped(path: str, code: str) -> Problem:
    return Problem(path, f"label {code} ({_DROPPED[code]}) is not an expression")


def _label(code: str, where: str) -> str:
    code = code.strip()
    try:
        code = str(int(float(code)))  # "3", "3.0", np.int64
    except ValueError:
        pass
    if not get_native_map("affectnet").knows(code):
        raise DataError(
            f"affectnet: {where}: expression {code!r} is not an AffectNet code (0-10)"
        )
    return code


def _read_npy(root: Path, base: Path, npy_landmarks: bool) -> ReaderResult:
    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for set_name, split, key_split in _NPY_SETS:
        ann_dir = base / set_name / "annotations"
        img_dir = base / set_name / "images"
        if not ann_dir.is_dir():
            continue
        anns = listdir_set(ann_dir)
        images = {n.rsplit(".", 1)[0]: n for n in listdir_set(img_dir) if "." in n}
        ids = sorted(n[: -len("_exp.npy")] for n in anns if n.endswith("_exp.npy"))
        for img_id in ids:
            ann = ann_dir / f"{img_id}_exp.npy"
            where = rel(root, ann)
            try:
                arr = np.load(ann, allow_pickle=False)
                code = str(arr.reshape(-1)[0]) if arr.size == 1 else None
            except (OSError, ValueError) as exc:
                problems.append(Problem(where, f"unreadable annotation ({exc})"))
                continue
            if code is None:
                raise DataError(f"affectnet: {where}: expected one expression code, got {arr!r}")
            code = _label(code, where)
            img = images.get(img_id)
            if img is None:
                problems.append(Problem(
                    rel(root, img_dir / f"{img_id}.jpg"), f"image for {where} is missing"))
                continue
            path = rel(root, img_dir / img)
            if code in _DROPPED:
                problems.append(_dropped(path, code))
                continue
            lmk = None
            if npy_landmarks:
                lmk_file = ann_dir / f"{img_id}_lnd.npy"
                try:
                    pts = np.load(lmk_file, allow_pickle=False).astype(float).reshape(-1)
                    lmk = landmarks68_to_5(pts.tolist()) if pts.size == 136 else None
                except (OSError, ValueError):
                    lmk = None
                if lmk is None:
                    warnings.append(
                        Problem(rel(root, lmk_file), "landmarks missing or not 68 points"))
            records.append(RawRecord(make_key(key_split, img_id), split, path, code, lmk))
        annotated = {i for i in ids}
        for stem, name in sorted(images.items()):
            if stem not in annotated:
                problems.append(
                    Problem(rel(root, img_dir / name), "image has no _exp.npy annotation"))
    if not records:
        raise DataError(f"affectnet: no usable annotated image under {base}")
    return ReaderResult("affectnet", "affectnet", finalize("affectnet", records), problems,
                        "basic8", warnings)


def _read_csv(root: Path, base: Path) -> ReaderResult:
    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    img_root = base / _CSV_IMAGES
    listing: dict[Path, set[str]] = {}
    for fname, split in _CSV_SETS:
        csv_path = base / fname
        if not csv_path.is_file():
            continue
        cf = rel(root, csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or any(c not in header for c in _CSV_REQUIRED):
                raise DataError(
                    f"affectnet: {cf}:1: header {header} lacks the columns {list(_CSV_REQUIRED)} "
                    f"(expected subDirectory_filePath, face_x, face_y, face_width, face_height, "
                    f"facial_landmarks, expression, valence, arousal)"
                )
            col = {c: i for i, c in enumerate(header)}
            for lineno, row in enumerate(reader, 2):
                if not row:
                    continue
                where = f"{cf}:{lineno}"
                if len(row) != len(header):
                    raise DataError(
                        f"affectnet: {where}: {len(row)} fields, the header has {len(header)}"
                    )
                sub = row[col["subDirectory_filePath"]].strip()
                code = _label(row[col["expression"]], where)
                img = img_root / sub
                path = rel(root, img)
                if img.parent not in listing:
                    listing[img.parent] = listdir_set(img.parent)
                if img.name not in listing[img.parent]:
                    problems.append(Problem(path, f"image listed in {where} is missing"))
                    continue
                if code in _DROPPED:
                    problems.append(_dropped(path, code))
                    continue
                lmk = None
                if "facial_landmarks" in col:
                    try:
                        raw = row[col["facial_landmarks"]].split(";")
                        pts = [float(v) for v in raw if v.strip()]
                        lmk = landmarks68_to_5(pts) if len(pts) == 136 else None
                    except ValueError:
                        lmk = None
                    if lmk is None:
                        warnings.append(
                            Problem(path, f"{where}: facial_landmarks not 68 points; ignored"))
                stem = sub.rsplit(".", 1)[0]
                records.append(RawRecord(make_key(*stem.split("/")), split, path, code, lmk))
    if not records:
        raise DataError(f"affectnet: no usable row in the csv files under {base}")
    return ReaderResult("affectnet", "affectnet", finalize("affectnet", records), problems,
                        "basic8", warnings)
