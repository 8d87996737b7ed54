"""The priors stage: aligned-face shards -> the same shards plus cached priors.

One priors shard per aligned shard, same name, same keys, same order. Each sample keeps the
aligned ``<key>.jpg`` and ``<key>.cls`` bytes unchanged and extends ``<key>.json`` with a
``priors`` object (kind, backend, checkpoint sha256s, input size, resize, normalisation,
shapes, the flip convention). Then, per kind:

- ``features``: ``<key>.lmk.npy`` float16 [2, C_l, 7, 7] and ``<key>.seg.npy`` float16
  [2, C_s, 7, 7]; index 0 = the image, 1 = computed from the horizontally flipped image;
- ``maps``: ``<key>.landmarks.npy`` float32 [2, 68, 2] (x, y pixels of the aligned image;
  view 1 in the flipped image's pixels), ``<key>.parsing.png`` and ``<key>.parsing_flip.png``
  (uint8 LaPa classes). Flip semantics: :mod:`ferpipe.priors.conventions`.

Shards, done markers, resume and indexes are :mod:`ferpipe.shards`; a sample whose image
cannot be decoded is skipped and listed with its reason, never a crash.

Before anything runs, :func:`ferpipe.priors.domain.check_domain` compares the dataset's domain
(real photos or the embedded rendered faces) with what the backend's nets were trained on; the
result is the ``priors.domain`` object of every sample's json and the report's ``domain``.
"""

from __future__ import annotations

import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

from ferpipe import shards
from ferpipe.priors.backends import PriorBackend, build_backend
from ferpipe.priors.domain import check_domain, dataset_domain, mismatch_note
from ferpipe.priors.params import PriorsParams
from ferpipe.report import Artifact, markdown, markdown_table, table
from ferpipe.sharded import ShardedStage, ShardJob, ShardTotals, mirror_shards
from ferpipe.thumbs import jpeg_data_uri

STAGE = "priors"
FLIP_CONVENTION = ("view 1 is computed from the horizontally flipped image and uses the same "
                   "image-side semantics as view 0 (LaPa class 2 / iBUG points 36-41 = the brow "
                   "/ eye on the image's left of that view's image); equivalently view 0 "
                   "mirrored (x' = W-1-x) with points re-ordered by the iBUG mirror "
                   "permutation and classes 2<->3, 4<->5 swapped")

# LaPa palette for overlays (background transparent).
PALETTE = np.array([[0, 0, 0], [255, 204, 153], [153, 51, 0], [204, 102, 0], [0, 102, 255],
                    [0, 204, 255], [255, 0, 255], [255, 0, 0], [102, 0, 51], [204, 0, 102],
                    [102, 51, 0]], np.uint8)


@dataclass
class PriorsReport:
    dataset: str
    out_dir: str
    kind: str
    backend: str
    splits: dict[str, dict[str, int]]
    skipped_by_reason: dict[str, int]
    failures: list[dict[str, Any]]
    seconds: float
    samples_processed: int
    samples_per_second: float
    shards_resumed: int
    bytes_per_sample: float
    index_sha256: str
    prior: dict[str, Any] = field(default_factory=dict)
    shard_stats: list[dict[str, Any]] = field(default_factory=list)
    domain: dict[str, Any] = field(default_factory=dict)
    gallery_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"priors {self.dataset} ({self.kind}, {self.backend}): "
                 f"{self.samples_processed} samples in {self.seconds:.1f}s "
                 f"({self.samples_per_second:.1f}/s), {self.bytes_per_sample / 1024:.1f} KiB/sample "
                 f"-> {self.out_dir}"]
        for s, c in self.splits.items():
            lines.append(f"  {s:>5}: {c['written']} written, {c['skipped']} skipped, "
                         f"{c['shards']} shards ({c['shards_resumed']} resumed)")
        if self.skipped_by_reason:
            lines.append(f"  skipped: {self.skipped_by_reason}")
        note = mismatch_note({"domain": self.domain})
        if note:
            lines.append("  WARNING: " + note.replace("**", ""))
        return "\n".join(lines)

    def artifacts(self) -> list[Artifact]:
        """A per-shard stats table; a markdown page with the skipped samples and a gallery."""
        ds, what = self.dataset, f"{self.kind}, backend {self.backend}"
        md = [f"# {ds}: priors ({what})", "",
              f"{sum(c['written'] for c in self.splits.values())} samples, "
              f"{self.bytes_per_sample / 1024:.1f} KiB/sample, {self.samples_per_second:.1f} samples/s", ""]
        if self.failures:
            md += [markdown_table(self.failures[:200], ["split", "shard", "key", "reason", "detail"]), ""]
        if self.gallery_size:
            md.append(priors_gallery(self.out_dir, self.kind, limit=self.gallery_size))
        return [table(("priors", ds, "shards"), self.shard_stats, f"{ds}: priors ({self.kind}, {self.backend}) per shard"),
                markdown(("priors", ds, "gallery"), "\n".join(md), f"{ds}: priors gallery and skipped samples")]


