"""``ferpipe predict``: a model over files, folders and videos -> a table (+ annotated copies).

:func:`run_predict` streams: rows are written as frames are predicted, annotated videos are
written frame by frame, and the report keeps counts, every error, and only a bounded preview of
rows and thumbnails (what a Prefect flow publishes).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ferpipe.errors import FerpipeError
from ferpipe.predict import io as _io
from ferpipe.thumbs import jpeg_data_uri


@dataclass
class PredictReport:
    model: str
    classes: list[str]
    frames: int = 0                 # images + sampled video frames seen
    faces: int = 0                  # rows with a prediction
    no_face: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # every file/frame that failed, with why
    top_class_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    frames_per_second: float = 0.0
    faces_per_second: float = 0.0
    out: str | None = None
    annotated: list[str] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)   # the first rows
    gallery: list[dict[str, Any]] = field(default_factory=list)   # thumbnails: {source, frame, label, data_uri}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"predict ({self.model}): {self.frames} frames/images, {self.faces} faces, {self.no_face} without "
                 f"a face, {len(self.errors)} errors in {self.seconds:.1f}s ({self.frames_per_second:.2f} frames/s, "
                 f"{self.faces_per_second:.2f} faces/s)" + (f" -> {self.out}" if self.out else "")]
        if self.top_class_counts:
            lines.append("  top classes: " + ", ".join(f"{k} {v}" for k, v in self.top_class_counts.items()))
        for e in self.errors[:10]:
            lines.append(f"  error {e['source']}" + (f" frame {e['frame']}" if e.get("frame") is not None else "")
                         + f": {e['detail']}")
        if len(self.errors) > 10:
            lines.append(f"  ... {len(self.errors) - 10} more errors (status=error rows in the table)")
        return "\n".join(lines)


def _check_inputs(paths, every: int, fps: float | None, ann_dir: Path | None, overwrite: bool) -> None:
    if every < 1:
        raise FerpipeError("--every must be >= 1")
    if fps is not None and fps <= 0:
        raise FerpipeError("--fps must be > 0")
    if not paths:
        raise FerpipeError("no input paths")
    for p in paths:
        if not Path(p).exists():
            raise FerpipeError(f"{p}: no such file or directory")
    if ann_dir is not None and ann_dir.is_dir() and any(ann_dir.iterdir()) and not overwrite:
        raise FerpipeError(f"--annotate {ann_dir} is not empty; refusing to overwrite another run's output "
                           f"(pass --overwrite or another directory)")


def _tally(rep: PredictReport, item: Mapping[str, Any], rows: list[dict[str, Any]], preview_rows: int,
           gallery_size: int) -> None:
    """Count one image/frame's rows into ``rep``; keep preview rows and gallery thumbnails."""
    rep.frames += 1
    for r in rows:
        if r["status"] == "ok":
            rep.faces += 1
            rep.top_class_counts[r["top_class"]] = rep.top_class_counts.get(r["top_class"], 0) + 1
        elif r["status"] == "no_face":
            rep.no_face += 1
        else:
            rep.errors.append({k: r[k] for k in ("source", "frame", "detail")})
    if len(rep.preview) < preview_rows:
        rep.preview.extend(rows[:preview_rows - len(rep.preview)])
    rgb = item.get("rgb")
    if rgb is not None and len(rep.gallery) < gallery_size and any(r["status"] == "ok" for r in rows):
        top = [r for r in rows if r["status"] == "ok"]
        rep.gallery.append({"source": item["source"], "frame": item.get("frame"),
                            "label": ", ".join(f"{r['top_class']} {r['top_prob']:.2f}" for r in top),
                            "data_uri": jpeg_data_uri(_io.draw(rgb, rows), 160, area_when_enlarging=True)})


