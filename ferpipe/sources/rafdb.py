"""RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (sic) + ``Image/{original,aligned}/``.

Label lines are ``train_00001.jpg 5`` (1-based RAF order); ``train_*`` is the train split and
``test_*`` the test split (RAF-DB has no validation split). The manual 5-point landmarks
(``Annotation/manual/<stem>_manu_attri.txt``: five ``x y`` lines, then attributes) are in the
original image's pixels, so they are attached only when ``images="original"``; the aligned
100x100 crops get ``landmarks5=None``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.errors import DataError
from ferpipe.labels import get_native_map
from ferpipe.sources.records import (
    Problem,
    RawRecord,
    ReaderResult,
    finalize,
    find_layout_root,
    listdir_set,
    make_key,
    rel,
)

LABEL_FILE = "EmoLabel/list_patition_label.txt"
_LABEL_FILE_FIXED = "EmoLabel/list_partition_label.txt"  # in case a repack fixed the spelling
_SPLIT_PREFIX = {"train": "train", "test": "test"}


def read_rafdb(root: str | os.PathLike, *, images: str = "original") -> ReaderResult:
    root = Path(root)
    if images not in ("original", "aligned"):
        raise DataError(f"rafdb: images must be 'original' or 'aligned', got {images!r}")
    base = find_layout_root(root, (LABEL_FILE, _LABEL_FILE_FIXED), "rafdb")
    label_file = base / LABEL_FILE
    if not label_file.exists():
        label_file = base / _LABEL_FILE_FIXED
    nmap = get_native_map("rafdb")
    img_dir = base / "Image" / images
    present = listdir_set(img_dir)
    lmk_dir = base / "Annotation" / "manual"
    lmk_present = listdir_set(lmk_dir) if images == "original" else set()
    if not present:
        raise DataError(f"rafdb: image folder {img_dir} is missing or empty (images={images!r})")

    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen: set[str] = set()
    lf = rel(root, label_file)
    with open(label_file, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{lf}:{lineno}"
            if len(parts) != 2:
                raise DataError(
                    f"rafdb: {where}: expected '<name>.jpg <label 1-7>', got {line.strip()!r}"
                )
            name, label = parts
            if not nmap.knows(label):
                raise DataError(
                    f"rafdb: {where}: label {label!r} for {name} is not one of "
                    f"{', '.join(nmap.allowed)} (RAF-DB labels are 1-based)"
                )
            stem = name.rsplit(".", 1)[0]
            split = _SPLIT_PREFIX.get(stem.split("_", 1)[0])
            if split is None:
                raise DataError(
                    f"rafdb: {where}: image name {name!r} starts with neither 'train_' nor 'test_'"
                )
            if stem in seen:
                problems.append(Problem(where, f"duplicate entry for {name}; first one kept"))
                continue
            seen.add(stem)
            fname = name if images == "original" else f"{stem}_aligned.jpg"
            path = rel(root, img_dir / fname)
            if fname not in present:
                problems.append(Problem(path, f"image listed in {where} is missing"))
                continue
            lmk = None
            lmk_name = f"{stem}_manu_attri.txt"
            if lmk_name in lmk_present:
                lmk, err = _read_landmarks(lmk_dir / lmk_name)
                if err:
                    warnings.append(Problem(rel(root, lmk_dir / lmk_name), err))
            records.append(RawRecord(make_key(stem), split, path, label, lmk))
    if not records:
        raise DataError(f"rafdb: {lf} lists no usable image")
    return ReaderResult("rafdb", "rafdb", finalize("rafdb", records), problems, "basic7", warnings)


def _read_landmarks(path: Path) -> tuple[tuple[float, ...] | None, str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        pts = [float(v) for ln in lines[:5] for v in ln.split()]
    except (OSError, ValueError) as exc:
        return None, f"landmarks ignored: unreadable ({exc})"
    if len(lines) < 5 or len(pts) != 10:
        return None, "landmarks ignored: expected five 'x y' lines first"
    return tuple(pts), ""
