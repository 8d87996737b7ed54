"""Writing predictions: streamed tables (CSV, JSON, Parquet) and annotated images / videos.

Writers take rows batch by batch, so a long video's table is never held in memory. An output that
already exists is refused unless ``overwrite`` is given: a run never silently replaces another's.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ferpipe.errors import FerpipeError

TABLE_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def _check_new(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FerpipeError(f"{path} exists; refusing to overwrite another run's output (pass --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)


def _clean(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


class TableWriter:
    """``write(rows)`` repeatedly, then ``close()``. Format from the suffix: .csv | .json | .parquet."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], overwrite: bool = False,
                 int_columns: Sequence[str] = ("frame", "face")):
        self.path = Path(path)
        self.fmt = TABLE_FORMATS.get(self.path.suffix.lower())
        if self.fmt is None:
            raise FerpipeError(f"--out {self.path}: unknown table format; use one of {sorted(TABLE_FORMATS)}")
        _check_new(self.path, overwrite)
        self.columns = list(columns)
        self.int_columns = set(int_columns)
        self.rows = 0
        self._tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self._f = None
        self._pq = None
        if self.fmt == "csv":
            self._f = open(self._tmp, "w", newline="")
            self._csv = csv.DictWriter(self._f, self.columns, extrasaction="ignore")
            self._csv.writeheader()
        elif self.fmt == "json":
            self._f = open(self._tmp, "w")
            self._f.write("[")

    def _schema(self, rows):
        import pyarrow as pa  # noqa: PLC0415

        fields = []
        for c in self.columns:
            if c in self.int_columns:
                t = pa.int64()
            elif c in ("chosen",):
                t = pa.bool_()
            elif c in ("source", "kind", "status", "detail", "method", "top_class"):
                t = pa.string()
            else:
                t = pa.float64()
            fields.append(pa.field(c, t))
        return pa.schema(fields)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.fmt == "csv":
            for r in rows:
                self._csv.writerow({c: ("" if _clean(r.get(c)) is None else r.get(c)) for c in self.columns})
        elif self.fmt == "json":
            for r in rows:
                self._f.write(("," if self.rows else "") + "\n " +
                              json.dumps({c: _clean(r.get(c)) for c in self.columns}))
                self.rows += 1
            return
        else:
            import pyarrow as pa  # noqa: PLC0415
            import pyarrow.parquet as pq  # noqa: PLC0415

            schema = self._schema(rows)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self._tmp, schema)
            cols = {c: [_clean(r.get(c)) for r in rows] for c in self.columns}
            self._pq.write_table(pa.Table.from_pydict(cols, schema=schema))
        self.rows += len(rows)

    def close(self) -> Path:
        if self.fmt == "csv":
            self._f.close()
        elif self.fmt == "json":
            self._f.write("\n]\n")
            self._f.close()
        else:
            if self._pq is None:  # no rows at all: still a valid, empty table
                import pyarrow.parquet as pq  # noqa: PLC0415

                self._pq = pq.ParquetWriter(self._tmp, self._schema([]))
            self._pq.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
            if self._pq is not None:
                self._pq.close()
        finally:
            Path(self._tmp).unlink(missing_ok=True)


# --- annotation ---------------------------------------------------------------------------------


def draw(rgb: np.ndarray, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, 5 points and top class with its probability."""
    import cv2  # noqa: PLC0415

    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 240))
    scale = max(0.4, min(h, w) / 600)
    for r in rows:
        if r.get("box_x1") is None or r.get("top_class") is None:
            continue
        x1, y1, x2, y2 = (int(round(r[k])) for k in ("box_x1", "box_y1", "box_x2", "box_y2"))
        colour = (0, 220, 0) if r.get("chosen") else (255, 200, 0)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick, cv2.LINE_AA)
        for n in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"):
            if r.get(f"{n}_x") is not None:
                cv2.circle(out, (int(round(r[f"{n}_x"])), int(round(r[f"{n}_y"]))), thick + 1, (255, 0, 0), -1,
                           cv2.LINE_AA)
        label = f"{r['top_class']} {r['top_prob']:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = max(th + base, y1 - 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty + base // 2), colour, -1)
        cv2.putText(out, label, (x1, ty - base // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    if not any(r.get("top_class") for r in rows):
        msg = next((str(r.get("status")) for r in rows), "no face")
        cv2.putText(out, msg, (4, int(20 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 0, 0), thick,
                    cv2.LINE_AA)
    return out


def annotated_name(source: str, root: Path, suffix: str) -> Path:
    """Where the annotated copy of ``source`` goes under ``root``: its path with separators flattened
    (unique per source, never outside ``root``)."""
    p = Path(source)
    parts = [x for x in p.resolve().parts[1:] if x not in ("..", ".")] if p.is_absolute() else \
        [x for x in p.parts if x not in ("..", ".")]
    return root / ("__".join(parts[:-1] + [p.stem]) + suffix)


class VideoAnnotator:
    """An mp4 (OpenCV ``mp4v``) of the processed frames with their annotations."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        import cv2  # noqa: PLC0415

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), max(fps, 1.0), size)
        if not self.writer.isOpened():
            raise FerpipeError(f"cannot write {path} (OpenCV mp4v)")
        self.size = size

    def write(self, rgb: np.ndarray) -> None:
        import cv2  # noqa: PLC0415

        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size)
        self.writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self) -> None:
        self.writer.release()


def write_image(path: Path, rgb: np.ndarray, quality: int = 90) -> Path:
    import cv2  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise FerpipeError(f"cannot write {path}")
    return path