# --------------------------------------------------------------------------------------------
# planning: mirror the aligned shards


def _aligned_splits(aligned_dir: Path) -> list[str]:
    present = sorted(p.name[: -len(shards.INDEX_SUFFIX)] for p in aligned_dir.glob(f"*{shards.INDEX_SUFFIX}"))
    return [s for s in ("train", "val", "test") if s in present] + [
        s for s in present if s not in ("train", "val", "test")]


def plan_priors(aligned_dir: str | os.PathLike) -> dict[str, list[shards.ShardSpec]]:
    """One spec per aligned shard (same split, index, keys); items carry the source shard
    name and sha256, so a changed aligned shard changes the fingerprint."""
    aligned_dir = Path(aligned_dir)
    splits = _aligned_splits(aligned_dir)
    if not splits:
        raise FileNotFoundError(f"no *{shards.INDEX_SUFFIX} in {aligned_dir}: run the align stage first")

    def items(entry, keys):
        return ({"key": k, "source_shard": entry["name"], "source_sha256": entry["sha256"]} for k in keys)

    return {split: mirror_shards(aligned_dir, split, split, items) for split in splits}


# --------------------------------------------------------------------------------------------
# encoding


decode_npy, decode_png = shards.decode_npy, shards.decode_png  # re-exported: other modules import them here


