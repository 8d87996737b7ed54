"""The download stage: whatever the user has → a verified raw copy plus a parquet manifest.

Sources: the embedded synthetic set, a local directory, a local archive, or an http(s) URL.
Steps: obtain (render / copy / fetch with resume) → verify sha256 → extract safely into a fresh
``data/raw/<dataset>`` → read the dataset's layout → decode every image once → manifest.
Nothing is silently lost: every file the reader or the decoder rejected is in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ferpipe.errors import ChecksumError, DataError
from ferpipe.labels import get_label_space, get_native_map, space_kind, to_canonical
from ferpipe.layout import Layout
from ferpipe.progress import Progress, as_progress
from ferpipe.report import Artifact, markdown, markdown_table, table
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
from ferpipe.tempfiles import private_sibling, sweep_stale

_URL_PREFIXES = ("http://", "https://")
MAX_LISTED = 500  # a rejected list longer than this is truncated in the artifacts (the JSON report has all)
# A lone top-level folder with one of these names is the data's split, not a wrapper to strip.
_SPLIT_FOLDERS = frozenset({"train", "val", "valid", "validation", "test"})


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

    def artifacts(self) -> list[Artifact]:
        """Usable images per split and class; the rejected files, leakage and the val split."""
        ds = self.dataset
        return [table(("download", ds, "counts"), self.counts,
                      f"{ds}: usable images per split and class ({self.label_space['name']})"),
                markdown(("download", ds, "rejected"), self.rejected_markdown(), f"{ds}: files skipped, with the reason")]

    def rejected_markdown(self) -> str:
        lines = [f"# {self.dataset}: rejected files ({len(self.rejected)})", ""]
        if not self.rejected:
            lines.append("None: every listed image decoded and has a label in the label space.")
        else:
            lines.append(markdown_table(self.rejected[:MAX_LISTED], ["path", "reason"]))
            if len(self.rejected) > MAX_LISTED:
                lines.append(f"\n… and {len(self.rejected) - MAX_LISTED} more in {self.manifest}'s report JSON.")
        if self.leakage:
            lines += ["", f"## Leakage: {len(self.leakage)} identical images across splits", ""]
            rows = [{"sha256": leak["sha256"][:16],
                     "samples": ", ".join(f"{s['split']}:{s['path']}" for s in leak["samples"])}
                    for leak in self.leakage[:MAX_LISTED]]
            lines.append(markdown_table(rows, ["sha256", "samples"]))
        if self.val_split:
            lines += ["", f"Val split carved from train: {self.val_split['total']} images "
                          f"(fraction {self.val_split['fraction']}, seed {self.val_split['seed']})."]
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
        target = url_cache_path(layout, source, params.sha256)
        download_url(source, target, sha256=params.sha256, retries=params.retries)
        return target, sha256_file(target), None
    path = Path(source).expanduser()
    if not path.exists():
        why = "a symbolic link to nothing" if path.is_symlink() else "no such file or directory"
        raise DataError(f"download.source {source!r}: {why} "
                        f"(give 'synthetic', a local directory or archive, or an http(s) URL)")
    if path.is_dir():
        if params.sha256:
            raise DataError("download.sha256 is set but download.source is a directory; a hash applies to a file")
        _refuse_overlap(path, layout)
        return path, None, None
    if not path.is_file():
        # /dev/zero, a FIFO, a socket: reading one never ends (or blocks forever).
        raise DataError(f"download.source {source!r} is not a regular file or directory "
                        f"({_kind(path)}); give a dataset directory or archive")
    digest = sha256_file(path)
    if params.sha256 and digest != params.sha256:
        raise ChecksumError(f"{path}: sha256 is {digest}, params say {params.sha256}")
    return path, digest, None


def url_cache_path(layout: Layout, url: str, sha256: str | None = None) -> Path:
    """Where a URL's download is kept: a folder per (full URL, expected sha256), so two URLs
    ending in the same file name never share a file, and a changed hash fetches afresh."""
    key = hashlib.sha256(f"{url}\n{sha256 or ''}".encode()).hexdigest()[:24]
    name = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or not all(c.isalnum() or c in "._-" for c in name):
        name = "download"
    return layout.downloads / "url" / key / name


def _kind(path: Path) -> str:
    mode = path.stat().st_mode
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _refuse_overlap(source: Path, layout: Layout) -> None:
    """A source directory holding the project's data (the root itself, or a parent of it) would
    be copied into itself; one inside ``data/`` would be replaced while it is read."""
    src = source.resolve()
    data = layout.data.resolve()
    if src == data or src in data.parents:
        raise DataError(f"download.source {str(source)!r} contains the project's data directory {layout.data}; "
                        f"copying it would copy the copy into itself. Point download.source at the "
                        f"dataset's own directory")
    if data in src.parents:
        raise DataError(f"download.source {str(source)!r} is inside the project's data directory "
                        f"{layout.data}, which the stage rewrites; move the dataset elsewhere")


def _fresh_raw_copy(source: Path, raw: Path, params: DownloadParams) -> list[dict[str, str]]:
    """Build the raw copy beside its final place and swap it in only when complete; returns the
    source entries that were not copied, with the reason."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(raw)  # staging trees of killed runs
    shutil.rmtree(raw.with_name(raw.name + ".partial"), ignore_errors=True)  # older versions' name
    if source.is_dir():
        staging = private_sibling(raw)
        try:
            rejected = _copy_tree(source, staging)
            if raw.exists():
                shutil.rmtree(raw)
            staging.replace(raw)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return rejected
    archive_format(source)  # a clear DataError for a file that is no archive, before anything moves
    password_env = params.password_env
    if password_env and password_env not in os.environ:
        raise DataError(f"{source}: the archive password is read from ${password_env}, which is not set")
    # Extraction goes to a sibling temp directory and is renamed into place when complete.
    extract_archive(source, raw, max_total_bytes=int(params.max_unpacked_gb * 2**30),
                    password_env=password_env, strip_single_root=True, keep_root_names=_SPLIT_FOLDERS,
                    replace=True)
    return []


