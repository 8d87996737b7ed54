"""RAF-DB basic and compound: ``EmoLabel/list_patition_label.txt`` (sic) + ``Image/{original,aligned}/``.

Label lines are ``train_00001.jpg 5`` (1-based RAF order); ``train_*`` is the train split and
``test_*`` the test split (RAF-DB has no validation split). The compound release has the same
files with 4-digit train names and labels 1-11 (Happily Surprised .. Disgustedly Surprised); it
reads through the ``rafdb_compound`` map into the ``compound11`` space. ``variant="auto"`` tells
them apart by the train names' digits (5 basic, 4 compound), then by the largest label.

The manual 5-point landmarks (``Annotation/manual/<stem>_manu_attri.txt``: five ``x y`` lines,
then attributes) and the face box (``Annotation/boundingbox/<stem>_boundingbox.txt``:
``x0 y0 x1 y1``, RAF-DB v1.1) are in the original image's pixels, so they are attached only when
``images="original"``; the aligned 100x100 crops get neither.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.errors import DataError
from ferpipe.labels import get_native_map
from ferpipe.sources.records import Problem, RawRecord, ReaderResult, finalize, find_layout_root
from ferpipe.sources.records import listdir_set, make_key, missing_dir, rel, xyxy

LABEL_FILE = "EmoLabel/list_patition_label.txt"
_LABEL_FILE_FIXED = "EmoLabel/list_partition_label.txt"  # in case a repack fixed the spelling
_SPLIT_PREFIX = {"train": "train", "test": "test"}
_VARIANTS = {"basic": ("rafdb", "1-7", 5), "compound": ("rafdb_compound", "1-11", 4)}


def _detect_variant(lines: list[str]) -> str:
    """basic or compound, from the train names' digit count, else from the largest label."""
    digits = set()
    top = 0
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue
        stem = parts[0].rsplit(".", 1)[0]
        if stem.startswith("train_"):
            digits.add(len(stem[len("train_"):]))
        if parts[1].isdigit():
            top = max(top, int(parts[1]))
    if digits == {4}:
        return "compound"
    if digits == {5}:
        return "basic"
    return "compound" if top > 7 else "basic"


def _label_lines(root: Path) -> tuple[Path, Path, list[str]]:
    """The release root, its label file (either spelling) and the file's lines."""
    try:
        base = find_layout_root(root, (LABEL_FILE, _LABEL_FILE_FIXED), "rafdb")
    except DataError:
        _refuse_raf_ce(root)
        raise
    label_file = base / LABEL_FILE
    if not label_file.exists():
        label_file = base / _LABEL_FILE_FIXED
    with open(label_file, encoding="utf-8-sig") as fh:
        return base, label_file, fh.read().splitlines()


def _annotation(root: Path, path: Path, present: set[str], read, warnings: list[Problem]):
    """``read(path)``'s value when the file is there; an unreadable one is a warning and None."""
    if path.name not in present:
        return None
    value, err = read(path)
    if err:
        warnings.append(Problem(rel(root, path), err))
    return value


