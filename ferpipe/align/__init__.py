"""Face alignment: batched MTCNN detection, face choice, 5-point similarity warp -> shards.

The names below load lazily: reading params (``ferpipe.config``) imports neither scikit-image,
torch nor the stage.
"""

from __future__ import annotations

from ferpipe._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "params": ["AlignParams"],
    "stage": ["ALIGN", "AlignReport", "align_job", "align_stage", "failure_gallery_markdown", "failure_thumbnails",
              "plan_align"],
})
