"""Priors shards the trainer can run on without the priors stage: for tests and benchmarks.

:func:`write_random_priors`: tiny learnable random shards (features / maps / none) in the
priors-stage format; the class is visible in the image colour and in the priors, so a few
steps must lower the loss.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ferpipe import shards as _shards
from ferpipe.labels import BASIC7

# iBUG 68-point mirror permutation: index i of the flipped face is point FLIP68[i] of the original.
FLIP68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48] + [59, 58, 57, 56, 55] + [64, 63, 62, 61, 60] + [67, 66, 65]
)
# LaPa classes whose meaning swaps under a horizontal flip (left/right brow, left/right eye).
LAPA_FLIP = np.array([0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10], np.uint8)
_SPACE = {"name": BASIC7.name, "classes": list(BASIC7.classes)}


def _jpg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def flip_landmarks(pts: np.ndarray, width: int) -> np.ndarray:
    """68 points of the mirrored image (x -> width - 1 - x: pixel centres at integers, as the
    priors stage records them; iBUG order restored)."""
    q = pts[FLIP68].copy()
    q[:, 0] = width - 1 - q[:, 0]
    return q


def flip_parsing(parsing: np.ndarray) -> np.ndarray:
    return LAPA_FLIP[parsing[:, ::-1]]


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
