"""CK+ (Extended Cohn-Kanade): ``cohn-kanade-images/S005/001/S005_001_00000011.png`` and
``Emotion/S005/001/S005_001_00000011_emotion.txt`` (one float such as ``3.0000000e+00``).

Codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise (the
``ckplus`` map); contempt exists only in basic8 and is listed as outside basic7. Only 327 of the
593 sequences carry an emotion file; the rest are listed as problems, one per sequence.

The usual protocol: the last ``last_frames`` frames of a labelled sequence are the expression,
its first frame is neutral (``neutral_first``); the frames between are not used (one warning per
sequence says how many). Subjects are dealt into ``folds`` seeded folds, fold ``fold`` is the
test split: no subject is in both train and test. ``Landmarks/.../<frame>_landmarks.txt``
(68 ``x y`` lines), when present, become the frame's ``landmarks`` and ``landmarks5``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.errors import DataError
from ferpipe.sources.records import IMAGE_EXTENSIONS, Problem, RawRecord, ReaderResult, _sorted_dirs
from ferpipe.sources.records import finalize, find_layout_root, fold_splits, landmarks68_to_5, make_key
from ferpipe.sources.records import missing_dir, rel

IMAGES = "cohn-kanade-images"
EMOTION = "Emotion"
LANDMARKS = "Landmarks"


def read_ckplus(root: str | os.PathLike, *, last_frames: int = 3, neutral_first: bool = True,
                folds: int = 10, fold: int = 0, seed: int = 0) -> ReaderResult:
    root = Path(root)
    if last_frames < 1:
        raise DataError(f"ckplus: download.ckplus_last_frames must be >= 1, got {last_frames}")
    base = find_layout_root(root, (IMAGES,), "ckplus")
    if not (base / EMOTION).is_dir():
        raise missing_dir("ckplus", root, base / EMOTION, f"CK+'s labels come in Emotion_labels.zip, unpacked "
                          f"beside {IMAGES}/ (Emotion/S005/001/S005_001_00000011_emotion.txt)")
    problems: list[Problem] = []
    warnings: list[Problem] = []
    picked: list[tuple[str, str, Path, str, Path | None]] = []  # subject, seq, frame, label, lmk
    for subj_dir in _sorted_dirs(base / IMAGES):
        for seq_dir in _sorted_dirs(subj_dir):
            subject, seq = subj_dir.name, seq_dir.name
            frames = sorted(p for p in seq_dir.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not p.name.startswith("."))
            seq_rel = rel(root, seq_dir)
            if not frames:
                problems.append(Problem(seq_rel, "sequence folder holds no image"))
                continue
            emo_dir = base / EMOTION / subject / seq
            emo = sorted(emo_dir.glob("*_emotion.txt")) if emo_dir.is_dir() else []
            if not emo:
                problems.append(Problem(seq_rel, f"sequence has no {EMOTION} label (CK+ labels "
                                                 f"327 of its 593 sequences)"))
                continue
            where = f"{rel(root, emo[-1])}:1"
            try:
                value = float(emo[-1].read_text(encoding="utf-8", errors="replace").split()[0])
            except (IndexError, ValueError):
                raise DataError(f"ckplus: {where}: expected one number such as 3.0000000e+00 "
                                f"(0 neutral .. 7 surprise)") from None
            if value != int(value) or not 0 <= value <= 7:
                raise DataError(f"ckplus: {where}: emotion {value!r} is not a CK+ code 0-7")
            label = str(int(value))
            if len(frames) < last_frames + int(neutral_first):
                problems.append(Problem(seq_rel, f"{len(frames)} frames, fewer than the "
                                                 f"{last_frames} + neutral the protocol takes"))
                continue
            lmk_dir = base / LANDMARKS / subject / seq
            chosen = [(f, label) for f in frames[-last_frames:]]
            if neutral_first:
                chosen.insert(0, (frames[0], "0"))
            unused = len(frames) - len(chosen)
            if unused:
                warnings.append(Problem(seq_rel, f"{unused} middle frames not used (last "
                                                 f"{last_frames} = expression"
                                                 + (", first = neutral)" if neutral_first else ")")))
            for f, lab in chosen:
                lmk = lmk_dir / f"{f.stem}_landmarks.txt"
                picked.append((subject, seq, f, lab, lmk if lmk.is_file() else None))
    if not picked:
        raise DataError(f"ckplus: no labelled sequence under {rel(root, base / IMAGES)}")
    split_of = fold_splits({p[0] for p in picked}, folds, fold, seed, "ckplus")
    records: list[RawRecord] = []
    for subject, seq, frame, label, lmk_file in picked:
        pts = _landmarks(lmk_file, root, warnings) if lmk_file else None
        records.append(RawRecord(
            make_key(subject, seq, frame.stem.rsplit("_", 1)[-1]),
            split_of[subject], rel(root, frame), label,
            landmarks68_to_5(list(pts)) if pts else None, landmarks=pts))
    return ReaderResult("ckplus", "ckplus", finalize("ckplus", records), problems, "basic8",
                        warnings)


def _landmarks(path: Path, root: Path, warnings: list[Problem]) -> tuple[float, ...] | None:
    try:
        pts = tuple(round(float(v), 3) for v in path.read_text(errors="replace").split())
    except (OSError, ValueError) as exc:
        warnings.append(Problem(rel(root, path), f"landmarks ignored: unreadable ({exc})"))
        return None
    if len(pts) != 136:
        warnings.append(Problem(rel(root, path), f"landmarks ignored: {len(pts)} values, "
                                                 f"expected 68 'x y' lines"))
        return None
    return pts
