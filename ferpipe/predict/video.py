"""Reading inputs: which files are images or videos, and video frames in bounded batches.

A video is decoded with OpenCV, one frame at a time; frames that are not kept (``every`` /
``fps``) are only grabbed, never decoded to pixels. At most ``batch`` decoded frames are alive at
once, so memory does not grow with the video's length. A frame that cannot be read is reported
(as an error item) and reading goes on; a stream that stops before its declared length is
reported once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
# Consecutive failed grabs before a stream counts as ended (a damaged packet can fail one grab).
_MAX_GRAB_FAILURES = 8


def kind_of(path: str | os.PathLike) -> str:
    """``image``, ``video`` or ``other`` by extension."""
    ext = Path(path).suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "other"


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files as given, and every file under a folder (recursive, sorted, hidden ones skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        yield Path(root) / f
        else:
            yield p


@dataclass
class Frame:
    index: int                  # frame number in the video (0-based)
    timestamp: float            # seconds
    rgb: np.ndarray | None      # None: the frame could not be read (see error)
    error: str = ""


def video_info(path: str | os.PathLike) -> dict:
    import cv2  # noqa: PLC0415

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return {"ok": False}
        return {"ok": True, "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        cap.release()


def keep_frame(index: int, video_fps: float, every: int = 1, fps: float | None = None) -> bool:
    """Whether frame ``index`` is sampled: every ``every``-th frame, or ``fps`` frames per second
    (the first frame at or after each 1/fps tick)."""
    if fps is None or fps <= 0 or video_fps <= 0 or fps >= video_fps:
        return index % max(1, every) == 0
    tick = math.floor(index * fps / video_fps + 1e-9)
    return index == 0 or tick != math.floor((index - 1) * fps / video_fps + 1e-9)


def iter_frames(path: str | os.PathLike, every: int = 1, fps: float | None = None) -> Iterator[Frame]:
    """The sampled frames of a video, RGB uint8, one at a time."""
    import cv2  # noqa: PLC0415

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise OSError(f"cannot open {path} as a video")
    try:
        vfps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        i, failures = 0, 0
        while True:
            if not cap.grab():
                failures += 1
                if declared and i < declared and failures < _MAX_GRAB_FAILURES:
                    # A damaged frame inside the stream: report it and try the next one.
                    yield Frame(i, i / vfps if vfps > 0 else 0.0, None, "unreadable frame (grab failed)")
                    i += 1
                    continue
                if declared and i < declared:
                    yield Frame(i, i / vfps if vfps > 0 else 0.0, None,
                                f"stream ended at frame {i} of {declared} declared (truncated or damaged)")
                return
            failures = 0
            if keep_frame(i, vfps, every, fps):
                t = i / vfps if vfps > 0 else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
                ok, bgr = cap.retrieve()
                if not ok or bgr is None or bgr.ndim != 3:
                    yield Frame(i, t, None, "frame could not be decoded")
                else:
                    yield Frame(i, t, np.ascontiguousarray(bgr[:, :, ::-1]))
            i += 1
    finally:
        cap.release()


def batched(it: Iterable, n: int) -> Iterator[list]:
    batch: list = []
    for x in it:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
