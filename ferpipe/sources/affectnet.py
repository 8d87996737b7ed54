"""AffectNet (manually annotated part), in either of its two release layouts.

* npy layout: ``train_set/images/<id>.jpg`` + ``train_set/annotations/<id>_exp.npy`` (also
  ``_lnd.npy``, ``_val.npy``, ``_aro.npy``), and the same under ``val_set/``.
* csv layout (the original release): ``Manually_Annotated_file_lists/training.csv`` and
  ``validation.csv`` (subDirectory_filePath, face_x, face_y, face_width, face_height,
  facial_landmarks, expression, valence, arousal) with images under
  ``Manually_Annotated/Manually_Annotated_Images/<subdir>/<file>``. ``validation.csv`` ships
  without a header row (``training.csv`` has one): the first row is a header when it names
  ``subDirectory_filePath``, data when it has 9 fields and an integer expression. The image
  folder is searched beside and above the csv folder (see :func:`_find_image_root`); an error
  lists every place looked at.

AffectNet's validation set is the test set everyone reports, so it becomes our ``test`` split.
Codes 8-10 (None, Uncertain, Non-face) are dropped and listed as problems; 7 (contempt) is kept
and the label space decides. Keys use AffectNet's own split name (``train-<id>``, ``val-<id>``).

Landmarks: the csv layout's 68 points are in the pixels of the image it lists; they are kept
whole (``landmarks``) and reduced to 5 (eye centres, nose tip, mouth corners). The face box
(face_x, face_y, face_width, face_height) becomes ``bbox`` (x0, y0, x1, y1): AffectNet images
can hold several faces and the box says which one is labelled. In the npy layout the frame of ``_lnd.npy`` is not
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
    find_layout_root,
    landmarks68_to_5,
    listdir_set,
    make_key,
    rel,
    xyxy,
)

_NPY_SETS = (("train_set", "train", "train"), ("val_set", "test", "val"))
_CSV_SETS = (("training.csv", "train"), ("validation.csv", "test"))
_CSV_IMAGES = "Manually_Annotated_Images"
_CSV_IMAGE_PARENT = "Manually_Annotated"
_CSV_LISTS = "Manually_Annotated_file_lists"
_CSV_AUTO = "Automatically_Annotated_file_lists"
_CSV_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                "facial_landmarks", "expression", "valence", "arousal")
_CSV_REQUIRED = ("subDirectory_filePath", "expression")
_DROPPED = {"8": "None", "9": "Uncertain", "10": "Non-face"}


def read_affectnet(root: str | os.PathLike, *, npy_landmarks: bool = False) -> ReaderResult:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"affectnet: dataset root {root} does not exist or is not a directory")
    for base in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        if any((base / s / "annotations").is_dir() for s, _, _ in _NPY_SETS):
            return _read_npy(root, base, npy_landmarks)
    try:
        base = find_layout_root(root, tuple(f for f, _ in _CSV_SETS), "affectnet")
    except DataError:
        raise DataError(
            f"affectnet: {root} holds neither train_set/annotations/ (the newer npy release) nor "
            f"{_CSV_LISTS}/training.csv or validation.csv (the original csv release), looked up "
            f"to two folders deep; set download.source to the folder (or zip) you unpacked"
        ) from None
    return _read_csv(root, base)


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


def _short(row: list[str]) -> str:
    """A row for an error message: the landmark string alone is over 1 KB."""
    return "[" + ", ".join(repr(c if len(c) <= 24 else c[:21] + "...") for c in row[:9]) + \
        (", ...]" if len(row) > 9 else "]")


def _header_or_none(first: list[str], cf: str) -> list[str] | None:
    """The header row's columns, or None when ``first`` is already data (validation.csv)."""
    cells = [c.strip() for c in first]
    if "subDirectory_filePath" in cells:
        missing = [c for c in _CSV_REQUIRED if c not in cells]
        if missing:
            raise DataError(
                f"affectnet: {cf}:1: header {_short(cells)} lacks the columns {missing} "
                f"(expected {', '.join(_CSV_COLUMNS)})")
        return cells
    looks_like_data = len(cells) == len(_CSV_COLUMNS)
    if looks_like_data:
        try:
            int(float(cells[_CSV_COLUMNS.index("expression")]))
        except ValueError:
            looks_like_data = False
    if not looks_like_data:
        raise DataError(
            f"affectnet: {cf}:1: neither a header naming subDirectory_filePath nor a data row "
            f"of {len(_CSV_COLUMNS)} fields ({', '.join(_CSV_COLUMNS)}) with an integer "
            f"expression; got {len(cells)} fields {_short(cells)}. Is download.format right?")
    return None


