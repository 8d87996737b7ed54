"""The per-dataset manifest: one parquet row per image, every image decoded exactly once.

A row is never dropped for being bad: it stays with a ``status`` that says why it is unusable,
so every later stage can count and list what it skipped. Stages use rows whose status is ``ok``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

STATUS_OK = "ok"
SPLITS = ("train", "val", "test")
COLUMNS = (
    "key", "dataset", "split", "path", "sha256", "width", "height",
    "native_label", "label", "status", "landmarks5", "bbox", "landmarks", "soft_label",
)  # fmt: skip
# Columns later releases added: a manifest written before them reads with these as null.
_OPTIONAL = ("bbox", "landmarks", "soft_label")
_META_LABELS = b"ferpipe.label_space"
_META_INFO = b"ferpipe.manifest"

_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("dataset", pa.string()),
        ("split", pa.string()),
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("native_label", pa.string()),
        ("label", pa.int16()),
        ("status", pa.string()),
        ("landmarks5", pa.list_(pa.float32())),
        ("bbox", pa.list_(pa.float32())),  # the dataset's face box x0, y0, x1, y1 (source px)
        ("landmarks", pa.list_(pa.float32())),  # the dataset's own points, x,y interleaved
        ("soft_label", pa.list_(pa.float32())),  # a label distribution in the space's order
    ]
)


@dataclass(frozen=True)
class ImageCheck:
    sha256: str
    width: int
    height: int
    status: str


def inspect_image(path: str | Path, max_pixels: int) -> ImageCheck:
    """Hash the file and decode it fully; a bad image gets a status saying why, never an exception."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImageCheck("", 0, 0, "missing: file not found")
    except OSError as exc:
        return ImageCheck("", 0, 0, f"unreadable: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck(digest, 0, 0, "corrupt: empty file")
    # Pillow's own bomb limit (a process global, so set in each worker) follows ours: a
    # max_image_pixels above Pillow's default must let those images through.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its limit; we want a hard, listed skip.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return ImageCheck(digest, width, height,
                                      f"too large: {width}x{height} exceeds max_image_pixels={max_pixels}")
                img.load()  # the full decode: catches truncated and corrupt data
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageCheck(digest, 0, 0, f"too large: decompression bomb ({exc})")
    except UnidentifiedImageError:
        return ImageCheck(digest, 0, 0, "not an image: no decoder recognises the file")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return ImageCheck(digest, 0, 0, f"corrupt: {exc}")
    return ImageCheck(digest, width, height, STATUS_OK)


def _inspect_job(args: tuple[str, int]) -> ImageCheck:
    return inspect_image(*args)


def inspect_images(paths: Sequence[Path], max_pixels: int, workers: int = 1) -> list[ImageCheck]:
    """Inspect many images, in order. Processes help: decoding is CPU-bound."""
    jobs = [(str(p), max_pixels) for p in paths]
    if workers <= 1 or len(jobs) < 64:
        return [_inspect_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_inspect_job, jobs, chunksize=32))


def manifest_table(rows: Iterable[dict[str, Any]], label_space: dict[str, Any], info: dict[str, Any]) -> pa.Table:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame = frame.sort_values(["split", "key"], kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(frame, schema=_SCHEMA, preserve_index=False)
    meta = {
        _META_LABELS: json.dumps(label_space, sort_keys=True).encode(),
        _META_INFO: json.dumps(info, sort_keys=True).encode(),
    }
    return table.replace_schema_metadata(meta)


def write_manifest(table: pa.Table, path: str | Path) -> Path:
    """Write atomically: a half-written parquet must never look like a manifest."""
    from ferpipe.tempfiles import private_sibling  # noqa: PLC0415

    path = Path(path)
    tmp = private_sibling(path, kind="file")  # never shared with another writer
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Manifest:
    frame: pd.DataFrame
    label_space: dict[str, Any]
    info: dict[str, Any]

    @property
    def usable(self) -> pd.DataFrame:
        return self.frame[self.frame["status"] == STATUS_OK]

    def split(self, name: str) -> pd.DataFrame:
        usable = self.usable
        return usable[usable["split"] == name]


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if _META_LABELS not in meta:
        raise ValueError(f"{path}: not a ferpipe manifest (no label space in its metadata)")
    frame = table.to_pandas()
    for col in _OPTIONAL:
        if col not in frame.columns:
            frame[col] = None
    for col in ("landmarks5",) + _OPTIONAL:
        frame[col] = [None if v is None else np.asarray(v, dtype=np.float32) for v in frame[col]]
    return Manifest(frame, json.loads(meta[_META_LABELS]), json.loads(meta.get(_META_INFO, b"{}")))


def find_leakage(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Identical files (same sha256) that appear in more than one split."""
    usable = frame[frame["status"] == STATUS_OK]
    leaks = []
    for digest, group in usable.groupby("sha256", sort=True):
        if group["split"].nunique() > 1:
            leaks.append({"sha256": digest, "samples": [
                {"key": k, "split": s, "path": p} for k, s, p in zip(group["key"], group["split"], group["path"])
            ]})
    return leaks


def carve_val(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Move a stratified, seeded fraction of usable train rows to val; test is never touched.

    Per class, rows are ordered by key (stable across reruns) and permuted by a generator seeded
    from (seed, class), so adding a class or a file elsewhere does not reshuffle the others.
    """
    frame = frame.copy()
    usable_train = frame[(frame["split"] == "train") & (frame["status"] == STATUS_OK) & (frame["label"] >= 0)]
    moved: dict[str, int] = {}
    for label, group in usable_train.groupby("label", sort=True):
        keys = np.array(sorted(group["key"]))
        n_val = int(round(fraction * len(keys)))
        if len(keys) >= 2:
            n_val = min(max(n_val, 1 if fraction > 0 else 0), len(keys) - 1)
        else:
            n_val = 0
        rng = np.random.default_rng([seed, int(label)])
        chosen = set(keys[rng.permutation(len(keys))[:n_val]])
        frame.loc[frame["key"].isin(chosen), "split"] = "val"
        moved[str(int(label))] = n_val
    record = {"carved_from": "train", "fraction": fraction, "seed": seed, "per_class": moved,
              "total": int(sum(moved.values()))}
    return frame, record


def split_counts(frame: pd.DataFrame, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Usable samples per split and class, as table rows."""
    usable = frame[frame["status"] == STATUS_OK]
    rows = []
    for split in SPLITS:
        part = usable[usable["split"] == split]
        if part.empty:
            continue
        row: dict[str, Any] = {"split": split}
        for idx, name in enumerate(class_names):
            row[name] = int((part["label"] == idx).sum())
        row["outside_label_space"] = int((part["label"] < 0).sum())
        row["total"] = int(len(part))
        rows.append(row)
    return rows
