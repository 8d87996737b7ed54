"""Generic ImageFolder: ``<split>/<class>/*``.

Split folders: ``train``; ``val``, ``valid`` or ``validation`` (all → val); ``test``. Class
folders are matched case-insensitively to canonical names and common synonyms (see
:mod:`ferpipe.labels`, map ``imagefolder``); an unknown name is an error listing the allowed ones.

Numbered class folders (``0``..``6``, DACL's ``00``..``06``, RAF-style ``1``..``7``) say nothing
about their class: ``class_order`` does (a numbered dataset's name such as ``rafdb`` or
``fer2013``, a list of class names for folders 0, 1, ..., or ``{number: class}``; see
:func:`ferpipe.labels.numeric_folder_map`). Without it a numbered tree is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferpipe.labels import numeric_folder_map
from ferpipe.sources.records import ReaderResult, finalize, find_layout_root, read_class_tree

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_imagefolder(root: str | os.PathLike, *, dataset: str = "imagefolder",
                     class_order=None) -> ReaderResult:
    root = Path(root)
    markers = tuple(_SPLITS) + tuple(s.capitalize() for s in _SPLITS)
    base = find_layout_root(root, markers, dataset)
    nmap = numeric_folder_map(class_order) if class_order is not None else "imagefolder"
    records, problems, warnings, classes = read_class_tree(
        dataset, root, base, _SPLITS, nmap
    )
    if class_order is None:
        space = "basic8" if any(c.lower().startswith("contempt") for c in classes) else "basic7"
    else:
        named = {nmap.canonical_name(c) for c in classes}
        space = ("compound11" if nmap.kind == "compound"
                 else "basic8" if "contempt" in named else "basic7")
    return ReaderResult(dataset, nmap, finalize(dataset, records), problems, space, warnings)