def _read_aligned(path: Path, keys: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for the aligned shard's samples in ``keys``, in file order."""
    return ((k, f) for k, f in shards.iter_tar_samples(path) if k in keys)


class _PriorsWorker:
    """ShardFn: holds the backend across shards."""

    def __init__(self, aligned_dir: Path, params: PriorsParams, backend: PriorBackend,
                 domain: Mapping[str, Any]):
        self.aligned_dir = aligned_dir
        self.params = params
        self.backend = backend
        self.desc = {**backend.describe(), "domain": dict(domain)}

    def describe(self) -> str:
        """Besides the params, what decides the output: the backend (checkpoint sha256s) and domain."""
        return shards.canonical_json(self.desc).decode()

    def _prior_meta(self, shapes: dict[str, list[int]]) -> dict[str, Any]:
        return {"kind": self.params.kind, **self.desc, "shapes": shapes, "views": ["original", "hflip"],
                "flip_convention": FLIP_CONVENTION,
                "coordinates": "pixels of the aligned image, pixel centres at integers"}

    def __call__(self, spec: shards.ShardSpec, sink: shards.ShardSink) -> dict[str, Any]:
        if not spec.items:
            return {"model_seconds": 0.0}
        by_src: dict[str, list[str]] = {}
        for it in spec.items:
            by_src.setdefault(str(it["source_shard"]), []).append(str(it["key"]))
        t_model = 0.0
        for src, keys in by_src.items():
            batch: list[tuple[str, dict[str, bytes], np.ndarray, dict]] = []
            for key, fields in _read_aligned(self.aligned_dir / src, set(keys)):
                try:
                    rgb = np.asarray(Image.open(io.BytesIO(fields["jpg"])).convert("RGB"))
                    meta = json.loads(fields["json"])
                except KeyError as e:
                    sink.skip(key, src, "missing_member", f"no .{e.args[0]} in the aligned shard")
                    continue
                except Exception as e:  # noqa: BLE001 - any decode failure is one bad sample
                    sink.skip(key, src, "corrupt_sample", f"{type(e).__name__}: {e}")
                    continue
                batch.append((key, fields, rgb, meta))
                if len(batch) >= self.params.batch_size:
                    t_model += self._flush(batch, sink)
                    batch = []
            if batch:
                t_model += self._flush(batch, sink)
        return {"model_seconds": round(t_model, 3)}

    def _flush(self, batch, sink: shards.ShardSink) -> float:
        # Same-size crops run together (align writes one size, but be safe).
        t0 = time.perf_counter()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, b in enumerate(batch):
            groups.setdefault(b[2].shape, []).append(i)
        results: dict[int, dict[str, Any]] = {}
        for shape, idx in groups.items():
            crops = [batch[i][2] for i in idx]
            flips = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
            if self.params.kind == "features":
                l0, s0 = self.backend.features(crops)
                l1, s1 = self.backend.features(flips)
                for j, i in enumerate(idx):
                    results[i] = {"lmk.npy": np.stack([l0[j], l1[j]]).astype(np.float16),
                                  "seg.npy": np.stack([s0[j], s1[j]]).astype(np.float16)}
            else:
                p0, m0 = self.backend.maps(crops)
                p1, m1 = self.backend.maps(flips)
                for j, i in enumerate(idx):
                    results[i] = {"landmarks.npy": np.stack([p0[j], p1[j]]).astype(np.float32),
                                  "parsing": m0[j], "parsing_flip": m1[j]}
        seconds = time.perf_counter() - t0
        for i, (key, fields, rgb, meta) in enumerate(batch):
            r = results[i]
            sample: dict[str, Any] = {"__key__": key, "jpg": fields["jpg"]}
            if "cls" in fields:
                sample["cls"] = fields["cls"]
            if self.params.kind == "features":
                shapes = {"lmk": list(r["lmk.npy"].shape), "seg": list(r["seg.npy"].shape),
                          "dtype": "float16"}
                sample["lmk.npy"] = shards.encode_npy(r["lmk.npy"])
                sample["seg.npy"] = shards.encode_npy(r["seg.npy"])
            else:
                shapes = {"landmarks": list(r["landmarks.npy"].shape), "landmarks_dtype": "float32",
                          "parsing": list(r["parsing"].shape), "parsing_dtype": "uint8"}
                sample["landmarks.npy"] = shards.encode_npy(r["landmarks.npy"])
                sample["parsing.png"] = shards.encode_png(r["parsing"], self.params.png_compression)
                sample["parsing_flip.png"] = shards.encode_png(r["parsing_flip"], self.params.png_compression)
            sample["json"] = {**meta, "priors": self._prior_meta(shapes)}
            sink.add(sample)
        return seconds


# --------------------------------------------------------------------------------------------
# entry points


class PriorsStage(ShardedStage):
    """``ferpipe priors``: ``data/aligned/<dataset>`` -> ``data/priors/<dataset>`` (see the module doc)."""

    name = STAGE
    # Change speed or reporting only. batch_size is *not* one of them: oneDNN's convolutions
    # give last-bit differences between batch sizes, which fp16 does not always hide.
    non_output = ("device", "threads", "gallery_size")

    def plan(self, params, layout) -> ShardJob:
        dataset = params.download.dataset
        return priors_job(layout.shards("aligned", dataset), layout.shards("priors", dataset), params.priors,
                          layout.models, dataset_domain(params.download))

    @contextmanager
    def worker(self, job: ShardJob) -> Iterator[_PriorsWorker]:
        backend = build_backend(job.params, job.inputs["models_dir"])
        yield _PriorsWorker(Path(job.inputs["aligned_dir"]), job.params, backend, job.inputs["domain"])

    def report(self, job: ShardJob, totals: ShardTotals, stats, seconds: float) -> PriorsReport:
        p: PriorsParams = job.params
        index = json.loads((job.out_dir / "index.json").read_text())
        return PriorsReport(
            dataset=job.dataset, out_dir=str(job.out_dir), kind=p.kind, backend=p.backend, splits=totals.splits,
            skipped_by_reason=totals.skipped_by_reason, failures=totals.failures, seconds=round(seconds, 3),
            samples_processed=totals.processed, samples_per_second=totals.per_second(seconds),
            shards_resumed=totals.resumed, bytes_per_sample=round(totals.bytes / max(totals.written, 1), 1),
            index_sha256=index["sha256"], prior=prior_description(job.out_dir, list(stats)),
            shard_stats=totals.shard_rows, domain=dict(job.inputs["domain"]), gallery_size=p.gallery_size)


PRIORS = PriorsStage()


def priors_job(aligned_dir: str | os.PathLike, out_dir: str | os.PathLike, params: PriorsParams,
               models_dir: str | os.PathLike, data_domain: str | None = None) -> ShardJob:
    """The planned run. Checks the domain first (:func:`ferpipe.priors.domain.check_domain`):
    a real dataset with synthetic-only prior nets raises DomainMismatchError before any shard,
    unless ``params.allow_domain_mismatch``; ``data_domain`` None (unknown) is recorded, not checked."""
    aligned_dir = Path(aligned_dir)
    domain = check_domain(params, models_dir, data_domain, aligned_dir.name)
    return ShardJob(dataset=aligned_dir.name, out_dir=Path(out_dir), plans=plan_priors(aligned_dir), params=params,
                    inputs={"aligned_dir": str(aligned_dir), "models_dir": str(models_dir), "domain": domain})


def priors_shard(spec: shards.ShardSpec, aligned_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 params: PriorsParams, models_dir: str | os.PathLike) -> dict[str, Any]:
    """One priors shard of ``aligned_dir`` (idempotent: a done shard is kept) and its stats."""
    return PRIORS.run_shard(spec, priors_job(aligned_dir, out_dir, params, models_dir))


def priors_stage(aligned_dir: str | os.PathLike, out_dir: str | os.PathLike, params: PriorsParams,
                 models_dir: str | os.PathLike, progress: Any = True,
                 data_domain: str | None = None) -> PriorsReport:
    """Every aligned shard of ``aligned_dir`` (``data/aligned/<dataset>``) -> ``out_dir``; the
    report is returned, not written (``ferpipe priors`` writes it: :meth:`PriorsStage.run`).
    ``data_domain``: ``real`` or ``synthetic`` (:func:`ferpipe.priors.domain.dataset_domain`)."""
    started = time.perf_counter()
    return PRIORS.run_job(priors_job(aligned_dir, out_dir, params, models_dir, data_domain), progress, started)


def prior_description(out_dir: str | os.PathLike, splits: Sequence[str]) -> dict[str, Any]:
    """The ``priors`` object of the first written sample, less its shapes: what the shards
    hold, read back from them (the same whether the shards ran here or as a flow's tasks);
    empty when no sample was written."""
    meta = shards.first_sample_json(url for split in splits for url in shards.shard_urls(out_dir, split))
    return {} if meta is None else {k: v for k, v in meta["priors"].items() if k != "shapes"}


# --------------------------------------------------------------------------------------------
# gallery


def overlay_parsing(rgb: np.ndarray, parsing: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    col = PALETTE[np.clip(parsing, 0, len(PALETTE) - 1)]
    m = (parsing > 0)[..., None]
    return np.where(m, (rgb * (1 - alpha) + col * alpha).astype(np.uint8), rgb)


def draw_landmarks(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    r = max(1, round(rgb.shape[0] / 112))
    for i, (x, y) in enumerate(np.asarray(points, np.float64)):
        if not np.isfinite([x, y]).all():
            continue
        # image-left features in cyan, image-right in yellow, the rest green: shows the flip convention
        c = (0, 255, 255) if i in (*range(17, 22), *range(36, 42)) else (
            (255, 255, 0) if i in (*range(22, 27), *range(42, 48)) else (0, 255, 0))
        cv2.circle(out, (int(round(x)), int(round(y))), r, c, -1, lineType=cv2.LINE_AA)
    return out


def _energy(feat: np.ndarray, size: int) -> np.ndarray:
    e = np.sqrt((feat.astype(np.float32) ** 2).mean(0))
    e = (e - e.min()) / max(float(e.max() - e.min()), 1e-6)
    e = cv2.resize((e * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.applyColorMap(e, cv2.COLORMAP_VIRIDIS)[:, :, ::-1]


def gallery_rows(out_dir: str | os.PathLike, split: str | None = None, limit: int = 12,
                 thumb: int = 112) -> list[dict[str, Any]]:
    """Thumbnails (base64 JPEG data URIs) of the first ``limit`` samples of a priors split:
    maps -> image | parsing overlay | landmarks, for both views; features -> image | lmk
    feature energy | seg feature energy (RMS over channels, 7x7 upsampled)."""
    out_dir = Path(out_dir)
    if split is None:
        split = _aligned_splits(out_dir)[0]
    rows = []
    for tar in shards.shard_urls(out_dir, split):
        for key, fields in shards.iter_tar_samples(Path(tar)):
            rgb = np.asarray(Image.open(io.BytesIO(fields["jpg"])).convert("RGB"))
            flip = np.ascontiguousarray(rgb[:, ::-1])
            row = {"key": key}
            if "landmarks.npy" in fields:
                pts = decode_npy(fields["landmarks.npy"])
                p0, p1 = decode_png(fields["parsing.png"]), decode_png(fields["parsing_flip.png"])
                row["cells"] = [jpeg_data_uri(rgb, thumb), jpeg_data_uri(overlay_parsing(rgb, p0), thumb),
                                jpeg_data_uri(draw_landmarks(rgb, pts[0]), thumb),
                                jpeg_data_uri(overlay_parsing(flip, p1), thumb),
                                jpeg_data_uri(draw_landmarks(flip, pts[1]), thumb)]
            else:
                lmk, seg = decode_npy(fields["lmk.npy"]), decode_npy(fields["seg.npy"])
                row["cells"] = [jpeg_data_uri(rgb, thumb), jpeg_data_uri(_energy(lmk[0], thumb), thumb),
                                jpeg_data_uri(_energy(seg[0], thumb), thumb),
                                jpeg_data_uri(_energy(lmk[1], thumb), thumb),
                                jpeg_data_uri(_energy(seg[1], thumb), thumb)]
            rows.append(row)
            if len(rows) >= limit:
                return rows
    return rows


def gallery_markdown(rows: Sequence[Mapping[str, Any]], kind: str, title: str = "Priors") -> str:
    """Markdown table of inline thumbnails (what a Prefect markdown artifact renders)."""
    if kind == "maps":
        cols = ["image", "parsing", "landmarks", "parsing (flipped view)", "landmarks (flipped view)"]
    else:
        cols = ["image", "lmk energy", "seg energy", "lmk energy (flipped view)", "seg energy (flipped view)"]
    lines = [f"## {title} ({len(rows)} samples)", "",
             "Landmarks: image-left brow/eye cyan, image-right yellow (see the flip convention).", "",
             "| key | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = " | ".join(f'<img src="{u}" width="96"/>' for u in r["cells"])
        lines.append(f"| `{r['key']}` | {cells} |")
    return "\n".join(lines) + "\n"


def priors_gallery(out_dir: str | os.PathLike, kind: str, split: str | None = None,
                   limit: int = 12) -> str:
    """The gallery markdown for a finished priors directory."""
    return gallery_markdown(gallery_rows(out_dir, split, limit), kind)