class _Annotator:
    """Annotated JPEGs for images and one mp4 per video (frames arrive video by video)."""

    def __init__(self, ann_dir: Path, every: int, fps: float | None, annotated: list[str]):
        self.ann_dir, self.every, self.fps, self.annotated = ann_dir, every, fps, annotated
        self.video_out: _io.VideoAnnotator | None = None
        self.video_src = None

    def add(self, item: Mapping[str, Any], rgb, rows) -> None:
        if item["kind"] != "video":
            path = _io.annotated_name(item["source"], self.ann_dir, ".jpg")
            self.annotated.append(str(_io.write_image(path, _io.draw(rgb, rows))))
            return
        if self.video_src != item["source"]:
            self.close()
            from ferpipe.predict.video import video_info  # noqa: PLC0415

            info = video_info(item["source"])
            fps, every = self.fps, self.every
            step_fps = (fps if fps and fps < info["fps"] else info["fps"] / every) if info["fps"] else 1
            path = _io.annotated_name(item["source"], self.ann_dir, ".mp4")
            self.video_out = _io.VideoAnnotator(path, step_fps, (rgb.shape[1], rgb.shape[0]))
            self.video_src = item["source"]
            self.annotated.append(str(path))
        self.video_out.write(_io.draw(rgb, rows))

    def close(self) -> None:
        if self.video_out is not None:
            self.video_out.close()
            self.video_out = None


def run_predict(paths: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike | None = None,
                model: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                every: int = 1, fps: float | None = None, annotate: str | os.PathLike | None = None,
                device: str = "cpu", batch_size: int = 16, models_dir: str | os.PathLike | None = None,
                threads: int = 0, overwrite: bool = False, progress: bool = True, preview_rows: int = 200,
                gallery_size: int = 24) -> PredictReport:
    """Predict every image / sampled video frame of ``paths``; write ``out`` (.csv/.json/.parquet)
    and, with ``annotate``, annotated JPEGs (images) and mp4s (videos) under that directory."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from ferpipe.predict.model import load_model  # noqa: PLC0415

    ann_dir = Path(annotate) if annotate else None
    _check_inputs(paths, every, fps, ann_dir, overwrite)
    m = load_model(checkpoint, model=model, models_dir=models_dir, device=device, batch_size=batch_size,
                   threads=threads)
    rep = PredictReport(model=m.source, classes=m.classes)
    writer = _io.TableWriter(out, m.columns, overwrite=overwrite) if out else None
    annotator = _Annotator(ann_dir, every, fps, rep.annotated) if ann_dir is not None else None
    t0 = time.perf_counter()
    bar = tqdm(desc="predict", unit="frame", disable=not progress, dynamic_ncols=True)
    try:
        pending: list[dict[str, Any]] = []
        for item, rows in m.iter_results(paths, every, fps):
            _tally(rep, item, rows, preview_rows, gallery_size)
            bar.update(1)
            rgb = item.get("rgb")
            if annotator is not None and rgb is not None:
                annotator.add(item, rgb, rows)
            if writer is not None:
                pending.extend(rows)
                if len(pending) >= 256:
                    writer.write(pending)
                    pending = []
            el = time.perf_counter() - t0
            bar.set_postfix(faces=rep.faces, faces_per_s=f"{rep.faces / max(el, 1e-9):.1f}", refresh=False)
        if writer is not None:
            writer.write(pending)
            rep.out = str(writer.close())
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        if annotator is not None:
            annotator.close()
    rep.seconds = round(time.perf_counter() - t0, 3)
    rep.frames_per_second = round(rep.frames / max(rep.seconds, 1e-9), 3)
    rep.faces_per_second = round(rep.faces / max(rep.seconds, 1e-9), 3)
    rep.top_class_counts = dict(sorted(rep.top_class_counts.items(), key=lambda kv: -kv[1]))
    return rep


def gallery_markdown(report: PredictReport, title: str = "Predictions") -> str:
    """Markdown with inline annotated thumbnails (what a Prefect markdown artifact renders)."""
    lines = [f"## {title} ({report.faces} faces in {report.frames} images/frames)", "",
             "| image | source | frame | top class |", "|---|---|---|---|"]
    for g in report.gallery:
        src = str(g["source"]).replace("|", "\\|")
        lines.append(f'| <img src="{g["data_uri"]}" width="120"/> | `{src}` | '
                     f'{"" if g["frame"] is None else g["frame"]} | {g["label"]} |')
    if report.errors:
        lines += ["", f"### Errors ({len(report.errors)})", "", "| source | frame | why |", "|---|---|---|"]
        for e in report.errors[:50]:
            lines.append(f"| `{e['source']}` | {'' if e.get('frame') is None else e['frame']} | "
                         f"{str(e['detail']).replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"
