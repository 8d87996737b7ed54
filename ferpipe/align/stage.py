"""The align stage: manifest + raw images -> aligned-face WebDataset shards.

Per shard, images are decoded ahead on a few threads (bounded window, so memory does not grow
with the dataset), grouped by detection size and detected many per MTCNN forward pass, several
batches at once on the detection lanes (:class:`~ferpipe.align.detect.DetectionLanes`); each
chosen face is warped from the full-resolution original and written as
``<key>.jpg`` / ``<key>.cls`` / ``<key>.json``. Everything about shards (atomic tars, done
markers, resume, indexes) is :mod:`ferpipe.shards`.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

from ferpipe import shards
from ferpipe.align import decode as _decode
from ferpipe.align import warp as _warp
from ferpipe.align.detect import (
    DetectionLanes,
    Detections,
    choose_by_box,
    choose_face,
    empty_detections,
    shared_lanes,
    snapped_min_face_size,
)
from ferpipe.align.params import AlignParams
from ferpipe.layout import Layout
from ferpipe.report import Artifact, markdown, markdown_table, table
from ferpipe.sharded import ShardedStage, ShardJob, ShardTotals

STAGE = "align"
# Part of every shard's fingerprint: changed whenever the detector's float results change for the
# same params, so a rerun redoes the shards instead of resuming ones made the old way.
# "one-thread-batches": each batch is detected on one torch thread (the detection lanes).
DETECTION_NUMERICS = "one-thread-batches"
GALLERY_LIMIT = 48  # thumbnails inlined in the failure gallery (each ~3 KB of base64)


@dataclass
class AlignReport:
    """What the align stage returns (and writes, less its timings, to ``reports/align/``)."""

    dataset: str
    out_dir: str
    splits: dict[str, dict[str, int]]
    skipped_by_reason: dict[str, int]
    noted_by_reason: dict[str, int]
    failures: list[dict[str, Any]]
    seconds: float
    images_processed: int
    images_per_second: float
    shards_resumed: int
    index_sha256: str
    params: dict[str, Any] = field(default_factory=dict)
    raw_root: str = ""
    shard_stats: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"align {self.dataset}: {self.images_processed} images in {self.seconds:.1f}s "
                 f"({self.images_per_second:.1f}/s), {self.shards_resumed} shards resumed → {self.out_dir}"]
        for split, c in self.splits.items():
            lines.append(f"  {split:>5}: {c['written']} written, {c['skipped']} skipped, {c['noted']} noted")
        for reason, n in self.skipped_by_reason.items():
            lines.append(f"  skipped {reason}: {n}")
        return "\n".join(lines)

    def summary_markdown(self) -> str:
        rows = [{"split": s, **c} for s, c in self.splits.items()]
        reasons = [{"reason": r, "count": n} for r, n in self.skipped_by_reason.items()]
        return "\n".join([
            f"# align {self.dataset}",
            f"{self.images_processed} images in {self.seconds:.1f} s: "
            f"**{self.images_per_second:.1f} images/s**; {self.shards_resumed} shards resumed.", "",
            markdown_table(rows, ["split", "items", "written", "skipped", "noted", "shards", "shards_resumed"]), "",
            "## Skipped, by reason", "", markdown_table(reasons, ["reason", "count"]) if reasons else "None.",
        ])

    def artifacts(self) -> list[Artifact]:
        """Per-shard stats, the summary, and a gallery of the failed images (thumbnails)."""
        ds = Path(self.out_dir).name
        thumbs = failure_thumbnails(self.failures, self.raw_root, limit=GALLERY_LIMIT,
                                    max_image_pixels=self.params.get("max_image_pixels", 100_000_000))
        return [table(("align", ds, "shards"), self.shard_stats, f"{ds}: per-shard alignment stats"),
                markdown(("align", ds, "summary"), self.summary_markdown(), f"{ds}: throughput and skips"),
                markdown(("align", ds, "failures"), failure_gallery_markdown(thumbs, total=len(self.failures)),
                         f"{ds}: images with no usable face, and fallbacks")]


# --------------------------------------------------------------------------------------------
# helpers


def _r(x: Any, nd: int = 2) -> Any:
    # Rounded floats keep the JSON small and stable against last-bit noise.
    a = np.asarray(x, dtype=np.float64)
    return np.round(a, nd).tolist() if a.ndim else round(float(a), nd)


def _encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                            cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _dataset_points(item: Mapping[str, Any]) -> np.ndarray | None:
    v = item.get("landmarks5")
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size != 10 or not np.isfinite(a).all():
        return None
    return a.reshape(5, 2)


def _dataset_box(item: Mapping[str, Any]) -> np.ndarray | None:
    v = item.get("bbox")
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size != 4 or not np.isfinite(a).all() or a[2] <= a[0] or a[3] <= a[1]:
        return None
    return a


# --------------------------------------------------------------------------------------------
# the per-shard worker


class _Aligner:
    """Holds the detection lanes and the decode pool across shards; ``__call__`` is a ShardFn."""

    def __init__(self, raw_root: str | Path, params: AlignParams, label_space: Mapping | None,
                 pool: ThreadPoolExecutor | None = None):
        self.raw_root = Path(raw_root)
        self.params = params
        self.label_space_name = str((label_space or {}).get("name", ""))
        self.pool = pool
        self._lanes: DetectionLanes | None = None
        self._exit = ExitStack()

    def describe(self) -> str:
        """Besides the params, what decides the output: the label space the labels are in, and
        the detection's numerics (:data:`DETECTION_NUMERICS`)."""
        return f"{self.label_space_name}/{DETECTION_NUMERICS}"

    @property
    def lanes(self) -> DetectionLanes:
        """Started at the first shard that needs detection: the detector loads meanwhile."""
        if self._lanes is None:
            self._lanes = self._exit.enter_context(shared_lanes(self.params))
        return self._lanes

    def close(self) -> None:
        self._exit.close()

    def _needs_detection(self, item: Mapping[str, Any]) -> bool:
        p = self.params
        if p.method == "passthrough" or p.points == "dataset":
            return False
        if p.points == "auto" and _dataset_points(item) is not None:
            return False
        return True

    def _decoded_stream(self, jobs: list[tuple]) -> Iterator[_decode.Decoded]:
        """Decoded images in job order; at most a batch per lane and one more in flight (bounded
        memory)."""
        if self.pool is None:
            for j in jobs:
                yield _decode.decode_job(j)
            return
        # Enough decoded ahead to refill every detection lane while the oldest batch finishes.
        lanes = self._lanes.count if self._lanes is not None else 1
        window = max(4, (lanes + 1) * self.params.batch_size)
        pending: collections.deque[Future] = collections.deque()
        it = iter(jobs)
        for j in it:
            pending.append(self.pool.submit(_decode.decode_job, j))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.submit(_decode.decode_job, nxt))

    def __call__(self, spec: shards.ShardSpec, sink: shards.ShardSink) -> dict[str, Any]:
        p = self.params
        items = list(spec.items)
        results: dict[int, tuple] = {}
        jobs = []
        for i, it in enumerate(items):
            status = str(it.get("status", "ok"))
            if status != "ok":
                results[i] = ("skip", f"manifest_{status}", "status in the manifest")
            elif int(it.get("label", 0)) < 0 and not p.keep_unlabelled:
                results[i] = ("skip", "label_outside_space",
                              f"native label {it.get('native_label')!r}")
            else:
                path = self.raw_root / str(it["path"])
                box = _dataset_box(it) if p.use_dataset_box else None
                region = None if box is None else _decode.box_region(box, p.box_context)
                jobs.append((i, str(path), it.get("sha256") or None, p.max_image_pixels,
                             p.detect_max_side, p.detect_min_side, self._needs_detection(it),
                             region, p.box_detect_size))
        lanes = self.lanes if any(j[6] for j in jobs) else None

        next_out = 0
        t_det = 0.0
        n_det = 0

        def emit_ready() -> None:
            nonlocal next_out
            while next_out in results:
                self._emit(items[next_out], results.pop(next_out), sink, spec)
                next_out += 1

        buckets: dict[tuple[int, ...], list[_decode.Decoded]] = {}
        buffered = 0
        # Batches on the detection lanes, oldest first; their results are finished in order.
        in_flight: collections.deque[tuple[list[_decode.Decoded], Future]] = collections.deque()

        def finish_oldest() -> None:
            nonlocal t_det, n_det
            group, fut = in_flight.popleft()
            dets, seconds = fut.result()
            t_det += seconds
            n_det += len(group)
            for d, det in zip(group, dets):
                results[d.index] = self._finish(items[d.index], d, det)
                d.rgb = d.det = None

        def flush(shape: tuple[int, ...]) -> None:
            nonlocal buffered
            group = buckets.pop(shape)
            buffered -= len(group)
            assert lanes is not None
            in_flight.append((group, lanes.submit([d.det for d in group])))
            while len(in_flight) > lanes.width:
                finish_oldest()

        for d in self._decoded_stream(jobs):
            if not d.ok:
                results[d.index] = ("skip", d.reason, d.detail)
            elif d.det is None:
                results[d.index] = self._finish(items[d.index], d, None)
            else:
                shape = tuple(d.det.shape)
                buckets.setdefault(shape, []).append(d)
                buffered += 1
                if len(buckets[shape]) >= p.batch_size:
                    flush(shape)
                elif buffered > 2 * p.batch_size:
                    # Many distinct sizes: detect the fullest group now rather than hold
                    # images until the end of the shard.
                    flush(max(buckets, key=lambda s: (len(buckets[s]), s)))
            emit_ready()
        for shape in sorted(buckets, key=lambda s: min(d.index for d in buckets[s])):
            flush(shape)
        while in_flight:
            finish_oldest()
        emit_ready()
        assert next_out == len(items), "align: not every item produced a result"
        return {"detected_images": n_det, "detect_seconds": round(t_det, 3)}

    # ----------------------------------------------------------------------------------------

    def _finish(self, item: Mapping[str, Any], d: _decode.Decoded,
                det: Detections | None) -> tuple:
        """Turn one decoded image (+ its detections in detector coordinates) into a result."""
        p = self.params
        meta = self._meta(item, d)
        hint = _dataset_points(item)
        if p.method == "passthrough":
            return self._passthrough(d, meta, hint)
        if det is None:  # points from the dataset
            if hint is None:
                return self._warped(d, meta, None, ("no_points", "points=dataset but the row has no landmarks5"))
            meta.update(method="dataset", chosen_by="dataset_points")
            return self._warped(d, meta, hint, None)
        chosen = self._choose(item, d, det, meta, hint)
        if len(chosen) == 4:  # a finished sample: the dataset-box fallback crop
            return chosen
        return self._warped(d, meta, *chosen)

    def _meta(self, item: Mapping[str, Any], d: _decode.Decoded) -> dict[str, Any]:
        p = self.params
        h, w = d.rgb.shape[:2]
        meta: dict[str, Any] = {
            "key": str(item["key"]), "dataset": str(item.get("dataset", "")),
            "split": str(item.get("split", "")), "label": int(item.get("label", -1)),
            "native_label": str(item.get("native_label", "")),
            "label_space": self.label_space_name,
            "source": {"path": str(item["path"]), "sha256": d.sha256, "width": w, "height": h,
                       "mode": d.source_mode, "exif_transposed": d.exif_transposed},
            "output_size": p.output_size, "margin": p.margin, "estimator": p.estimator,
            "boxes": [], "scores": [], "points_all": [], "chosen": None, "box": None,
            "score": None, "points_src": None, "points_aligned": None, "template": None,
            "chosen_by": None,
        }
        box = _dataset_box(item)
        if box is not None:
            meta["dataset_box"] = _r(box)
        if item.get("soft_label") is not None:
            meta["soft_label"] = _r(item["soft_label"], 6)
        return meta

    def _passthrough(self, d: _decode.Decoded, meta: dict[str, Any], hint: np.ndarray | None) -> tuple:
        h, w = d.rgb.shape[:2]
        m = _warp.resize_matrix(w, h, self.params.output_size)
        meta["method"] = "passthrough"
        if hint is not None:
            meta["points_src"] = _r(hint)
            meta["points_aligned"] = _r(_warp.transform_points(hint, m))
        meta["matrix"] = _r(m, 6)
        return ("sample", _warp.resize(d.rgb, self.params.output_size), meta, None)

    def _choose(self, item: Mapping[str, Any], d: _decode.Decoded, det: Detections, meta: dict[str, Any],
                hint: np.ndarray | None) -> tuple:
        """The face to align among the detections: ``(points, note)``, or a finished sample when
        no detection overlaps the dataset's box (the box-crop fallback)."""
        p = self.params
        h, w = d.rgb.shape[:2]
        box = _dataset_box(item)
        det = det.scaled(*d.scale).shifted(*d.offset).filtered(p.min_score)
        meta["detect"] = {"scale": _r(d.scale, 6), "size": [int(d.det.shape[1]), int(d.det.shape[0])],
                          "min_face_size": _r(snapped_min_face_size(d.det.shape[1], d.det.shape[0], p.min_face_frac,
                                                                     p.min_face_size), 3)}
        if d.offset != (0.0, 0.0):
            meta["detect"]["region_offset"] = _r(d.offset)
        meta["boxes"] = _r(det.boxes)
        meta["scores"] = _r(det.scores, 5)
        meta["points_all"] = _r(det.points)
        by_box = box is not None and p.use_dataset_box
        if by_box:
            k, iou = choose_by_box(det, box, p.box_min_iou)
            meta["box_iou"] = _r(iou, 4)
            rule = "box_iou"
        else:
            k = choose_face(det, w, h, p, hint)
            rule = "dataset_points" if hint is not None and p.choose_by_dataset_points else p.choose
        if k is None and by_box:
            # The documented fallback: no detection overlaps the labelled face enough,
            # so crop by the dataset's own box rather than guess another face.
            m = _warp.box_crop_matrix(box, p.output_size, p.margin)
            meta.update(method="box_crop", chosen_by="box_crop", matrix=_r(m, 6),
                        fallback_reason="no_detection_on_box")
            crop = _warp.warp(d.rgb, m, p.output_size)
            return ("sample", crop, meta,
                    ("box_crop", f"best IoU with the dataset box {iou:.2f} < box_min_iou {p.box_min_iou}"))
        if k is None:
            return (None, ("no_face", f"no face with score >= {p.min_score}"))
        meta.update(method="mtcnn", chosen=int(k), box=_r(det.boxes[k]), score=_r(det.scores[k], 5),
                    chosen_by=rule)
        return (det.points[k].astype(np.float64), None)

    def _warped(self, d: _decode.Decoded, meta: dict[str, Any], pts: np.ndarray | None,
                note: tuple[str, str] | None) -> tuple:
        """The crop warped onto the template by ``pts``, or the no-face fallback (center crop or skip)."""
        p = self.params
        h, w = d.rgb.shape[:2]
        tpl = _warp.template(p.output_size, p.margin)
        if pts is not None:
            try:
                m = _warp.estimate_similarity(pts, tpl, p.estimator)
            except _warp.AlignError as e:
                note, pts = ("bad_points", str(e)), None
        if pts is None:
            reason, detail = note
            if p.no_face == "skip":
                return ("skip", reason, detail)
            m = _warp.center_crop_matrix(w, h, p.output_size)
            meta["method"] = meta["chosen_by"] = "center_crop"
            meta["fallback_reason"] = reason
        else:
            meta["points_src"] = _r(pts)
            meta["points_aligned"] = _r(_warp.transform_points(pts, m))
            meta["template"] = _r(tpl, 4)
            note = None
        meta["matrix"] = _r(m, 6)
        return ("sample", _warp.warp(d.rgb, m, p.output_size), meta, note)

    def _emit(self, item: Mapping[str, Any], res: tuple, sink: shards.ShardSink,
              spec: shards.ShardSpec) -> None:
        key, path = str(item["key"]), str(item["path"])
        if res[0] == "skip":
            sink.skip(key, path, res[1], res[2])
            return
        _, crop, meta, note = res
        sink.add({"__key__": key, "jpg": _encode_jpeg(crop, self.params.jpeg_quality),
                  "cls": str(int(meta["label"])), "json": meta})
        if note is not None:
            sink.note(key, path, note[0], note[1])


