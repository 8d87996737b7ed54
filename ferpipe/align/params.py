"""The ``align.*`` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ferpipe._schema import StrictModel


class AlignParams(StrictModel):
    """How raw images become aligned face crops (see :mod:`ferpipe.align.stage`)."""

    # Where the 5 points come from: MTCNN, the dataset's own `landmarks5` column, or the
    # dataset's points when a row has them and MTCNN otherwise.
    points: Literal["mtcnn", "dataset", "auto"] = "mtcnn"
    # `similarity`: 5-point warp onto the ArcFace template; `passthrough`: the dataset ships
    # aligned crops, just resize them to output_size.
    method: Literal["similarity", "passthrough"] = "similarity"
    output_size: int = Field(224, ge=32, le=1024)
    # Extra context around the template: 0 is the ArcFace crop; 0.2 shrinks the template
    # points towards the centre by 1/1.2 so 20% more face surroundings are kept.
    margin: float = Field(0.0, ge=0.0, le=2.0)
    # `lstsq`: least-squares similarity (scikit-image's Umeyama estimate);
    # `lmeds`: OpenCV estimateAffinePartial2D with LMEDS (robust to one bad point).
    estimator: Literal["lstsq", "lmeds"] = "lstsq"
    jpeg_quality: int = Field(95, ge=50, le=100)

    # What to do when no face is found (or no points are available): drop the image, or keep
    # a centre square crop resized to output_size. Both are counted and listed.
    no_face: Literal["skip", "center_crop"] = "skip"
    # Which face, when there are several: score = sqrt(area)/sqrt(image area)
    #   - center_weight * distance(box centre, image centre)/half image diagonal,
    # ties (within 1e-6) broken by detector probability. `largest`: center_weight 0;
    # `score`: highest detector probability. With dataset landmarks at hand and
    # choose_by_dataset_points, the box whose centre is nearest their centroid wins instead.
    choose: Literal["largest_central", "largest", "score"] = "largest_central"
    center_weight: float = Field(1.0, ge=0.0)
    choose_by_dataset_points: bool = True
    # A row with the dataset's face box (AffectNet, RAF-DB v1.1, ExpW): the detector looks in
    # the square around the box (grown by box_context x its longer side on each side, resized
    # to box_detect_size) and the detection overlapping the box most (IoU) is the face. When
    # none reaches box_min_iou, the crop is the box itself (method box_crop, listed as noted).
    # The sample json records which rule chose the face (chosen_by).
    use_dataset_box: bool = True
    box_context: float = Field(0.5, ge=0.0, le=4.0)
    box_detect_size: int = Field(256, ge=48, le=1024)
    box_min_iou: float = Field(0.3, ge=0.0, le=1.0)

    # Detection. The detector sees a resized copy: longest side at most detect_max_side,
    # shortest side at least detect_min_side (tiny images are upscaled); crops are taken from
    # the original at full resolution.
    detect_max_side: int = Field(480, ge=64)
    detect_min_side: int = Field(160, ge=24)
    # Smallest face searched, as a fraction of the detection image's shorter side (and never
    # below min_face_size px). It is snapped down onto MTCNN's default pyramid (20/0.709^k),
    # so the pyramid levels kept are exactly those the default run would compute.
    min_face_frac: float = Field(0.2, ge=0.0, le=1.0)
    min_face_size: int = Field(20, ge=12)
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    min_score: float = Field(0.9, ge=0.0, le=1.0)
    batch_size: int = Field(32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # MTCNN's nets on channels-last tensors: 2-2.5x faster R/O-Net on the CPU. Boxes and points
    # move from facenet-pytorch's NCHW call by float rounding only (~1e-4 px); that changes some
    # warped pixels, so false gives shards bitwise equal to facenet-pytorch's own detection.
    channels_last: bool = True
    # CPU threads for detection: that many lanes, each detecting its own batch with one torch
    # thread (0: one lane per usable core). Output bytes do not depend on it.
    threads: int = Field(0, ge=0)
    # Threads decoding images ahead of the detector; 0 decodes in the stage's own thread.
    decode_workers: int = Field(1, ge=0)

    samples_per_shard: int = Field(1000, ge=1)
    # PIL's decompression-bomb limit; larger images are listed as skipped, never decoded.
    max_image_pixels: int = Field(100_000_000, ge=1_000_000)
    # Rows whose label is -1 (class outside the label space) are skipped unless this is set.
    keep_unlabelled: bool = False
