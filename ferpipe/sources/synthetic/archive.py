"""Render a whole synthetic set and pack it in the RAF-DB "basic" layout, plus ground truth.

Archive ``<name>.zip`` (members sorted, stored uncompressed, fixed date):

- ``EmoLabel/list_patition_label.txt``: ``train_00001.jpg 5`` (RAF-DB's spelling and numbering
  widths: train 5 digits, test 4), train lines then test lines.
- ``Image/original/<name>.jpg``
- ``Annotation/manual/<stem>_manu_attri.txt``: 5 lines ``x<TAB>y`` (ground-truth MTCNN-order
  points, pixel floats), then gender, race, age as integers. These three attributes are
  placeholders that keep RAF-DB's file shape (gender 0 with facial hair, else 2 "unsure"; race
  from the rendered skin-tone tercile, 0/2/1; age 2 "20-39"); they are not annotations of anything.
- ``Annotation/boundingbox/<stem>_boundingbox.txt``: ``x0 y0 x1 y1`` (the ground-truth face box).

Ground truth ``<name>.groundtruth.zip`` (same packing):

- ``groundtruth.json``: ``{"format", "name", "seed", "size", "difficulty", "parsing_classes",
  "labels", "images": {<image name>: {"label", "split", "box", "points5", "points68",
  "intensity", "aus", "scene"}}}``; coordinates in pixels of the original image, rounded to
  1/1000 px; ``label`` is the native RAF label (1..7); ``scene`` holds identity, pose, lighting,
  background and sensor parameters.
- ``parsing/<stem>.png``: 8-bit single-channel parsing map, LaPa order (see render.PARSING_CLASSES).

Read it back with :func:`load_ground_truth`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
import zipfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ferpipe.shards import encode_png

from . import face as F
from . import render as R

FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
GT_FORMAT = "ferpipe-synthetic-groundtruth/1"
LABEL_FILE = "EmoLabel/list_patition_label.txt"
IMAGE_DIR = "Image/original/"
_DIFFICULTY_CODE = {"default": 0, "hard": 1}


@dataclass(frozen=True)
class SynthResult:
    archive: Path
    groundtruth: Path
    counts: dict  # {"train": {label: n}, "test": {label: n}}
    n_images: int
    elapsed_s: float

    @property
    def images_per_s(self) -> float:
        return self.n_images / max(self.elapsed_s, 1e-9)


@dataclass
class GroundTruth:
    name: str
    label: int
    split: str
    box: np.ndarray  # (4,) x0 y0 x1 y1
    points5: np.ndarray  # (5, 2)
    points68: np.ndarray  # (68, 2)
    intensity: float
    aus: dict
    scene: dict
    parsing_png: bytes

    @property
    def parsing(self) -> np.ndarray:
        """The HxW uint8 LaPa-order parsing map (decoded on access)."""
        return np.asarray(Image.open(io.BytesIO(self.parsing_png)))


# --------------------------------------------------------------------------------------------


def plan(n_per_class: int, seed: int, test_fraction: float) -> list[tuple[str, int, str]]:
    """(image name, RAF label, split) for every image, in label-file order."""
    n_test = int(round(n_per_class * test_fraction))
    if test_fraction > 0 and n_per_class >= 2:
        n_test = min(n_per_class - 1, max(1, n_test))  # every class keeps both splits
    n_train = n_per_class - n_test
    if n_train * 7 > 99999 or n_test * 7 > 9999:
        raise ValueError("RAF-DB numbering allows at most 99999 train and 9999 test images")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A11]))
    out = []
    for split, n, width in (("train", n_train, 5), ("test", n_test, 4)):
        labels = np.repeat(np.arange(1, 8), n)
        labels = labels[rng.permutation(len(labels))]
        out += [(f"{split}_{i + 1:0{width}d}.jpg", int(lab), split) for i, lab in enumerate(labels)]
    return out


def _r(x) -> list:
    return np.round(np.asarray(x, np.float64), 3).tolist()


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return round(float(o), 5)
    if isinstance(o, np.integer):
        return int(o)
    return o


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _render_one(job):
    index, name, label, split, seed, size, difficulty = job
    ss = np.random.SeedSequence([int(seed), _DIFFICULTY_CODE[difficulty], int(index)])
    rng = np.random.default_rng(ss)
    sc = R.sample_scene(rng, label, size, R.STYLES[difficulty])
    out = R.render_face(sc, size)
    png = encode_png(out.parsing, compression=6)
    idt = sc.identity
    gender = 0 if idt.beard != "none" else 2
    race = 0 if idt.skin_tone < 1 / 3 else (2 if idt.skin_tone < 2 / 3 else 1)
    manu = "".join(f"{x:.3f}\t{y:.3f}\n" for x, y in out.points5) + f"{gender}\n{race}\n2\n"
    gt = {
        "label": label,
        "split": split,
        "box": _r(out.box),
        "points5": _r(out.points5),
        "points68": _r(out.points68),
        "intensity": round(float(sc.intensity), 5),
        "aus": _jsonable(sc.aus),
        "scene": _jsonable(sc.to_json()),
    }
    return name, out.jpeg, png, manu, gt


def _zip_write(path: Path, members: dict[str, bytes]) -> None:
    from ferpipe.tempfiles import private_sibling  # noqa: PLC0415

    tmp = private_sibling(path, kind="file")  # two renders of one archive never share a temp file
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(members):
                zi = zipfile.ZipInfo(name, date_time=FIXED_ZIP_DATE)
                zi.compress_type = zipfile.ZIP_STORED
                zi.create_system = 3
                zi.external_attr = 0o644 << 16
                zf.writestr(zi, members[name])
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def render_archive(
    out_dir,
    *,
    n_per_class: int = 300,
    size: int = 256,
    seed: int = 0,
    test_fraction: float = 0.2,
    workers: int = 2,
    name: str = "synthetic_rafdb",
    difficulty: str = "default",
    progress: bool | None = None,
) -> SynthResult:
    """Render ``7 * n_per_class`` faces and write ``<out_dir>/<name>.zip`` (RAF-DB basic layout)
    and ``<out_dir>/<name>.groundtruth.zip``. The bytes depend only on the arguments other than
    ``workers``/``progress``. ``difficulty`` is ``"default"`` or ``"hard"`` (weaker expressions,
    stronger pose, heavier noise and compression)."""
    if difficulty not in R.STYLES:
        raise ValueError(f"difficulty must be one of {sorted(R.STYLES)}, got {difficulty!r}")
    if n_per_class < 1 or size < 64:
        raise ValueError("need n_per_class >= 1 and size >= 64")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = plan(n_per_class, seed, test_fraction)
    jobs = [(i, nm, lab, sp, seed, size, difficulty) for i, (nm, lab, sp) in enumerate(items)]
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc=f"synth {name}", unit="img", disable=None if progress is None else not progress)
    if workers and workers > 1:
        # spawn, not fork: the caller may already run torch/OpenMP threads. imap keeps job order.
        with get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            results = list(tqdm(pool.imap(_render_one, jobs, chunksize=8), **bar))
    else:
        results = [_render_one(j) for j in tqdm(jobs, **bar)]

    members: dict[str, bytes] = {}
    gt_members: dict[str, bytes] = {}
    images = {}
    lines = []
    counts: dict[str, dict[int, int]] = {"train": {k: 0 for k in range(1, 8)}, "test": {k: 0 for k in range(1, 8)}}
    for (nm, jpeg, png, manu, gt) in results:
        stem = nm[:-4]
        members[IMAGE_DIR + nm] = jpeg
        members[f"Annotation/manual/{stem}_manu_attri.txt"] = manu.encode()
        b = gt["box"]
        members[f"Annotation/boundingbox/{stem}_boundingbox.txt"] = f"{b[0]:.3f} {b[1]:.3f} {b[2]:.3f} {b[3]:.3f}\n".encode()
        gt_members[f"parsing/{stem}.png"] = png
        images[nm] = gt
        lines.append(f"{nm} {gt['label']}\n")
        counts[gt["split"]][gt["label"]] += 1
    members[LABEL_FILE] = "".join(lines).encode()
    doc = {
        "format": GT_FORMAT,
        "name": name,
        "seed": int(seed),
        "size": int(size),
        "difficulty": difficulty,
        "n_per_class": int(n_per_class),
        "test_fraction": float(test_fraction),
        "parsing_classes": list(R.PARSING_CLASSES),
        "labels": {str(k): v for k, v in F.RAF_LABELS.items()},
        "images": images,
    }
    gt_members["groundtruth.json"] = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    arc = out_dir / f"{name}.zip"
    gtp = out_dir / f"{name}.groundtruth.zip"
    _zip_write(arc, members)
    _zip_write(gtp, gt_members)
    return SynthResult(arc, gtp, counts, len(results), time.perf_counter() - t0)


def load_ground_truth(path) -> dict[str, GroundTruth]:
    """Read ``<name>.groundtruth.zip`` into {image name: GroundTruth}."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        doc = json.loads(zf.read("groundtruth.json"))
        if doc.get("format") != GT_FORMAT:
            from ferpipe.errors import DataError

            raise DataError(f"{path}: groundtruth.json format is {doc.get('format')!r}, expected {GT_FORMAT!r}")
        out = {}
        for nm, g in doc["images"].items():
            out[nm] = GroundTruth(
                name=nm,
                label=int(g["label"]),
                split=g["split"],
                box=np.asarray(g["box"], np.float32),
                points5=np.asarray(g["points5"], np.float32),
                points68=np.asarray(g["points68"], np.float32),
                intensity=float(g["intensity"]),
                aus=g["aus"],
                scene=g["scene"],
                parsing_png=zf.read(f"parsing/{nm[:-4]}.png"),
            )
    return out


