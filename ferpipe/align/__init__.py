"""Face alignment: batched MTCNN detection, face choice, 5-point similarity warp -> shards.

The names below load lazily: decode worker processes import only
:mod:`ferpipe.align.decode` (PIL, OpenCV), not scikit-image, torch or the stage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ferpipe.align.params import AlignParams

if TYPE_CHECKING:
    from ferpipe.align.stage import (
        AlignReport,
        align_shard,
        align_stage,
        failure_gallery_markdown,
        failure_thumbnails,
        plan_align,
    )

__all__ = [
    "AlignParams", "AlignReport", "align_shard", "align_stage", "failure_gallery_markdown",
    "failure_thumbnails", "plan_align",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ferpipe.align.stage"), name)
    raise AttributeError(f"module 'ferpipe.align' has no attribute {name!r}")
