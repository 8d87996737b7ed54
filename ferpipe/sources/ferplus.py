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

A clone of microsoft/FERPlus (``fer2013new.csv`` at the top, ``data/FER2013Train|Valid|Test/
label.csv``) is read through its folders when no ``fer2013.csv`` lies beside ``fer2013new.csv``;
the repository ships labels only, so its folders must hold the PNGs its
``generate_training_data.py`` writes (an error says so when they do not).

Label modes, after microsoft/FERPlus ``src/ferplus.py`` (``_process_data``, read 2026-12):

* ``majority`` (FERPlus's default): votes of 1 are dropped as outliers; the winner needs more
  than half of the remaining votes.
* ``probability`` / ``crossentropy``: after the same outlier removal, the top classes are taken
  greedily (all classes tied at the current maximum at once) until they cover 75% of the votes
  or 3 classes are taken, stopping at unknown/NF; the row is dropped when the taken classes
  hold no more than half the votes or more than 3 were needed. The normalised votes of the taken
  classes are the target (``soft_label``, FERPlus column order); the hard label is its first
  maximum. FERPlus samples one label per epoch from it (probability) or trains on it as a soft
  target (crossentropy): the manifest carries the distribution for both.
* ``plurality``: the class with the most raw votes; ties are dropped.

In every mode a row whose winner is unknown or NF (not a face) is dropped. As in FERPlus's
``train.py``, ``mode`` labels the train split and val/test always use ``majority`` (set
``eval_mode`` to change that). Dropped rows are problems with the reason. Usage Training →
train, PublicTest → val, PrivateTest → test. The native label is the winning column name.
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
MODES = ("majority", "plurality", "probability", "crossentropy")
_N_EMOTIONS = 8  # the columns before unknown and NF


def _plurality(votes: list[int]) -> tuple[str | None, str]:
    top = max(votes)
    winners = [VOTE_COLUMNS[i] for i, v in enumerate(votes) if v == top]
    if len(winners) > 1:
        return None, f"tied vote between {', '.join(winners)}"
    return winners[0], ""


def _majority(votes: list[int]) -> tuple[str | None, str]:
    kept = [v if v > 1 else 0 for v in votes]  # single votes are outliers
    total, top = sum(kept), max(kept)
    win = VOTE_COLUMNS[kept.index(top)]
    if top * 2 <= total:
        return None, (f"no majority after dropping single votes: {win} has {top} of {total}"
                      if total else "no class has more than one vote")
    return win, ""


def _distribution(votes: list[int]) -> tuple[list[float] | None, str]:
    """FERPlus's probability/crossentropy target over all 10 columns, or None and why."""
    raw = [float(v) if v > 1 else 0.0 for v in votes]
    total = sum(raw)
    taken = [0.0] * len(raw)
    count = 0
    covered = 0.0
    valid = True
    while covered < 0.75 * total and count < 3 and valid:
        top = max(raw)
        for i, v in enumerate(raw):
            if v != top:
                continue
            taken[i], raw[i] = v, 0.0
            covered += v
            count += 1
            if i >= _N_EMOTIONS:  # unknown or NF reached: stop here
                valid = False
                if sum(taken) > v:  # other classes came first: leave unknown/NF out
                    taken[i] = 0.0
                    count -= 1
                break
    if total <= 0 or sum(taken) <= 0.5 * total or count > 3:
        return None, (f"votes too spread for a target (the top classes hold {sum(taken):g} of "
                      f"{total:g} votes after dropping single votes, in {count} classes)")
    s = sum(taken)
    return [v / s for v in taken], ""


def vote_label(votes: list[int], mode: str = "majority",
               ) -> tuple[str | None, str, tuple[float, ...] | None]:
    """(winning column, "", soft target or None) or (None, reason to drop, None).

    The soft target (probability/crossentropy) covers the 8 expression columns in FERPlus's
    order (neutral .. contempt)."""
    if max(votes) <= 0:
        return None, "no votes", None
    dist = None
    if mode == "plurality":
        win, reason = _plurality(votes)
    elif mode == "majority":
        win, reason = _majority(votes)
    elif mode in ("probability", "crossentropy"):
        full, reason = _distribution(votes)
        win = None if full is None else VOTE_COLUMNS[full.index(max(full))]
        if full is not None and win not in ("unknown", "NF"):
            s = sum(full[:_N_EMOTIONS])
            dist = tuple(round(v / s, 6) for v in full[:_N_EMOTIONS])
    else:
        raise DataError(f"ferplus: download.ferplus_mode must be one of {', '.join(MODES)}, "
                        f"got {mode!r}")
    if win is None:
        return None, reason, None
    if win in ("unknown", "NF"):
        return None, f"most votes for {win}", None
    return win, "", dist


def read_ferplus(root: str | os.PathLike, *, mode: str = "majority",
                 eval_mode: str = "majority") -> ReaderResult:
    root = Path(root)
    for name, value in (("ferplus_mode", mode), ("ferplus_eval_mode", eval_mode)):
        if value not in MODES:
            raise DataError(f"ferplus: download.{name} must be one of {', '.join(MODES)}, "
                            f"got {value!r}")
    modes = {"train": mode, "val": eval_mode, "test": eval_mode}
    base = find_layout_root(
        root, ("fer2013new.csv", "FER2013Train/label.csv", "FER2013Valid/label.csv"), "ferplus"
    )
    folders = _folder_base(base)
    if (base / "fer2013new.csv").is_file() and (
            (base / "fer2013.csv").is_file() or folders is None):
        records, problems = _read_csv(root, base, modes)
    else:
        records, problems = _read_folders(root, folders or base, modes)
    if not records:
        raise DataError(f"ferplus: no usable image under {base}")
    return ReaderResult("ferplus", "ferplus", finalize("ferplus", records), problems, "basic8",
                        soft_classes=VOTE_COLUMNS[:_N_EMOTIONS])


def _folder_base(base: Path) -> Path | None:
    """Where FER2013Train|Valid|Test/label.csv live: ``base`` or a clone's ``data/``."""
    for b in (base, base / "data"):
        if any((b / f / "label.csv").is_file() for f in _FOLDERS):
            return b
    return None


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


def _read_csv(root: Path, base: Path, modes: dict[str, str]) -> tuple[list[RawRecord], list[Problem]]:
    old_path, new_path = base / "fer2013.csv", base / "fer2013new.csv"
    if not old_path.is_file():
        raise DataError(
            f"ferplus: {rel(root, new_path)} holds the votes only: put FER2013's fer2013.csv (the "
            f"pixels, from the FER2013 release) beside it, or point download.source at a folder "
            f"with FER2013Train/ FER2013Valid/ FER2013Test/ (or a microsoft/FERPlus clone whose "
            f"data/ folders hold the PNGs its generate_training_data.py writes)")
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
        label, reason, dist = vote_label(_votes(n[2:], where), modes[_USAGE[usage]])
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
        records.append(RawRecord(make_key(stem), split, rel(root, out), label, soft_label=dist))
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


def _read_folders(root: Path, base: Path, modes: dict[str, str],
                  ) -> tuple[list[RawRecord], list[Problem]]:
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
        if not any(n.lower().endswith(".png") for n in present):
            raise DataError(
                f"ferplus: {lf} lists images but {rel(root, base / folder)}/ holds no PNG. "
                f"microsoft/FERPlus ships labels only: run its src/generate_training_data.py "
                f"(-d {rel(root, base) if base != root else '.'} -fer fer2013.csv -ferplus "
                f"fer2013new.csv), or put FER2013's fer2013.csv beside fer2013new.csv")
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
                label, reason, dist = vote_label(_votes(votes, where), modes[split])
                path = rel(root, base / folder / name)
                if name not in present:
                    problems.append(Problem(path, f"image listed in {where} is missing"))
                    continue
                if label is None:
                    problems.append(Problem(path, reason))
                    continue
                records.append(RawRecord(make_key(name.rsplit(".", 1)[0]), split, path, label,
                                         soft_label=dist))
    if not found:
        raise DataError(f"ferplus: no FER2013Train/label.csv etc. under {base}")
    return records, problems
