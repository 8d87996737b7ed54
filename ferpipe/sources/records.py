"""What dataset readers return, and the helpers they share.

A reader turns an extracted dataset directory into :class:`RawRecord` rows without opening any
image (the download stage decodes each image exactly once, elsewhere). Entries a reader had to
skip are :class:`Problem` rows, so nothing is silently lost; structural errors (a label file in
the wrong format, an unknown class) raise :class:`ferpipe.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ferpipe.errors import DataError
from ferpipe.labels import LabelSpace, NativeMap, get_label_space, get_native_map

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Problem",
    "RawRecord",
    "ReaderResult",
    "find_layout_root",
    "make_key",
]

SPLITS = ("train", "val", "test")
# .gif: palette images decode like any other (the first frame of an animation is taken).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class RawRecord:
    """One labelled image. ``path`` is posix and relative to the dataset root."""

    key: str
    split: str
    path: str
    native_label: str
    landmarks5: tuple[float, ...] | None = None  # x0,y0..x4,y4 in source pixels
    # The annotated face: x0, y0, x1, y1 in source pixels (AffectNet, RAF-DB v1.1, ExpW). With
    # several people in a photo it says which face the label belongs to.
    bbox: tuple[float, float, float, float] | None = None
    # All the dataset's own points for this face (x0,y0,x1,y1,...), e.g. AffectNet's 68.
    landmarks: tuple[float, ...] | None = None
    # A label distribution over the native classes (FERPlus probability/crossentropy targets).
    soft_label: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the dataset root (or "file:line" for a label-file entry)
    reason: str


@dataclass
class ReaderResult:
    dataset: str
    native_map: str | NativeMap  # a name in ferpipe.labels.NATIVE_MAPS (or a built map)
    records: list[RawRecord]
    problems: list[Problem] = field(default_factory=list)  # entries skipped, with the reason
    default_space: str = "basic7"  # basic8 when the data has contempt
    warnings: list[Problem] = field(default_factory=list)  # kept entries with a caveat
    soft_classes: tuple[str, ...] = ()  # native labels of RawRecord.soft_label's entries

    @property
    def label_map(self) -> NativeMap:
        return get_native_map(self.native_map)

    @property
    def label_space(self) -> LabelSpace:
        return get_label_space(self.default_space)


def make_key(*parts: str) -> str:
    """A WebDataset-safe key: parts joined by '-', every run of other characters (dots
    included) replaced by '_'."""
    cleaned = [_KEY_BAD.sub("_", str(p)).strip("_") or "_" for p in parts]
    return "-".join(cleaned)


def finalize(dataset: str, records: list[RawRecord]) -> list[RawRecord]:
    """Sort by key and make keys unique: sanitising can map two paths onto one key; those get a
    short hash of their path appended (deterministic, so reruns keep the same keys)."""
    by_key: dict[str, list[RawRecord]] = {}
    for r in records:
        if r.split not in SPLITS:
            raise AssertionError(f"{dataset}: reader produced split {r.split!r}")
        by_key.setdefault(r.key, []).append(r)
    out: list[RawRecord] = []
    for key, group in by_key.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        for r in group:
            h = hashlib.sha1(r.path.encode()).hexdigest()[:8]
            out.append(dataclasses.replace(r, key=f"{key}-{h}"))
    out.sort(key=lambda r: r.key)
    for r in out:
        assert _KEY_OK.match(r.key), r.key
    if len({r.key for r in out}) != len(out):
        raise DataError(f"{dataset}: two entries share one path; the listing has duplicates")
    return out


def xyxy(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float] | None:
    """A face box rounded for the manifest, or None when it is empty or not finite."""
    box = tuple(float(round(v, 3)) for v in (x0, y0, x1, y1))
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box  # type: ignore[return-value]


def find_layout_root(root: Path, markers: tuple[str, ...], what: str) -> Path:
    """The directory holding one of ``markers``: ``root`` itself, or a folder up to two levels
    down (archives often wrap everything in ``basic/`` or ``<Dataset>/``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what}: dataset root {root} does not exist or is not a directory")
    frontier = [root]
    for _ in range(3):
        for d in frontier:
            if any((d / m).exists() for m in markers):
                return d
        frontier = [c for d in frontier for c in _sorted_dirs(d)]
    raise DataError(
        f"{what}: none of {list(markers)} found under {root} (looked up to two folders deep); "
        f"is this the extracted dataset? Check download.source (the folder or archive you "
        f"unpacked) and download.format (docs/datasets.md lists each release's layout)"
    )


