"""ExpW (Expression in-the-Wild): ``image/origin/*.jpg`` + ``label/label.lst``.

Each line of ``label.lst`` is one annotated face, space-separated:
``image_name face_id top left right bottom confidence label`` (labels 0 angry, 1 disgust,
2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral; the ``expw`` map). An image can hold several
faces: each line is its own sample (key ``<image stem>-<face_id>``) with its box as ``bbox``
(left, top, right, bottom), which the align stage uses to pick that face.

ExpW ships no split. Source images are dealt into ``folds`` seeded folds (all faces of a photo in
one fold); fold ``fold`` is the test split, the rest train (the download stage carves val).
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.errors import DataError
from ferpipe.labels import get_native_map
from ferpipe.sources.records import Problem, RawRecord, ReaderResult, finalize, find_layout_root
from ferpipe.sources.records import fold_splits, listdir_set, make_key, missing_dir, rel, xyxy

LABEL_FILE = "label/label.lst"
IMAGE_DIR = "image/origin"
_FIELDS = "image_name face_id top left right bottom confidence label"


def read_expw(root: str | os.PathLike, *, folds: int = 10, fold: int = 0,
              seed: int = 0) -> ReaderResult:
    root = Path(root)
    base = find_layout_root(root, (LABEL_FILE,), "expw")
    label_file = base / LABEL_FILE
    img_dir = base / IMAGE_DIR
    present = listdir_set(img_dir)
    lf = rel(root, label_file)
    if not present:
        raise missing_dir("expw", root, img_dir, "the release unpacks its image/origin.7z.* parts into "
                                                 "image/origin/ beside label/")
    nmap = get_native_map("expw")
    rows: list[tuple[str, str, str, str, tuple[float, ...] | None]] = []
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    with open(label_file, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{lf}:{lineno}"
            parts = line.split()
            if len(parts) != 8:
                raise DataError(
                    f"expw: {where}: expected 8 space-separated fields ({_FIELDS}), got "
                    f"{len(parts)}: {line.strip()[:120]!r}")
            name, face_id, top, left, right, bottom, _conf, label = parts
            if not nmap.knows(label):
                raise DataError(
                    f"expw: {where}: label {label!r} is not an ExpW label (0 angry, 1 disgust, "
                    f"2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral)")
            try:
                t, le, r, b = (float(v) for v in (top, left, right, bottom))
            except ValueError:
                raise DataError(
                    f"expw: {where}: top left right bottom must be numbers, got "
                    f"{[top, left, right, bottom]}") from None
            path = rel(root, img_dir / name)
            if (name, face_id) in seen:
                problems.append(Problem(where, f"face {face_id} of {name} listed again; first "
                                               f"one kept"))
                continue
            seen.add((name, face_id))
            if name not in present:
                problems.append(Problem(path, f"image listed in {where} is missing"))
                continue
            box = xyxy(le, t, r, b)
            if box is None:
                problems.append(Problem(path, f"{where}: empty face box (top {top}, left "
                                              f"{left}, right {right}, bottom {bottom})"))
                continue
            rows.append((name, face_id, path, label, box))
    if not rows:
        raise DataError(f"expw: {lf} lists no usable face")
    split_of = fold_splits({r[0] for r in rows}, folds, fold, seed, "expw")
    records = [
        RawRecord(make_key(name.rsplit(".", 1)[0], face_id), split_of[name], path, label, bbox=box)
        for name, face_id, path, label, box in rows
    ]
    return ReaderResult("expw", "expw", finalize("expw", records), problems, "basic7")
