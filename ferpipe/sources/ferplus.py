"""FERPlus: FER2013's 48x48 images with 10-annotator votes.

Two layouts are accepted:

* csv: ``fer2013.csv`` (emotion, pixels, Usage) + ``fer2013new.csv`` (Usage, Image name, vote
  counts for neutral .. contempt, unknown, NF), row-aligned. The pixels are materialised as PNG
  files ``images/<split>/<name>.png`` under the dataset root, deterministically (fixed PNG
  settings; a file already holding the same bytes is left alone), because the rest of the
  pipeline reads image files.
* folders (FERPlus's generate_training_data output): ``FER2013Train/``, ``FER2013Valid/``,
  ``FER2013Test/``, each with images and a header-less ``label.csv``:
  ``fer0000000.png,(x, y, w, h),<10 votes>``.

Label: ``vote="argmax"`` takes the class with the most votes; a tie for the most votes is
dropped (no principled winner), as is a row whose winner is unknown or NF (not a face).
``vote="majority"`` additionally requires the winner to hold more than half the votes (FERPlus's
own "majority" mode). Dropped rows are problems with the reason. Usage Training → train,
PublicTest → val, PrivateTest → test. The native label is the winning column name.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ferpipe.errors import DataError
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

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt", "unknown", "NF")
_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}


def vote_label(votes: list[int], vote: str = "argmax") -> tuple[str | None, str]:
    """(winning column, "") or (None, reason to drop)."""
    top = max(votes)
    if top <= 0:
        return None, "no votes"
    winners = [VOTE_COLUMNS[i] for i, v in enumerate(votes) if v == top]
    if len(winners) > 1:
        return None, f"tied vote between {', '.join(winners)}"
    win = winners[0]
    if win in ("unknown", "NF"):
        return None, f"most votes for {win}"
    if vote == "majority" and top * 2 <= sum(votes):
        return None, f"{win} has {top} of {sum(votes)} votes, not a majority"
    return win, ""


def read_ferplus(root: str | os.PathLike, *, vote: str = "argmax") -> ReaderResult:
    root = Path(root)
    if vote not in ("argmax", "majority"):
        raise DataError(f"ferplus: vote must be 'argmax' or 'majority', got {vote!r}")
    base = find_layout_root(
        root, ("fer2013new.csv", "FER2013Train/label.csv", "FER2013Valid/label.csv"), "ferplus"
    )
    if (base / "fer2013new.csv").is_file():
        records, problems = _read_csv(root, base, vote)
    else:
        records, problems = _read_folders(root, base, vote)
    if not records:
        raise DataError(f"ferplus: no usable image under {base}")
    return ReaderResult("ferplus", "ferplus", finalize("ferplus", records), problems, "basic8")


def _votes(fields: list[str], where: str) -> list[int]:
    try:
        votes = [int(float(v)) for v in fields]
    except ValueError:
        raise DataError(f"ferplus: {where}: vote counts must be numbers, got {fields}") from None
    if len(votes) != len(VOTE_COLUMNS) or min(votes) < 0:
        raise DataError(
            f"ferplus: {where}: expected {len(VOTE_COLUMNS)} non-negative vote counts "
            f"({', '.join(VOTE_COLUMNS)}), got {fields}"
        )
    return votes


def _read_csv(root: Path, base: Path, vote: str) -> tuple[list[RawRecord], list[Problem]]:
    old_path, new_path = base / "fer2013.csv", base / "fer2013new.csv"
    if not old_path.is_file():
        raise DataError(f"ferplus: {rel(root, new_path)} needs fer2013.csv (the pixels) beside it")
    of, nf = rel(root, old_path), rel(root, new_path)
    with open(old_path, newline="", encoding="utf-8-sig") as fh:
        old = list(csv.reader(fh))
    with open(new_path, newline="", encoding="utf-8-sig") as fh:
        new = list(csv.reader(fh))
    if not old or [c.strip() for c in old[0]] != ["emotion", "pixels", "Usage"]:
        raise DataError(f"ferplus: {of}:1: expected header emotion,pixels,Usage, got {old[:1]}")
    want_new = ["Usage", "Image name", *VOTE_COLUMNS]
    if not new or [c.strip() for c in new[0]] != want_new:
        raise DataError(f"ferplus: {nf}:1: expected header {','.join(want_new)}, got {new[:1]}")
    old_rows = [r for r in old[1:] if r]
    new_rows = [r for r in new[1:] if r]
    if len(old_rows) != len(new_rows):
        raise DataError(
            f"ferplus: {of} has {len(old_rows)} rows but {nf} has {len(new_rows)}; FERPlus's file "
            f"is row-aligned with FER2013's, so both must come from the same release"
        )
    records: list[RawRecord] = []
    problems: list[Problem] = []
    made_dirs: set[Path] = set()
    for i, (o, n) in enumerate(zip(old_rows, new_rows)):
        line = i + 2
        where = f"{nf}:{line}"
        if len(n) != len(want_new) or len(o) != 3:
            raise DataError(f"ferplus: {where} (or {of}:{line}): wrong number of fields")
        usage = n[0].strip()
        if usage not in _USAGE:
            raise DataError(f"ferplus: {where}: Usage {usage!r} is not one of {list(_USAGE)}")
        if o[2].strip() != usage:
            raise DataError(
                f"ferplus: {of}:{line} has Usage {o[2]!r} but {where} has {usage!r}: the files "
                f"are not row-aligned"
            )
        name = n[1].strip()
        if not name:
            problems.append(Problem(f"{of}:{line}", "FERPlus gives no image name (excluded row)"))
            continue
        label, reason = vote_label(_votes(n[2:], where), vote)
        if label is None:
            problems.append(Problem(f"{of}:{line}", f"{name}: {reason}"))
            continue
        try:
            pixels = np.array(o[1].split(), dtype=np.int64)
            if pixels.size != 48 * 48 or pixels.min() < 0 or pixels.max() > 255:
                raise ValueError(f"{pixels.size} values")
        except ValueError as exc:
            problems.append(Problem(f"{of}:{line}", f"{name}: bad pixels ({exc})"))
            continue
        split = _USAGE[usage]
        stem = name.rsplit(".", 1)[0]
        out = root / "images" / split / f"{stem}.png"
        if out.parent not in made_dirs:
            out.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(out.parent)
        _write_png(out, pixels.astype(np.uint8).reshape(48, 48))
        records.append(RawRecord(make_key(stem), split, rel(root, out), label))
    return records, problems


def _write_png(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG", compress_level=6, optimize=False)
    data = buf.getvalue()
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    from ferpipe.tempfiles import private_sibling  # noqa: PLC0415

    tmp = private_sibling(path, kind="file")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_folders(root: Path, base: Path, vote: str) -> tuple[list[RawRecord], list[Problem]]:
    records: list[RawRecord] = []
    problems: list[Problem] = []
    found = False
    for folder, split in _FOLDERS.items():
        label_csv = base / folder / "label.csv"
        if not label_csv.is_file():
            continue
        found = True
        present = listdir_set(base / folder)
        lf = rel(root, label_csv)
        with open(label_csv, newline="", encoding="utf-8-sig") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row:
                    continue
                where = f"{lf}:{lineno}"
                # The box is quoted "(x, y, w, h)" by FERPlus's writer; tolerate it unquoted.
                if len(row) == 12:
                    name, votes = row[0], row[2:]
                elif len(row) == 15:
                    name, votes = row[0], row[5:]
                else:
                    raise DataError(
                        f"ferplus: {where}: expected '<name>.png,(x, y, w, h),<10 votes>', got "
                        f"{len(row)} fields"
                    )
                name = name.strip()
                label, reason = vote_label(_votes(votes, where), vote)
                path = rel(root, base / folder / name)
                if name not in present:
                    problems.append(Problem(path, f"image listed in {where} is missing"))
                    continue
                if label is None:
                    problems.append(Problem(path, reason))
                    continue
                records.append(RawRecord(make_key(name.rsplit(".", 1)[0]), split, path, label))
    if not found:
        raise DataError(f"ferplus: no FER2013Train/label.csv etc. under {base}")
    return records, problems
