"""SFEW 2.0: ``Train/<Class>/*`` and ``Val/<Class>/*`` (class folders Angry .. Surprise).

SFEW's test labels were never released, so its Val set is our test split (as every paper
reports it) and there is no val split; an unlabelled ``Test`` folder is ignored with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.sources.records import ReaderResult, finalize, find_layout_root, read_class_tree

_SPLITS = {"train": "train", "val": "test"}


def read_sfew(root: str | os.PathLike) -> ReaderResult:
    root = Path(root)
    base = find_layout_root(root, ("Train", "Val", "train", "val"), "sfew")
    records, problems, warnings, _ = read_class_tree("sfew", root, base, _SPLITS, "sfew")
    return ReaderResult("sfew", "sfew", finalize("sfew", records), problems, "basic7", warnings)
