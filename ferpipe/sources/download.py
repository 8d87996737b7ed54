"""The download stage: whatever the user has → a verified raw copy plus a parquet manifest.

Sources: the embedded synthetic set, a local directory, a local archive, or an http(s) URL.
Steps: obtain (render / copy / fetch with resume) → verify sha256 → extract safely into a fresh
``data/raw/<dataset>`` → read the dataset's layout → decode every image once → manifest.
Nothing is silently lost: every file the reader or the decoder rejected is in the report.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ferpipe.errors import ChecksumError, DataError
from ferpipe.labels import get_label_space, get_native_map, to_canonical
from ferpipe.layout import Layout
from ferpipe.manifest import (
    STATUS_OK,
    carve_val,
    find_leakage,
    inspect_images,
    manifest_table,
    split_counts,
    write_manifest,
)
from ferpipe.sources.archive import archive_format, extract_archive
from ferpipe.sources.fetch import download as download_url, sha256_file
from ferpipe.sources.params import DownloadParams
from ferpipe.sources.readers import get_reader

_URL_PREFIXES = ("http://", "https://")


@dataclass
class DownloadReport:
    dataset: str
    source: str
    manifest: str
    raw_root: str
    label_space: dict[str, Any]
    counts: list[dict[str, Any]]
    rejected: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    leakage: list[dict[str, Any]] = field(default_factory=list)
    val_split: dict[str, Any] | None = None
    archive_sha256: str | None = None
    ground_truth: str | None = None
    seconds: float = 0.0

    @property
    def n_usable(self) -> int:
        return sum(row["total"] for row in self.counts)

    def to_json(self) -> str:
        """The report file: without this run's timings (a DVC out, the same bytes on a rerun; the
        summary and the flow's log show them)."""
        from ferpipe.timings import split_run_facts  # noqa: PLC0415

        return json.dumps(split_run_facts(asdict(self))[0], indent=2, sort_keys=True)

    def summary(self) -> str:
        lines = [f"download {self.dataset}: {self.n_usable} usable images in {self.seconds:.1f}s "
                 f"→ {self.manifest}"]
        for row in self.counts:
            lines.append(f"  {row['split']:>5}: {row['total']}")
        if self.rejected:
            lines.append(f"  rejected: {len(self.rejected)} (listed in the report)")
        if self.leakage:
            lines.append(f"  leakage: {len(self.leakage)} identical images across splits")
        return "\n".join(lines)


def obtain_source(params: DownloadParams, layout: Layout, log: Callable[[str], None] = print) -> tuple[Path, str | None, str | None]:
    """Return (local path of the archive or directory, its sha256 if a file, ground-truth path)."""
    source = params.source
    if source == "synthetic":
        from ferpipe.sources.synthetic import render_archive

        syn = params.synthetic
        result = render_archive(layout.downloads, n_per_class=syn.n_per_class, size=syn.size, seed=syn.seed,
                                test_fraction=syn.test_fraction, workers=syn.workers,
                                difficulty=syn.difficulty, progress=False)
        log(f"rendered {result.n_images} images into {result.archive} in {result.elapsed_s:.1f}s")
        return Path(result.archive), sha256_file(result.archive), str(result.groundtruth)
    if source.startswith(_URL_PREFIXES):
        name = source.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or f"{params.dataset}.download"
        target = layout.downloads / name
        download_url(source, target, sha256=params.sha256, retries=params.retries)
        return target, sha256_file(target), None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"download.source {source!r}: no such file or directory "
                        f"(give 'synthetic', a local directory or archive, or an http(s) URL)")
    if path.is_dir():
        if params.sha256:
            raise DataError("download.sha256 is set but download.source is a directory; a hash applies to a file")
        return path, None, None
    digest = sha256_file(path)
    if params.sha256 and digest != params.sha256:
        raise ChecksumError(f"{path}: sha256 is {digest}, params say {params.sha256}")
    return path, digest, None