def read_rafdb(root: str | os.PathLike, *, images: str = "original",
               variant: str = "auto") -> ReaderResult:
    root = Path(root)
    if images not in ("original", "aligned"):
        raise DataError(f"rafdb: images must be 'original' or 'aligned', got {images!r}")
    if variant not in ("auto", "basic", "compound"):
        raise DataError(f"rafdb: variant must be auto, basic or compound, got {variant!r}")
    base, label_file, lines = _label_lines(root)
    detected = _detect_variant(lines)
    chosen = detected if variant == "auto" else variant
    map_name, label_range, _ = _VARIANTS[chosen]
    dataset = f"rafdb {chosen}"
    nmap = get_native_map(map_name)
    img_dir = base / "Image" / images
    present = listdir_set(img_dir)
    lmk_dir = base / "Annotation" / "manual"
    lmk_present = listdir_set(lmk_dir) if images == "original" else set()
    box_dir = base / "Annotation" / "boundingbox"
    box_present = listdir_set(box_dir) if images == "original" else set()
    if not present:
        raise missing_dir("rafdb", root, img_dir, f"download.rafdb_images is {images!r}; the release has "
                                                  f"Image/original/ and Image/aligned/ beside EmoLabel/")

    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    seen: set[str] = set()
    lf = rel(root, label_file)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{lf}:{lineno}"
        if len(parts) != 2:
            raise DataError(
                f"rafdb: {where}: expected '<name>.jpg <label {label_range}>', got "
                f"{line.strip()!r}"
            )
        name, label = parts
        if not nmap.knows(label):
            raise DataError(_bad_label(where, name, label, chosen, variant, detected))
        stem = name.rsplit(".", 1)[0]
        split = _SPLIT_PREFIX.get(stem.split("_", 1)[0])
        if split is None:
            raise DataError(
                f"{dataset}: {where}: image name {name!r} starts with neither 'train_' nor "
                f"'test_'"
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
        lmk = _annotation(root, lmk_dir / f"{stem}_manu_attri.txt", lmk_present, _read_landmarks, warnings)
        box = _annotation(root, box_dir / f"{stem}_boundingbox.txt", box_present, _read_box, warnings)
        records.append(RawRecord(make_key(stem), split, path, label, lmk, bbox=box))
    if not records:
        raise DataError(f"{dataset}: {lf} lists no usable image")
    space = "compound11" if chosen == "compound" else "basic7"
    return ReaderResult("rafdb", map_name, finalize("rafdb", records), problems, space, warnings)


def _refuse_raf_ce(root: Path) -> None:
    """RAF-CE (the newer compound set: ``RAFCE_emolabel.txt``, 14 classes from 0) shares RAF-DB's
    name but not its labels; name it rather than say the label file is missing."""
    try:
        found = find_layout_root(root, ("RAFCE_emolabel.txt", "RAFCE_partition.txt"), "rafdb")
    except DataError:
        return
    raise DataError(
        f"rafdb: {rel(root, found) if found != root else '.'}/ is RAF-CE (RAFCE_emolabel.txt, "
        f"14 compound classes numbered from 0), a variant ferpipe does not read; download.format "
        f"rafdb reads RAF-DB basic (labels 1-7) and RAF-DB compound (labels 1-11) with "
        f"EmoLabel/list_patition_label.txt")


def _bad_label(where: str, name: str, label: str, chosen: str, variant: str,
               detected: str) -> str:
    if chosen == "basic" and label.isdigit() and 8 <= int(label) <= 11:
        return (
            f"rafdb: {where}: label {label!r} for {name} is not a RAF-DB basic label (1-7): "
            f"labels up to 11 are RAF-DB compound, not basic (1 Happily Surprised .. "
            f"11 Disgustedly Surprised); set download.rafdb_variant: compound (or auto) and "
            f"download.label_space: compound11"
            + ("" if variant == "basic" else f" (the train names say {detected})")
        )
    _, label_range, digits = _VARIANTS[chosen]
    return (
        f"rafdb: {where}: label {label!r} for {name} is not a RAF-DB {chosen} label "
        f"({label_range}, 1-based); read as {chosen} because "
        + (f"download.rafdb_variant is {variant!r}" if variant != "auto"
           else f"its train names have {digits} digits")
    )


def _read_box(path: Path) -> tuple[tuple[float, float, float, float] | None, str]:
    try:
        vals = [float(v) for v in path.read_text(encoding="utf-8", errors="replace").split()]
    except (OSError, ValueError) as exc:
        return None, f"face box ignored: unreadable ({exc})"
    box = xyxy(*vals) if len(vals) == 4 else None
    if box is None:
        return None, f"face box ignored: expected 'x0 y0 x1 y1' with x1 > x0, y1 > y0, got {vals}"
    return box, ""


def _read_landmarks(path: Path) -> tuple[tuple[float, ...] | None, str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        pts = [float(v) for ln in lines[:5] for v in ln.split()]
    except (OSError, ValueError) as exc:
        return None, f"landmarks ignored: unreadable ({exc})"
    if len(lines) < 5 or len(pts) != 10:
        return None, "landmarks ignored: expected five 'x y' lines first"
    return tuple(pts), ""