def _copy_tree(source: Path, dest: Path) -> list[dict[str, str]]:
    """Copy ``source`` into the existing ``dest`` (hard links where possible: a raw copy of
    AffectNet must not double the disk use). Symbolic links are followed only to files inside
    ``source``; links leading out of it, dangling links, linked directories and special files
    are not copied but returned as rejections."""
    src_root = source.resolve()
    rejected: list[dict[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(source)
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        for d in list(dirnames):
            if (here / d).is_symlink():
                dirnames.remove(d)
                rejected.append({"path": (rel_dir / d).as_posix(),
                                 "reason": "symbolic link to a directory; not followed"})
        dirnames.sort()
        for fn in sorted(filenames):
            p = here / fn
            rp = (rel_dir / fn).as_posix()
            real = p
            if p.is_symlink():
                try:
                    real = p.resolve(strict=True)
                except (OSError, RuntimeError):
                    rejected.append({"path": rp, "reason": "dangling or looping symbolic link"})
                    continue
                if src_root not in real.parents:
                    rejected.append({"path": rp, "reason": f"symbolic link to {real}, outside the source "
                                                           f"directory; not followed"})
                    continue
            try:
                mode = real.stat().st_mode
            except OSError as exc:
                rejected.append({"path": rp, "reason": f"unreadable: {exc.strerror or exc}"})
                continue
            if not stat.S_ISREG(mode):
                rejected.append({"path": rp, "reason": f"{_kind(real)}, not a regular file; not copied"})
                continue
            target = dest / rel_dir / fn
            try:
                os.link(real, target)
            except OSError:
                shutil.copy2(real, target)  # an OSError here (disk full) stops the stage
    return rejected


def hidden_entries(raw: Path) -> list[dict[str, str]]:
    """Files the readers skip because a name on their path starts with '.' (``.DS_Store``,
    ``._x.jpg``, ``.git/``): listed so that nothing leaves the count without a line."""
    out = []
    for dirpath, dirnames, filenames in os.walk(raw):
        rel_dir = Path(dirpath).relative_to(raw)
        hidden_dir = any(part.startswith(".") for part in rel_dir.parts)
        dirnames.sort()
        for fn in sorted(filenames):
            if hidden_dir or fn.startswith("."):
                out.append({"path": (rel_dir / fn).as_posix(),
                            "reason": "hidden file (a name on its path starts with '.'); not read"})
    return out


def reader_options(params: DownloadParams) -> dict[str, Any]:
    """The params each reader takes (see docs/datasets.md)."""
    fmt = params.format
    if fmt == "rafdb":
        return {"images": params.rafdb_images, "variant": params.rafdb_variant}
    if fmt == "ferplus":
        return {"mode": params.ferplus_mode, "eval_mode": params.ferplus_eval_mode}
    if fmt == "imagefolder":
        return {"class_order": params.class_order}
    folds = {"folds": params.folds, "fold": params.fold, "seed": params.seed}
    if fmt == "expw":
        return folds
    if fmt == "ckplus":
        return {**folds, "last_frames": params.ckplus_last_frames,
                "neutral_first": params.ckplus_neutral_first}
    return {}


def _check_space_fits(params: DownloadParams, native_map, result) -> None:
    """Compound labels never go into a basic space, nor basic ones into compound11: every row
    would be 'outside the label space', so this is refused up front, saying what to set."""
    space = get_label_space(params.label_space)
    data_kind, space_kind_ = native_map.kind, space_kind(space)
    if data_kind == space_kind_:
        return
    if data_kind == "compound":
        raise DataError(
            f"{params.format}: the labels are RAF-DB compound (1 Happily Surprised .. 11 "
            f"Disgustedly Surprised), not basic: download.label_space {space.name} cannot hold "
            f"them; set download.label_space: compound11 (or download.rafdb_variant: basic if "
            f"this is the basic release)")
    raise DataError(
        f"{params.format}: the labels are basic expressions ({native_map.description}), not "
        f"compound: download.label_space compound11 is for RAF-DB compound; set "
        f"download.label_space: {result.default_space if result.default_space != 'compound11' else 'basic7'}"
        + (" (or download.rafdb_variant: compound if this is the compound release)"
           if params.format == "rafdb" else ""))


def _soft_in_space(soft, soft_classes, native_map, space) -> list[float] | None:
    """A native-order distribution in the space's order; classes outside the space lose their
    share and the rest is renormalised (None when nothing is left)."""
    if soft is None:
        return None
    out = [0.0] * len(space.classes)
    for p, native in zip(soft, soft_classes):
        idx = to_canonical(native, native_map, space)
        if idx >= 0:
            out[idx] += float(p)
    total = sum(out)
    return [round(v / total, 6) for v in out] if total > 0 else None


def build_manifest_rows(params: DownloadParams, raw: Path):
    """Read the layout, decode every image once; returns (rows, rejected, warnings, native map)."""
    reader = get_reader(params.format)
    result = reader(raw, **reader_options(params))
    space = get_label_space(params.label_space)
    native_map = get_native_map(result.native_map)
    _check_space_fits(params, native_map, result)
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
            "bbox": None if rec.bbox is None else [float(v) for v in rec.bbox],
            "landmarks": None if rec.landmarks is None else [float(v) for v in rec.landmarks],
            "soft_label": _soft_in_space(rec.soft_label, result.soft_classes, native_map, space),
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
    not_copied = _fresh_raw_copy(source, raw, params)
    rows, rejected, warnings, native_map = build_manifest_rows(params, raw)
    rejected += not_copied + hidden_entries(raw)
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
    from ferpipe.shards import atomic_file  # noqa: PLC0415

    with atomic_file(layout.stage_report("download", params.dataset)) as fh:
        fh.write(report.to_json().encode("utf-8"))
    return report


class DownloadStage:
    """``ferpipe download``: the source ``download.*`` names -> ``data/raw/<dataset>`` + the manifest."""

    name = "download"

    def run(self, params, layout: Layout, progress: Progress | None = None) -> DownloadReport:
        return download_stage(params.download, layout, log=as_progress(progress).message)


DOWNLOAD = DownloadStage()