def read_labels(archive_path) -> list[tuple[str, int]]:
    with zipfile.ZipFile(archive_path) as zf:
        text = zf.read(LABEL_FILE).decode()
    out = []
    for line in text.splitlines():
        nm, lab = line.split(" ")
        out.append((nm, int(lab)))
    return out


def write_preview(archive_path, png_path, per_class: int = 8, thumb: int = 112) -> Path:
    """A contact sheet: one labelled row per expression, the first ``per_class`` images of each."""
    labels = read_labels(archive_path)
    label_w = max(110, thumb)
    rows = []
    with zipfile.ZipFile(archive_path) as zf:
        for lab in range(1, 8):
            names = [nm for nm, lb in labels if lb == lab][:per_class]
            row = np.full((thumb, label_w + per_class * thumb, 3), 255, np.uint8)
            cv2.putText(row, f"{lab} {F.RAF_LABELS[lab]}", (6, thumb // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 0, 0), 1, cv2.LINE_AA)
            for j, nm in enumerate(names):
                im = np.asarray(Image.open(io.BytesIO(zf.read(IMAGE_DIR + nm))).convert("RGB"))
                im = cv2.resize(im, (thumb, thumb), interpolation=cv2.INTER_AREA)
                row[:, label_w + j * thumb: label_w + (j + 1) * thumb] = im
            rows.append(row)
    sheet = np.concatenate(rows, 0)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(png_path, format="PNG")
    return png_path


# --------------------------------------------------------------------------------------------
# CLI entry points (ferpipe synth ...)
# --------------------------------------------------------------------------------------------


def synth_command(out, n: int = 2100, seed: int = 0, preview=None, size: int = 256, *,
                  difficulty: str = "default", workers: int = 2, name: str | None = None,
                  test_fraction: float = 0.2) -> SynthResult:
    """What ``ferpipe synth`` runs: ``n`` total images split evenly over the 7 classes."""
    n_per_class = max(1, int(math.ceil(int(n) / 7)))
    if name is None:
        name = "synthetic_rafdb" if difficulty == "default" else f"synthetic_rafdb_{difficulty}"
    res = render_archive(out, n_per_class=n_per_class, size=size, seed=seed, test_fraction=test_fraction,
                         workers=workers, name=name, difficulty=difficulty)
    print(f"wrote {res.archive} ({res.n_images} images, {res.elapsed_s:.1f}s, {res.images_per_s:.1f} img/s)")
    print(f"wrote {res.groundtruth}")
    if preview:
        print(f"wrote {write_preview(res.archive, preview)}")
    return res


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="ferpipe synth", description="Render the embedded synthetic FER set.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=2100, help="total images, split evenly over 7 classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", default=None, help="write a contact-sheet PNG here")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--difficulty", choices=sorted(R.STYLES), default="default")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--name", default=None, help="archive base name")
    return p


def main_synth(argv=None) -> int:
    a = build_parser().parse_args(argv)
    synth_command(a.out, a.n, a.seed, a.preview, a.size, difficulty=a.difficulty, workers=a.workers, name=a.name)
    return 0
