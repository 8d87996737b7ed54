"""Priors shards the trainer can run on without the priors stage: for tests and benchmarks.

:func:`write_random_priors`: tiny learnable random shards (features / maps / none) in the
priors-stage format; the class is visible in the image colour and in the priors, so a few
steps must lower the loss.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ferpipe import shards as _shards
from ferpipe.labels import BASIC7
from ferpipe.priors.conventions import IBUG68_FLIP as FLIP68  # noqa: F401  (re-exported for tests)
from ferpipe.priors.conventions import flip_landmarks, flip_parsing

_SPACE = {"name": BASIC7.name, "classes": list(BASIC7.classes)}
_npy = _shards.encode_npy
_png = partial(_shards.encode_png, compression=6)


def _jpg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def _write_splits(root: Path, samples_by_split: dict[str, list[dict]], samples_per_shard: int) -> None:
    indexes = {}
    for split, samples in samples_by_split.items():
        samples.sort(key=lambda s: s["__key__"])
        plan = _shards.plan_shards([{"key": s["__key__"]} for s in samples], samples_per_shard, split)
        by_key = {s["__key__"]: s for s in samples}

        def fn(spec, sink):
            for k in spec.keys:
                sink.add(by_key[k])

        for spec in plan:
            _shards.process_shard(spec, fn, root, force=True)
        indexes[split] = _shards.finalize_split(root, split, plan)
    _shards.write_dataset_index(root, indexes)


def write_random_priors(root: str | Path, kind: str = "features", counts: Sequence[int] = (64, 16, 16),
                        size: int = 32, lmk_channels: int = 8, seg_channels: int = 16, grid: int = 7,
                        num_classes: int = 7, samples_per_shard: int = 16, seed: int = 0,
                        signal: float = 1.0) -> Path:
    """Learnable random shards for (train, val, test) with ``counts`` samples each."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = rng.uniform(40, 215, (num_classes, 3))
    lmk_proto = rng.normal(0, 1, (num_classes, lmk_channels, 1, 1))
    seg_proto = rng.normal(0, 1, (num_classes, seg_channels, 1, 1))
    out: dict[str, list[dict]] = {}
    for split, n in zip(("train", "val", "test"), counts):
        out[split] = []
        for i in range(n):
            label = int(rng.integers(0, num_classes)) if split == "train" else i % num_classes
            rgb = np.clip(palette[label] * signal + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            meta = {"label_space": _SPACE, "priors": {"kind": kind, "input_size": size, "resize": "none",
                                                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
            s = {"__key__": f"{split}_{i:05d}", "jpg": _jpg(rgb), "cls": label, "json": meta}
            if kind == "features":
                s["lmk.npy"] = _npy((lmk_proto[label] * signal + rng.normal(0, 1, (2, lmk_channels, grid, grid)))
                                    .astype(np.float16))
                s["seg.npy"] = _npy((seg_proto[label] * signal + rng.normal(0, 1, (2, seg_channels, grid, grid)))
                                    .astype(np.float16))
            elif kind == "maps":
                pts = rng.uniform(0.2 * size, 0.8 * size, (68, 2)).astype(np.float32)
                pts[:, 1] += signal * (label - num_classes / 2) * size / (4 * num_classes)
                parsing = rng.integers(0, 11, (size, size)).astype(np.uint8)
                parsing[: size // 4] = label
                s["landmarks.npy"] = _npy(np.stack([pts, flip_landmarks(pts, size)]).astype(np.float32))
                s["parsing.png"] = _png(parsing)
                s["parsing_flip.png"] = _png(flip_parsing(parsing))
            out[split].append(s)
    _write_splits(root, out, samples_per_shard)
    return root