def _fresh_raw_copy(source: Path, raw: Path, params: DownloadParams) -> None:
    """Build the raw copy beside its final place and swap it in only when complete."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        staging = raw.with_name(raw.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        # Hard links where possible: a raw copy of AffectNet must not double the disk use.
        shutil.copytree(source, staging, symlinks=False, copy_function=_link_or_copy)
        shutil.rmtree(raw, ignore_errors=True)
        staging.replace(raw)
        return
    archive_format(source)  # a clear DataError for a file that is no archive, before anything moves
    password_env = params.password_env
    if password_env and password_env not in os.environ:
        raise DataError(f"{source}: the archive password is read from ${password_env}, which is not set")
    # Extraction goes to a sibling temp directory and is renamed into place when complete.
    extract_archive(source, raw, max_total_bytes=int(params.max_unpacked_gb * 2**30),
                    password_env=password_env, strip_single_root=True, replace=True)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def build_manifest_rows(params: DownloadParams, raw: Path):
    """Read the layout, decode every image once; returns (rows, rejected, warnings, native map)."""
    reader = get_reader(params.format)
    options = {"images": params.rafdb_images} if params.format == "rafdb" else {}
    result = reader(raw, **options)
    space = get_label_space(params.label_space)
    native_map = get_native_map(result.native_map)
    rejected = [{"path": p.path, "reason": p.reason} for p in result.problems]
    warnings = [{"path": p.path, "reason": p.reason} for p in result.warnings]
    checks = inspect_images([raw / r.path for r in result.records], params.max_image_pixels, params.workers)
    rows = []
    for rec, check in zip(result.records, checks):
        label = to_canonical(rec.native_label, native_map, space)
        status = check.status
        if status == STATUS_OK and label < 0:
            status = f"outside label space: {rec.native_label!s} is not in {space.name}"
        if status != STATUS_OK:
            rejected.append({"path": rec.path, "reason": status})
        rows.append({
            "key": rec.key, "dataset": params.dataset, "split": rec.split, "path": rec.path,
            "sha256": check.sha256, "width": check.width, "height": check.height,
            "native_label": str(rec.native_label), "label": label, "status": status,
            "landmarks5": None if rec.landmarks5 is None else [float(v) for v in
                                                                 _flatten(rec.landmarks5)],
        })
    return rows, rejected, warnings, native_map.name


def _flatten(points) -> list[float]:
    out: list[float] = []
    for p in points:
        if isinstance(p, (list, tuple)) or hasattr(p, "__len__"):
            out.extend(float(v) for v in p)
        else:
            out.append(float(p))
    return out


def download_stage(params: DownloadParams, layout: Layout, log: Callable[[str], None] = print) -> DownloadReport:
    start = time.perf_counter()
    source, digest, ground_truth = obtain_source(params, layout, log)
    raw = layout.raw(params.dataset)
    _fresh_raw_copy(source, raw, params)
    rows, rejected, warnings, native_map = build_manifest_rows(params, raw)
    if not rows:
        raise DataError(f"{raw}: the {params.format} reader found no images; is download.format right?")
    if ground_truth:
        # Inside the raw copy (a DVC out), so the evaluation sets built from it (synthetic
        # occlusion places its occluders on it) are there wherever the data is pulled.
        shutil.copyfile(ground_truth, layout.ground_truth(params.dataset))
        ground_truth = str(layout.ground_truth(params.dataset))

    import pandas as pd

    frame = pd.DataFrame(rows)
    val_record = None
    usable = frame[frame["status"] == STATUS_OK]
    if not (usable["split"] == "val").any() and params.val_fraction > 0:
        frame, val_record = carve_val(frame, params.val_fraction, params.seed)
    space = get_label_space(params.label_space)
    label_space = json.loads(space.to_json())
    info = {"format": params.format, "native_map": native_map, "source_sha256": digest, "val_split": val_record}
    manifest_path = write_manifest(manifest_table(frame.to_dict("records"), label_space, info),
                                   layout.manifest(params.dataset))
    report = DownloadReport(
        dataset=params.dataset, source=params.source, manifest=str(manifest_path), raw_root=str(raw),
        label_space=label_space, counts=split_counts(frame, space.classes),
        rejected=sorted(rejected, key=lambda r: r["path"]), warnings=warnings, leakage=find_leakage(frame),
        val_split=val_record, archive_sha256=digest, ground_truth=ground_truth,
        seconds=round(time.perf_counter() - start, 3),
    )
    report_path = layout.stage_report("download", params.dataset)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.to_json())
    return report


def run_download(params, root: Path = Path(".")) -> DownloadReport:
    """Entry point for ``ferpipe download --no-flow``: takes the whole :class:`Params`."""
    return download_stage(params.download, Layout(Path(root)))
