"""Batched MTCNN detection (facenet-pytorch's pretrained P/R/O-Nets) and the face choice."""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

from ferpipe.align.params import AlignParams
from ferpipe.devices import resolve_device
from ferpipe.heap import retain_freed_memory

# MTCNN's pyramid factor (facenet-pytorch's default); min face sizes are snapped onto it.
PYRAMID_FACTOR = 0.709


@dataclass
class Detections:
    """Faces in one image, in the coordinates of the image given to the detector."""

    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    scores: np.ndarray  # (n,)
    points: np.ndarray  # (n, 5, 2): left eye, right eye, nose, left mouth, right mouth

    def __len__(self) -> int:
        return len(self.boxes)

    def scaled(self, sx: float, sy: float) -> Detections:
        """Map detector coordinates back to the source: divide by the detection scale."""
        k = np.array([sx, sy, sx, sy], dtype=np.float32)
        return Detections(self.boxes / k, self.scores.copy(),
                          self.points / np.array([sx, sy], dtype=np.float32))

    def shifted(self, dx: float, dy: float) -> Detections:
        """Move by (dx, dy): from a region's coordinates to the source image's."""
        if dx == 0 and dy == 0:
            return self
        k = np.array([dx, dy, dx, dy], dtype=np.float32)
        return Detections(self.boxes + k, self.scores.copy(),
                          self.points + np.array([dx, dy], dtype=np.float32))

    def filtered(self, min_score: float) -> Detections:
        keep = self.scores >= min_score
        return Detections(self.boxes[keep], self.scores[keep], self.points[keep])


def empty_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                      np.zeros((0, 5, 2), np.float32))


def snapped_min_face_size(det_w: int, det_h: int, frac: float, floor: int,
                          factor: float = PYRAMID_FACTOR) -> float:
    """min_face_size for a detection image: ``frac`` of its shorter side, at least ``floor``,
    snapped down to ``floor / factor**k`` so the P-Net pyramid is a suffix of the one the
    default (``floor``) run computes: same scales, fewer of them.
    """
    target = max(float(floor), frac * min(det_w, det_h))
    k = max(0, math.floor(math.log(target / floor) / math.log(1.0 / factor) + 1e-9))
    return floor / factor**k


def _channels_last(net):
    """``net`` fed channels-last tensors. MTCNN's small convs and ceil-mode max pools run
    2-2.5x faster in that layout on the CPU (max pooling 9x); conv sums change only in the
    last bits (max abs difference ~1e-6 on R/O-Net outputs), max pooling not at all."""
    import torch  # noqa: PLC0415

    class _ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return _ChannelsLast(net).eval()


@lru_cache(maxsize=8)
def _mtcnn(device: str, thresholds: tuple[float, float, float], channels_last: bool = False):
    # Loading the nets costs seconds (torchvision import): once per process and device.
    from facenet_pytorch import MTCNN  # noqa: PLC0415

    mtcnn = MTCNN(keep_all=True, select_largest=False, thresholds=list(thresholds),
                  factor=PYRAMID_FACTOR, device=device)
    if channels_last:
        mtcnn.pnet, mtcnn.rnet, mtcnn.onet = (_channels_last(n) for n in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet))
    return mtcnn


class FaceDetector:
    """Runs MTCNN on many same-size images per forward pass.

    ``detect(images)`` takes a list of HxWx3 uint8 RGB arrays (any sizes): they are grouped
    by size and each group goes through MTCNN as one batch, in chunks of ``batch_size``.
    """

    def __init__(self, params: AlignParams):
        self.params = params
        # A string: _mtcnn caches the nets per device name.
        self.device = str(resolve_device(params.device, "align.device"))
        self.mtcnn = _mtcnn(self.device, tuple(params.thresholds), params.channels_last)

    def min_face_size(self, w: int, h: int) -> float:
        return snapped_min_face_size(w, h, self.params.min_face_frac, self.params.min_face_size)

    def _run(self, batch: np.ndarray, min_face: float) -> list[Detections]:
        import torch  # noqa: PLC0415

        from ferpipe.align import cascade  # noqa: PLC0415

        m = self.mtcnn
        # Thresholds and factor are the MTCNN object's, as when calling m.detect(batch) with
        # min_face_size set; the cascade gives the same bits, with the box crops batched. The
        # object itself is not changed: detection lanes share it across threads.
        with torch.inference_mode():
            res = cascade.detect(batch, min_face, m.pnet, m.rnet, m.onet, tuple(m.thresholds),
                                 m.factor, self.device)
        out = []
        for i in range(len(batch)):
            sel = res.image_index == i
            if not sel.any():
                out.append(empty_detections())
                continue
            b = res.boxes[sel]
            out.append(Detections(np.ascontiguousarray(b[:, :4], dtype=np.float32),
                                  np.ascontiguousarray(b[:, 4], dtype=np.float32),
                                  np.ascontiguousarray(res.points[sel], dtype=np.float32)))
        return out

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        bs = self.params.batch_size
        for shape in sorted(groups):
            idx = groups[shape]
            min_face = self.min_face_size(shape[1], shape[0])
            for j in range(0, len(idx), bs):
                chunk = idx[j:j + bs]
                dets = self._run(np.stack([images[i] for i in chunk]), min_face)
                for i, d in zip(chunk, dets):
                    results[i] = d
        return results  # type: ignore[return-value]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DetectionLanes:
    """MTCNN on several batches at once: on the CPU, ``params.threads`` lanes (0: one per usable
    core), each a thread running one batch with one torch thread; on CUDA, one lane.

    MTCNN's convs are small: split over two torch threads they wait on each other, and one
    batch kept 1.5 of 2 cores busy; two one-thread lanes keep both (detection 1.25x faster on
    2 cores, same bits: a conv sums in the same order whatever the thread count, and each batch
    is still detected whole). The detector is built on a lane as soon as the lanes start
    (importing torch and facenet-pytorch takes seconds), while the first images are decoded.
    """

    def __init__(self, params: AlignParams):
        self.params = params
        self.count = params.threads or usable_cores()
        retain_freed_memory()  # every batch allocates the same big tensors again
        self._lock = threading.Lock()
        self._threads_before: int | None = None
        self._pool = ThreadPoolExecutor(self.count, thread_name_prefix="mtcnn-lane",
                                        initializer=self._lane_start)
        self._detector: Future[FaceDetector] = self._pool.submit(FaceDetector, params)

    def _lane_start(self) -> None:
        import torch  # noqa: PLC0415

        with self._lock:
            if self._threads_before is None:
                # A new thread starts at the process's default: what close() puts back.
                self._threads_before = torch.get_num_threads()
            torch.set_num_threads(1)

    @property
    def detector(self) -> FaceDetector:
        return self._detector.result()

    @property
    def width(self) -> int:
        """Batches worth having in flight: the lanes on the CPU, one on CUDA."""
        return 1 if self.detector.device.startswith("cuda") else self.count

    def submit(self, images: Sequence[np.ndarray]) -> Future[tuple[list[Detections], float]]:
        """Detect ``images`` on the next free lane: (detections, detector seconds)."""
        detector = self.detector

        def run() -> tuple[list[Detections], float]:
            t0 = time.perf_counter()
            dets = detector.detect(images)
            return dets, time.perf_counter() - t0

        return self._pool.submit(run)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._threads_before is not None:
            import torch  # noqa: PLC0415

            # set_num_threads on a lane also set the default of threads started later.
            torch.set_num_threads(self._threads_before)


