"""Aligned shards in the align stage's format, aligned on the renderer's ground-truth points
(no MTCNN), for tests of the stages after align."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from ferpipe import shards


def write_gt_aligned(out_dir: Path, archive: Path, gts: Mapping, rows: Sequence[dict], splits: Sequence[str],
                     size: int, per_shard: int) -> Path:
    """``rows``: {key, name (file in the archive), split}; one sample per row."""
    from ferpipe.priors.data import align_face

    plans = shards.plan_splits(rows, per_shard, splits=list(splits))
    zf = zipfile.ZipFile(archive)

    def fn(spec, sink):
        for it in spec.items:
            g = gts[it["name"]]
            rgb = np.asarray(Image.open(io.BytesIO(zf.read(f"Image/original/{it['name']}"))).convert("RGB"))
            img, _, pts = align_face(rgb, None, g.points68, g.points5, size, 0.0, size)
            p68 = pts * size - 0.5
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            meta = {"key": it["key"], "split": spec.split, "label": g.label - 1, "label_space": "basic7",
                    "output_size": size,
                    "points_aligned": p68[[36, 45, 30, 48, 54]].round(3).tolist(),  # ~ the 5 points
                    "points68_aligned": p68.round(3).tolist()}
            sink.add({"__key__": it["key"], "jpg": buf.getvalue(), "cls": str(g.label - 1), "json": meta})

    shards.run_sharded_stage(plans, fn, out_dir, progress=False)
    return out_dir