def _image_root_candidates(root: Path, base: Path) -> list[Path]:
    anchors: list[Path] = []
    for a in (base, base.parent, root):
        if (a == root or a.is_relative_to(root)) and a not in anchors:
            anchors.append(a)
    out: list[Path] = []
    for a in anchors:
        for c in (a / _CSV_IMAGE_PARENT / _CSV_IMAGES, a / _CSV_IMAGES, a / _CSV_IMAGE_PARENT, a):
            if c not in out:
                out.append(c)
    return out


def _find_image_root(root: Path, base: Path, subs: list[tuple[str, str]]) -> Path:
    """The folder holding the listed ``<subdir>/<file>`` paths: the first candidate where one
    of the first 50 listed images exists. The original release unpacks to
    ``Manually_Annotated/Manually_Annotated_Images/`` beside ``Manually_Annotated_file_lists/``."""
    probe = [sub for sub, _ in subs[:50]]
    candidates = _image_root_candidates(root, base)
    for c in candidates:
        if c.is_dir() and any((c / sub).is_file() for sub in probe):
            return c
    looked = ", ".join(f"{rel(root, c) if c != root else '.'}/" for c in candidates)
    where = subs[0][1] if subs else "the csv files"
    raise DataError(
        f"affectnet: no image listed in the csv files was found (first: {probe[0]!r}, listed at "
        f"{where}); looked for <subDirectory_filePath> under {looked} (relative to {root}). The "
        f"original release keeps them in {_CSV_IMAGE_PARENT}/{_CSV_IMAGES}/<subdir>/<file> beside "
        f"{_CSV_LISTS}/: unpack both into the folder download.source names"
        if probe else f"affectnet: the csv files under {base} list no image")


def _read_csv(root: Path, base: Path) -> ReaderResult:
    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    rows_by_set: list[tuple[str, str, list[tuple[int, list[str]]], dict[str, int]]] = []
    for fname, split in _CSV_SETS:
        csv_path = base / fname
        if not csv_path.is_file():
            continue
        cf = rel(root, csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            rows = [(n, r) for n, r in enumerate(csv.reader(fh), 1) if r]
        if not rows:
            warnings.append(Problem(cf, "empty file"))
            continue
        header = _header_or_none(rows[0][1], cf)
        if header is not None:
            rows = rows[1:]
        cols = header or list(_CSV_COLUMNS)
        rows_by_set.append((cf, split, rows, {c: i for i, c in enumerate(cols)}))
    for auto in (base / "automatically_annotated.csv",
                 base.parent / _CSV_AUTO / "automatically_annotated.csv"):
        if auto.is_file() and auto.is_relative_to(root):
            warnings.append(Problem(rel(root, auto), "not read: ferpipe reads the manually "
                                                     "annotated lists only"))
    subs = [(r[col["subDirectory_filePath"]].strip(), f"{cf}:{n}")
            for cf, _, rows, col in rows_by_set for n, r in rows[:50]
            if len(r) == len(col)]
    img_root = _find_image_root(root, base, subs)
    listing: dict[Path, set[str]] = {}
    for cf, split, rows, col in rows_by_set:
        for lineno, row in rows:
            where = f"{cf}:{lineno}"
            if len(row) != len(col):
                raise DataError(
                    f"affectnet: {where}: {len(row)} fields, expected {len(col)} "
                    f"({', '.join(col)})"
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
            lmk = pts68 = None
            if "facial_landmarks" in col:
                try:
                    raw = row[col["facial_landmarks"]].split(";")
                    pts = [float(v) for v in raw if v.strip()]
                    if len(pts) == 136:
                        lmk, pts68 = landmarks68_to_5(pts), tuple(round(v, 3) for v in pts)
                except ValueError:
                    lmk = None
                if lmk is None:
                    warnings.append(
                        Problem(path, f"{where}: facial_landmarks not 68 points; ignored"))
            box = None
            if all(c in col for c in ("face_x", "face_y", "face_width", "face_height")):
                try:
                    x, y, w, h = (float(row[col[c]]) for c in
                                  ("face_x", "face_y", "face_width", "face_height"))
                    box = xyxy(x, y, x + w, y + h)
                except ValueError:
                    box = None
                if box is None:
                    warnings.append(Problem(path, f"{where}: face box not usable; ignored"))
            stem = sub.rsplit(".", 1)[0]
            records.append(RawRecord(make_key(*stem.split("/")), split, path, code, lmk,
                                     bbox=box, landmarks=pts68))
    if not records:
        raise DataError(f"affectnet: no usable row in the csv files under {base}")
    return ReaderResult("affectnet", "affectnet", finalize("affectnet", records), problems,
                        "basic8", warnings)
