"""Face alignment: batched MTCNN detection, face choice, 5-point similarity warp -> shards."""

from ferpipe.align.params import AlignParams
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