_SHARED: dict[str, tuple[DetectionLanes, int]] = {}
_SHARED_LOCK = threading.Lock()


@contextmanager
def shared_lanes(params: AlignParams) -> Iterator[DetectionLanes]:
    """The process's detection lanes for ``params``, shared by every user at the same time: shard
    tasks that a flow runs concurrently in threads feed the same lanes, rather than each bringing
    one lane per core. The last user to leave closes them."""
    key = params.model_dump_json()
    with _SHARED_LOCK:
        lanes, users = _SHARED.get(key) or (None, 0)
        if lanes is None:
            lanes = DetectionLanes(params)
        _SHARED[key] = (lanes, users + 1)
    try:
        yield lanes
    finally:
        with _SHARED_LOCK:
            lanes, users = _SHARED.pop(key)
            if users > 1:
                _SHARED[key] = (lanes, users - 1)
            else:
                lanes.close()


def choose_face(det: Detections, width: int, height: int, params: AlignParams,
                hint_points: np.ndarray | None = None) -> int | None:
    """Index of the face that best matches the labelled one (source coordinates).

    With ``hint_points`` (the dataset's own 5 points) and ``choose_by_dataset_points``: the
    box whose centre is nearest their centroid. Otherwise, ``largest_central``: the highest
    ``sqrt(area / image area) - center_weight * dist(centre, image centre) / half diagonal``,
    ``largest``: the same with center_weight 0, ``score``: the detector's probability. Ties
    (within 1e-6) go to the higher detector probability, then the lower index.
    """
    n = len(det)
    if n == 0:
        return None
    cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
    if hint_points is not None and params.choose_by_dataset_points:
        hx, hy = np.asarray(hint_points, np.float64).reshape(5, 2).mean(axis=0)
        crit = -np.hypot(cx - hx, cy - hy)
    elif params.choose == "score":
        crit = det.scores.astype(np.float64)
    else:
        bw = np.clip(det.boxes[:, 2] - det.boxes[:, 0], 0, None)
        bh = np.clip(det.boxes[:, 3] - det.boxes[:, 1], 0, None)
        size = np.sqrt(bw * bh / float(width * height))
        wcen = 0.0 if params.choose == "largest" else params.center_weight
        dist = np.hypot(cx - width / 2, cy - height / 2) / (math.hypot(width, height) / 2)
        crit = size - wcen * dist
    order = sorted(range(n), key=lambda i: (-round(float(crit[i]) / 1e-6),
                                            -float(det.scores[i]), i))
    return order[0]


def box_iou(boxes: np.ndarray, box) -> np.ndarray:
    """IoU of each (x1, y1, x2, y2) row of ``boxes`` with ``box``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in box)
    iw = np.clip(np.minimum(b[:, 2], x1) - np.maximum(b[:, 0], x0), 0, None)
    ih = np.clip(np.minimum(b[:, 3], y1) - np.maximum(b[:, 1], y0), 0, None)
    inter = iw * ih
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area + (x1 - x0) * (y1 - y0) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def choose_by_box(det: Detections, box, min_iou: float) -> tuple[int | None, float]:
    """The detection overlapping the annotated ``box`` most, and its IoU; (None, best IoU)
    when none reaches ``min_iou``. Ties go to the higher detector probability, then the lower
    index."""
    if len(det) == 0:
        return None, 0.0
    iou = box_iou(det.boxes, box)
    k = sorted(range(len(det)), key=lambda i: (-round(float(iou[i]) / 1e-6),
                                               -float(det.scores[i]), i))[0]
    best = float(iou[k])
    return (k if best >= min_iou else None), best