# --------------------------------------------------------------------------------------------
# public entry points


def _read_manifest(manifest_path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from ferpipe.manifest import read_manifest  # noqa: PLC0415

    man = read_manifest(manifest_path)
    rows = man.frame.to_dict(orient="records")
    for r in rows:
        for col in ("landmarks5", "bbox", "soft_label"):
            v = r.get(col)
            r[col] = None if v is None else [float(x) for x in np.asarray(v).ravel()]
    return rows, dict(man.label_space)


def plan_align(manifest_path: str | Path, params: AlignParams,
               ) -> tuple[dict[str, list[shards.ShardSpec]], dict[str, Any]]:
    """The shard plan per split for a manifest (every row, bad ones included: they are
    listed as skipped in their shard's stats) and the manifest's label space."""
    rows, label_space = _read_manifest(manifest_path)
    keep = ("key", "dataset", "split", "path", "sha256", "native_label", "label", "status",
            "landmarks5", "bbox", "soft_label")
    rows = [{k: r.get(k) for k in keep} for r in rows]
    present = {r["split"] for r in rows}
    order = [s for s in ("train", "val", "test") if s in present] + sorted(
        present - {"train", "val", "test"})
    return shards.plan_splits(rows, params.samples_per_shard, splits=order), label_space


def _make_pool(params: AlignParams) -> ThreadPoolExecutor | None:
    if params.decode_workers <= 0:
        return None
    # Threads: Pillow and OpenCV decode and resize without the GIL, and a decoded image is
    # handed over as it is (a process pickled ~0.4 MB per image through a pipe, and cost a
    # second of start-up).
    return ThreadPoolExecutor(params.decode_workers, thread_name_prefix="decode")


class AlignStage(ShardedStage):
    """``ferpipe align``: manifest + raw images -> ``data/aligned/<dataset>`` (see the module doc)."""

    name = STAGE
    # Change speed but not a single output byte: a rerun with more threads resumes.
    non_output = ("threads", "decode_workers", "device")

    def plan(self, params, layout: Layout) -> ShardJob:
        dataset = params.download.dataset
        return align_job(layout.manifest(dataset), layout.raw(dataset), layout.shards("aligned", dataset),
                         params.align, dataset)

    @contextmanager
    def worker(self, job: ShardJob) -> Iterator[_Aligner]:
        pool = _make_pool(job.params)
        aligner = _Aligner(job.inputs["raw_root"], job.params, job.inputs["label_space"], pool)
        try:
            yield aligner
        finally:
            aligner.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def report(self, job: ShardJob, totals: ShardTotals, stats, seconds: float) -> AlignReport:
        datasets = {str(it.get("dataset", "")) for spec in job.specs for it in spec.items}
        index = json.loads((job.out_dir / "index.json").read_text())
        return AlignReport(
            dataset=",".join(sorted(datasets)), out_dir=str(job.out_dir), splits=totals.splits,
            skipped_by_reason=totals.skipped_by_reason, noted_by_reason=totals.noted_by_reason,
            failures=totals.failures, seconds=round(seconds, 3), images_processed=totals.processed,
            images_per_second=totals.per_second(seconds), shards_resumed=totals.resumed,
            index_sha256=index["sha256"], params=job.params.model_dump(mode="json"),
            raw_root=str(job.inputs["raw_root"]), shard_stats=totals.shard_rows)


ALIGN = AlignStage()


def align_job(manifest_path: str | Path, raw_root: str | Path, out_dir: str | Path, params: AlignParams,
              dataset: str = "") -> ShardJob:
    """The planned run: every manifest row (see :func:`plan_align`) into ``out_dir``."""
    plans, label_space = plan_align(manifest_path, params)
    return ShardJob(dataset=dataset or Path(out_dir).name, out_dir=Path(out_dir), plans=plans, params=params,
                    inputs={"raw_root": str(raw_root), "label_space": label_space})


def align_stage(manifest_path: str | Path, raw_root: str | Path, out_dir: str | Path,
                params: AlignParams, progress: Any = True) -> AlignReport:
    """Align every row of the manifest into ``out_dir`` (``data/aligned/<dataset>``); the report is
    returned, not written (``ferpipe align`` writes it: :meth:`AlignStage.run`)."""
    started = time.perf_counter()
    return ALIGN.run_job(align_job(manifest_path, raw_root, out_dir, params), progress, started)


# --------------------------------------------------------------------------------------------
# failure gallery


def failure_thumbnails(failures: Sequence[Mapping[str, Any]], raw_root: str | Path,
                       size: int = 96, limit: int = 48, max_image_pixels: int = 100_000_000,
                       quality: int = 80) -> list[dict[str, Any]]:
    """Base64 JPEG thumbnails (data URIs) of failed images, for a markdown gallery.

    Images that cannot be decoded (corrupt, missing, bombs) get ``data_uri: None``.
    """
    out = []
    for f in list(failures)[:limit]:
        entry = {k: f.get(k) for k in ("key", "path", "reason", "detail", "split")}
        try:
            rgb, _ = _decode.load_rgb(Path(raw_root) / str(f["path"]), max_image_pixels)
            h, w = rgb.shape[:2]
            s = size / max(h, w)
            thumb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))),
                               interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            b64 = base64.b64encode(_encode_jpeg(thumb, quality)).decode("ascii")
            entry["data_uri"] = f"data:image/jpeg;base64,{b64}"
        except _decode.DecodeSkip:
            entry["data_uri"] = None
        out.append(entry)
    return out


def failure_gallery_markdown(thumbs: Sequence[Mapping[str, Any]], title: str = "Alignment failures",
                             total: int | None = None) -> str:
    """Markdown with inline thumbnails (what a Prefect markdown artifact can render)."""
    buf = io.StringIO()
    n = len(thumbs) if total is None else total
    buf.write(f"## {title} ({n})\n\n")
    if total is not None and total > len(thumbs):
        buf.write(f"Showing the first {len(thumbs)}.\n\n")
    buf.write("| image | key | reason | detail |\n|---|---|---|---|\n")
    for t in thumbs:
        img = f'<img src="{t["data_uri"]}" width="96"/>' if t.get("data_uri") else "(undecodable)"
        detail = str(t.get("detail") or "").replace("|", "\\|")[:120]
        buf.write(f"| {img} | `{t['key']}` | {t['reason']} | {detail} |\n")
    return buf.getvalue()
