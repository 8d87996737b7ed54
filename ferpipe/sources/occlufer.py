"""Occlu-FER: ``train/<CODE>/*`` and ``valid/<CODE>/*`` with codes AN, CO, DI, FE, HA, NE, SA, SU.

Releases differ in whether the contempt folder (CO) exists, so the folders present are read,
never assumed; ``default_space`` is basic8 only when CO is there. ``valid`` is Occlu-FER's
held-out set and becomes our test split.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.sources.records import ReaderResult, finalize, find_layout_root, read_class_tree

_SPLITS = {"train": "train", "valid": "test"}


def read_occlufer(root: str | os.PathLike) -> ReaderResult:
    root = Path(root)
    base = find_layout_root(root, ("train", "valid"), "occlufer")
    records, problems, warnings, classes = read_class_tree(
        "occlufer", root, base, _SPLITS, "occlufer"
    )
    space = "basic8" if any(c.upper() == "CO" for c in classes) else "basic7"
    return ReaderResult(
        "occlufer", "occlufer", finalize("occlufer", records), problems, space, warnings
    )
