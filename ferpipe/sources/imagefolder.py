"""Generic ImageFolder: ``<split>/<class>/*``.

Split folders: ``train``; ``val``, ``valid`` or ``validation`` (all → val); ``test``. Class
folders are matched case-insensitively to canonical names and common synonyms (see
:mod:`ferpipe.labels`, map ``imagefolder``); an unknown name is an error listing the allowed ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.sources.records import ReaderResult, finalize, find_layout_root, read_class_tree

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_imagefolder(root: str | os.PathLike, *, dataset: str = "imagefolder") -> ReaderResult:
    root = Path(root)
    markers = tuple(_SPLITS) + tuple(s.capitalize() for s in _SPLITS)
    base = find_layout_root(root, markers, dataset)
    records, problems, warnings, classes = read_class_tree(
        dataset, root, base, _SPLITS, "imagefolder"
    )
    space = "basic8" if any(c.lower().startswith("contempt") for c in classes) else "basic7"
    return ReaderResult(
        dataset, "imagefolder", finalize(dataset, records), problems, space, warnings
    )