def _sorted_dirs(d: Path) -> list[Path]:
    try:
        return sorted(
            (Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")),
            key=lambda p: p.name,
        )
    except OSError:
        return []


def rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def listdir_set(d: Path) -> set[str]:
    """File names in ``d`` (empty set when ``d`` is missing): one scandir instead of a stat per
    label line, which matters for AffectNet's 290k entries."""
    try:
        return {e.name for e in os.scandir(d)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def landmarks68_to_5(points: list[float]) -> tuple[float, ...]:
    """iBUG 68 points (x0,y0,x1,y1,...) → eye centres, nose tip, mouth corners, image-left
    first (the order of RAF-DB's manual points and MTCNN's)."""
    xy = [(points[2 * i], points[2 * i + 1]) for i in range(68)]

    def mean(idx: range) -> tuple[float, float]:
        return (sum(xy[i][0] for i in idx) / len(idx), sum(xy[i][1] for i in idx) / len(idx))

    pts = [mean(range(36, 42)), mean(range(42, 48)), xy[30], xy[48], xy[54]]
    return tuple(float(round(v, 3)) for p in pts for v in p)


def _class_parent(split_dir: Path, nmap: NativeMap) -> Path:
    """The folder holding a split's class folders: ``split_dir``, or below a lone wrapper
    folder (e.g. Train/Train_Aligned_Faces/<Class>/)."""
    base = split_dir
    while True:
        subdirs = _sorted_dirs(base)
        if (len(subdirs) == 1 and not nmap.knows(subdirs[0].name)
                and any(nmap.knows(d.name) for d in _sorted_dirs(subdirs[0]))):
            base = subdirs[0]
            continue
        return base


def _unknown_class(dataset: str, where: str, name: str, nmap: NativeMap) -> DataError:
    if name.isdigit() and not nmap.numeric:
        return DataError(
            f"{dataset}: class folder {where!r} is a number, "
            f"which names no class: set download.class_order to say which number is "
            f"which class, e.g. rafdb (1 surprise .. 7 neutral), fer2013 (0 anger .. "
            f"6 neutral), affectnet (0 neutral .. 7 contempt), a list of class names "
            f"for folders 0, 1, ..., or {{number: class}}")
    return DataError(
        f"{dataset}: unknown class folder {where!r}; allowed "
        f"names: {', '.join(nmap.allowed)}"
        + (" (case-insensitive)" if nmap.case_insensitive else "")
        + (" (numbers compare by value: 06 is 6)" if nmap.numeric else "")
        + (" as set by download.class_order" if nmap.numeric else "")
    )


def _read_class_folder(root: Path, split_name: str, split: str, class_dir: Path,
                       records: list[RawRecord], problems: list[Problem]) -> None:
    """Every image below one class folder (sorted walk, hidden entries skipped) as a record;
    non-image and empty files as problems."""
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            rp = rel(root, p)
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append(Problem(rp, f"not an image file extension ({p.suffix!r})"))
                continue
            if p.stat().st_size == 0:
                problems.append(Problem(rp, "empty file"))
                continue
            inner = p.relative_to(class_dir).with_suffix("").as_posix()
            key = make_key(split_name, class_dir.name, *inner.split("/"))
            records.append(RawRecord(key, split, rp, class_dir.name))


def read_class_tree(
    dataset: str,
    root: Path,
    layout_root: Path,
    split_dirs: dict[str, str],
    native_map: str | NativeMap,
) -> tuple[list[RawRecord], list[Problem], list[Problem], set[str]]:
    """Read ``<split>/<class>/**/<image>`` folders (the ImageFolder layout).

    ``split_dirs`` maps lower-case split folder names to our splits. Class folders are matched
    through ``native_map``; an unknown class folder is a DataError. Hidden files (``.DS_Store``)
    are ignored; other non-image files and empty files are problems. Returns records, problems,
    warnings and the class folder names seen.
    """
    nmap = get_native_map(native_map)
    records: list[RawRecord] = []
    problems: list[Problem] = []
    warnings: list[Problem] = []
    classes: set[str] = set()
    found_split = False
    for split_dir in _sorted_dirs(layout_root):
        split = split_dirs.get(split_dir.name.lower())
        if split is None:
            warnings.append(Problem(rel(root, split_dir), "folder is not a known split; ignored"))
            continue
        found_split = True
        for entry in sorted(os.scandir(_class_parent(split_dir, nmap)), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                problems.append(
                    Problem(rel(root, Path(entry.path)), "file is not in a class folder"))
                continue
            if not nmap.knows(entry.name):
                raise _unknown_class(dataset, rel(root, Path(entry.path)), entry.name, nmap)
            if nmap.is_dropped(entry.name):
                problems.append(Problem(rel(root, Path(entry.path)), "class is not an expression"))
                continue
            classes.add(entry.name)
            _read_class_folder(root, split_dir.name, split, Path(entry.path), records, problems)
    if not found_split:
        raise DataError(
            f"{dataset}: no split folder under {layout_root}; expected one of "
            f"{sorted(split_dirs)} (case-insensitive)"
        )
    return records, problems, warnings, classes


def fold_splits(groups: set[str] | list[str], folds: int, fold: int, seed: int, what: str) -> dict[str, str]:
    """``{group: "train" | "test"}``: groups (subjects, source images) sorted, permuted by a
    generator seeded with ``seed`` and dealt round-robin into ``folds`` folds; fold ``fold`` is
    the test split. Everything of one group lands in one fold, so the test split never shares a
    subject (or a photo) with training."""
    import numpy as np

    order = sorted(set(groups))
    if folds < 2 or len(order) < folds:
        raise DataError(
            f"{what}: {len(order)} groups cannot make download.folds={folds} folds "
            f"(need 2 <= folds <= {len(order)})")
    if not 0 <= fold < folds:
        raise DataError(f"{what}: download.fold={fold} is not in 0..{folds - 1}")
    perm = np.random.default_rng(seed).permutation(len(order))
    return {order[int(j)]: "test" if i % folds == fold else "train" for i, j in enumerate(perm)}


def missing_dir(what: str, root: Path, path: Path, hint: str) -> DataError:
    """The error for a release folder that is missing or empty, saying where the release keeps it."""
    return DataError(f"{what}: {rel(root, path)}/ is missing or empty; {hint}")
