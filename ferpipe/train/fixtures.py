"""Priors shards the trainer can run on without the priors stage: for tests and benchmarks.

:func:`write_random_priors`: tiny learnable random shards (features / maps / none) in the
priors-stage format; the class is visible in the image colour and in the priors, so a few
steps must lower the loss. :func:`priors_from_synthetic_archive`: ``maps`` shards of real rendered
faces aligned on their ground truth (the loader's decode tests read them).
"""

from __future__ import annotations

import io
import json
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


def priors_from_synthetic_archive(archive: str | Path, groundtruth: str | Path, out_root: str | Path,
                                  size: int = 112, val_fraction: float = 0.1, seed: int = 0,
                                  samples_per_shard: int = 256, jpeg_quality: int = 95) -> Path:
    """``maps`` shards (train/val/test) of the synthetic RAF-DB-layout archive, GT-aligned."""
    import zipfile

    from ferpipe.align.warp import estimate_similarity, template, transform_points, warp
    from ferpipe.sources.synthetic.archive import IMAGE_DIR, load_ground_truth

    gt = load_ground_truth(groundtruth)
    names = sorted(gt)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1]))
    train = [n for n in names if gt[n].split == "train"]
    val: set[str] = set()
    for c in range(1, 8):  # stratified val carve-out, as the download stage does
        members = [n for n in train if gt[n].label == c]
        k = int(round(len(members) * val_fraction))
        val.update(rng.choice(members, size=k, replace=False).tolist())
    dst = template(size)
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    with zipfile.ZipFile(archive) as zf:
        for n in names:
            g = gt[n]
            split = "test" if g.split == "test" else ("val" if n in val else "train")
            rgb = np.asarray(Image.open(io.BytesIO(zf.read(IMAGE_DIR + n))).convert("RGB"))
            m = estimate_similarity(g.points5, dst)
            face = warp(rgb, m, size)
            import cv2

            parsing = cv2.warpAffine(g.parsing, m, (size, size), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            pts = transform_points(g.points68, m).astype(np.float32)
            label = int(g.label) - 1  # RAF-DB 1..7 -> canonical 0..6
            meta = {"label_space": BASIC7.name, "source": n,  # the name, as the align stage writes it
                    "priors": {"kind": "maps", "backend": "groundtruth", "input_size": size,
                               "resize": "none", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
            out[split].append({
                "__key__": n[:-4], "jpg": _jpg(face, jpeg_quality), "cls": label, "json": meta,
                "landmarks.npy": _npy(np.stack([pts, flip_landmarks(pts, size)])),
                "parsing.png": _png(parsing), "parsing_flip.png": _png(flip_parsing(parsing)),
            })
    _write_splits(Path(out_root), out, samples_per_shard)
    (Path(out_root) / "SOURCE.json").write_text(json.dumps(
        {"archive": str(archive), "groundtruth": str(groundtruth), "size": size, "seed": seed}, sort_keys=True))
    return Path(out_root)
