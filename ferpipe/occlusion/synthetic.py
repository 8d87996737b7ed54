"""The synthetic-occlusion test set: every sample of a priors split, occluded by a procedural
occluder placed on its facial regions, with priors recomputed from the occluded image.

This is **not** Occlu-FER (a real, licensed dataset that comes in through the download stage).
Everything this module writes is named ``synthetic-occlusion``::

    data/occlusion/<dataset>/synthetic-occlusion-NNNNNN.tar       priors shard format
    data/occlusion/<dataset>/synthetic-occlusion-NNNNNN_stats.json
    data/occlusion/<dataset>/synthetic-occlusion_index.json, index.json
    data/occlusion/<dataset>/synthetic-occlusion.parquet           occlusion metadata

One output shard per source shard, same keys (``<key>_v<i>`` when ``variants`` > 1). A sample
holds the occluded ``jpg``, the source ``cls``, the priors members returned by
``recompute_priors(occluded_rgb)`` and the source ``json`` plus an ``occlusion`` object
(set, occluder, placement, regions, region_coverage, occluded_fraction, sample_seed, variant,
source_key, geometry_source, parsing_source).

Occluders are placed from the data alone (:mod:`ferpipe.occlusion.placement`: ground truth when
the dataset has it, else the dataset's landmarks and the aligned 5 points), never from the source's
priors, which a trained network computed: the set's images and metadata stay byte-identical when
the prior nets change. Only the occluded images' priors come from the model's prior backend.

Per-sample randomness: ``numpy.random.default_rng(SeedSequence([seed, variant, key hash]))``,
so a sample's occluder does not depend on shard layout or on the other samples.

``recompute_priors(rgb_uint8) -> dict`` maps an HxWx3 RGB image (the occluded JPEG as decoded,
i.e. exactly what a model will read) to the sample members the priors stage writes for it
(``landmarks.npy`` / ``parsing.png`` / ``parsing_flip.png`` or ``lmk.npy`` / ``seg.npy``, as
bytes); an optional ``"priors"`` dict in the result replaces the json's ``priors`` object.
:func:`backend_recompute` builds one from a priors backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from ferpipe import shards
from ferpipe.occlusion.face import approx_parsing, coverage, face_geometry
from ferpipe.occlusion.occluders import composite, draw_occluder
from ferpipe.occlusion.params import OcclusionParams
from ferpipe.occlusion.placement import PlacementSource
from ferpipe.report import Artifact, markdown, markdown_table, table
from ferpipe.sharded import ShardedStage, ShardJob, ShardTotals, mirror_shards
from ferpipe.thumbs import jpeg_data_uri

SET_NAME = "synthetic-occlusion"
STAGE = "occlusion"
STATS_COLUMNS = ["shard", "items", "written", "skipped", "seconds", "items_per_second", "bytes", "resumed"]

RecomputeFn = Callable[[np.ndarray], Mapping[str, Any]]


# --- per-sample ----------------------------------------------------------------------------------


def sample_seed(seed: int, key: str, variant: int = 0) -> int:
    """A 63-bit seed from (seed, key, variant): stable across shard layouts and runs."""
    h = int.from_bytes(hashlib.sha256(f"{SET_NAME}/{key}".encode()).digest()[:8], "big")
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(variant), h & 0xFFFFFFFF, h >> 32])
    return int(ss.generate_state(1, np.uint64)[0]) >> 1


def occlude(rgb: np.ndarray, parsing: np.ndarray | None, landmarks68: np.ndarray | None,
            points5: Sequence[float] | None, occluder: str | None, seed: int,
            occluders: Sequence[str] = (), cover_alpha: float = 0.5,
            region_threshold: float = 0.3, parsing_source: str = "given") -> tuple[np.ndarray, dict[str, Any]]:
    """Occlude one aligned face. ``occluder`` None draws one of ``occluders`` from ``seed``.

    Returns the occluded image and its facts (occluder, placement, regions, region_coverage,
    occluded_fraction, geometry/parsing source). Regions and the fraction are measured on the
    clean image's parsing map (or a map rasterised from the 5 points when there is none).
    """
    rng = np.random.default_rng(seed)
    if occluder is None:
        if not occluders:
            raise ValueError("no occluder types to draw from")
        occluder = str(occluders[int(rng.integers(len(occluders)))])
    geom = face_geometry(parsing, landmarks68, points5)
    if parsing is None:
        parsing = approx_parsing(geom, rgb.shape[:2])
        parsing_source = "approximated-from-points"
    occ = draw_occluder(occluder, rng, geom, rgb)
    out = composite(rgb, occ)
    cov = coverage(occ.alpha, parsing, geom, cover_alpha, region_threshold)
    facts = {**occ.info, **cov, "geometry_source": geom.source, "parsing_source": parsing_source}
    return out, facts


# --- planning -----------------------------------------------------------------------------------


def out_key(key: str, variant: int, variants: int) -> str:
    return key if variants == 1 else f"{key}_v{variant}"


def plan_occlusion(source_dir: str | os.PathLike, split: str = "test", variants: int = 1
                   ) -> dict[str, list[shards.ShardSpec]]:
    """One ``synthetic-occlusion`` spec per source shard of ``split`` (same index and keys);
    items carry the source shard's name and sha256, so a changed source changes the fingerprint."""
    def items(entry, keys):
        return sorted(({"key": out_key(k, v, variants), "source_key": k, "variant": v,
                        "source_shard": entry["name"], "source_sha256": entry["sha256"]}
                       for k in keys for v in range(variants)), key=lambda it: it["key"])

    return {SET_NAME: mirror_shards(source_dir, split, SET_NAME, items)}


def describe_recompute(fn: RecomputeFn) -> str:
    """What identifies a recompute callable in the fingerprint: its ``describe()`` if it has
    one, else its qualified name."""
    d = getattr(fn, "describe", None)
    if callable(d):
        return shards.canonical_json(d()).decode()
    f = getattr(fn, "func", fn)
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


# --- the per-shard worker ----------------------------------------------------------------------


def _jpg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality), optimize=False, subsampling=0)
    return buf.getvalue()


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class OcclusionWorker:
    """ShardFn: occludes the samples of one source shard; metadata rows go to the stats."""

    def __init__(self, source_dir: str | os.PathLike, params: OcclusionParams, recompute: RecomputeFn,
                 placement: PlacementSource | None = None):
        self.source_dir = Path(source_dir)
        self.params = params
        self.recompute = recompute
        self.placement = placement or PlacementSource()

    def describe(self) -> str:
        """Besides the params, what decides the output: the priors recompute and the placement source."""
        return describe_recompute(self.recompute) + "/" + shards.canonical_json(self.placement.describe()).decode()

    def __call__(self, spec: shards.ShardSpec, sink: shards.ShardSink) -> dict[str, Any]:
        p = self.params
        by_src: dict[str, list[Mapping[str, Any]]] = {}
        for it in spec.items:
            by_src.setdefault(str(it["source_shard"]), []).append(it)
        rows: list[dict[str, Any]] = []
        t_prior = 0.0
        out: list[tuple[str, dict[str, Any]]] = []
        for src, items in by_src.items():
            wanted: dict[str, list[Mapping[str, Any]]] = {}
            for it in items:
                wanted.setdefault(str(it["source_key"]), []).append(it)
            for key, fields in shards.iter_tar_samples(self.source_dir / src):
                if key not in wanted:
                    continue
                try:
                    rgb = _rgb(fields["jpg"])
                    meta = json.loads(fields["json"])
                except Exception as e:  # noqa: BLE001 - one bad sample, never the shard
                    for it in wanted.pop(key):
                        sink.skip(str(it["key"]), src, "corrupt_sample", f"{type(e).__name__}: {e}")
                    continue
                for it in wanted.pop(key):
                    okey, variant = str(it["key"]), int(it["variant"])
                    seed = sample_seed(p.seed, key, variant)
                    try:
                        # Never the source's priors: they come from a trained network (see placement).
                        where = self.placement(meta, rgb.shape[:2])
                        occluded, facts = occlude(rgb, where.parsing, where.landmarks68, where.points5, None, seed,
                                                  p.occluders, p.cover_alpha, p.region_threshold,
                                                  where.parsing_source)
                        facts["geometry_source"] = where.geometry_source
                    except ValueError as e:
                        sink.skip(okey, src, "no_geometry", str(e))
                        continue
                    jpg = _jpg(occluded, p.jpeg_quality)
                    t0 = time.perf_counter()
                    # The priors see exactly what a model will: the decoded occluded JPEG.
                    members = dict(self.recompute(_rgb(jpg)))
                    t_prior += time.perf_counter() - t0
                    prior_meta = members.pop("priors", None)
                    occ = {"set": SET_NAME, **facts, "sample_seed": seed, "variant": variant,
                           "source_key": key, "priors_recomputed": True}
                    new_meta = {**meta, "occlusion": occ}
                    if prior_meta is not None:
                        new_meta["priors"] = prior_meta
                    sample = {"__key__": okey, "jpg": jpg, "json": new_meta}
                    if "cls" in fields:
                        sample["cls"] = fields["cls"]
                    for ext, v in members.items():
                        sample[ext] = v
                    out.append((okey, sample))
                    rows.append({"key": okey, "source_key": key, "variant": variant,
                                 "label": int(fields["cls"]) if "cls" in fields else -1,
                                 "occluder": facts["occluder"], "placement": facts.get("placement", ""),
                                 "regions": list(facts["regions"]),
                                 "occluded_fraction": facts["occluded_fraction"], "seed": seed,
                                 "geometry_source": facts["geometry_source"],
                                 "parsing_source": facts["parsing_source"]})
            for k, its in wanted.items():
                for it in its:
                    sink.skip(str(it["key"]), src, "missing_in_source", f"{k} not in {src}")
        for _, s in sorted(out, key=lambda t: t[0]):
            sink.add(s)
        rows.sort(key=lambda r: r["key"])
        return {"rows": rows, "priors_seconds": round(t_prior, 3),
                "by_occluder": _counts(r["occluder"] for r in rows)}


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


# --- recompute adapters ------------------------------------------------------------------------


class BackendRecompute:
    """``recompute_priors`` from a priors backend (``ferpipe.priors.backends``): the same members,
    dtypes and views (view 1 = computed from the mirrored image) the priors stage writes."""

    def __init__(self, backend, kind: str, png_compression: int = 6):
        self.backend, self.kind, self.png_compression = backend, kind, png_compression

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.backend.describe()}

    def __call__(self, rgb: np.ndarray) -> dict[str, Any]:
        flip = np.ascontiguousarray(rgb[:, ::-1])
        if self.kind == "features":
            l0, s0 = self.backend.features([rgb])
            l1, s1 = self.backend.features([flip])
            return {"lmk.npy": shards.encode_npy(np.stack([l0[0], l1[0]]).astype(np.float16)),
                    "seg.npy": shards.encode_npy(np.stack([s0[0], s1[0]]).astype(np.float16))}
        p0, m0 = self.backend.maps([rgb])
        p1, m1 = self.backend.maps([flip])
        return {"landmarks.npy": shards.encode_npy(np.stack([p0[0], p1[0]]).astype(np.float32)),
                "parsing.png": shards.encode_png(m0[0], self.png_compression),
                "parsing_flip.png": shards.encode_png(m1[0], self.png_compression)}


def backend_recompute(priors_params, models_dir: str | os.PathLike) -> BackendRecompute:
    """The real ``recompute_priors``: the backend ``priors.*`` names (same kind, same weights)."""
    from ferpipe.priors.backends import build_backend  # noqa: PLC0415

    return BackendRecompute(build_backend(priors_params, models_dir), priors_params.kind,
                            priors_params.png_compression)


# --- the report -------------------------------------------------------------------------------


@dataclass
class OcclusionReport:
    dataset: str
    out_dir: str
    source_dir: str
    samples: int
    skipped: int
    skipped_by_reason: dict[str, int]
    failures: list[dict[str, Any]]
    by_occluder: dict[str, int]
    by_region: dict[str, int]
    mean_occluded_fraction: float
    shards_resumed: int
    seconds: float
    samples_per_second: float
    index_sha256: str
    metadata: str
    shard_stats: list[dict[str, Any]] = field(default_factory=list)
    subsets: dict[str, Any] = field(default_factory=dict)
    # What placed the occluders (ferpipe.occlusion.placement): samples per geometry source.
    by_placement: dict[str, int] = field(default_factory=dict)
    source_split: str = "test"
    gallery_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{SET_NAME} {self.dataset}: {self.samples} samples, {self.skipped} skipped, "
                 f"mean occluded fraction {self.mean_occluded_fraction:.3f}, {self.seconds:.1f}s "
                 f"({self.samples_per_second:.1f}/s, {self.shards_resumed} shards resumed) -> {self.out_dir}",
                 f"  occluders: {self.by_occluder}", f"  regions:   {self.by_region}",
                 f"  placed on: {self.by_placement}"]
        if self.skipped_by_reason:
            lines.append(f"  skipped: {self.skipped_by_reason}")
        for name, s in self.subsets.get("subsets", {}).items():
            lines.append(f"  subset {name}: {s['keys']} keys, {s['duplicates']} duplicates, "
                         f"{s['problems']} problems")
        return "\n".join(lines)

    def artifacts(self) -> list[Artifact]:
        """A per-shard table (occluder counts ``n_*``) and a page of counts, subset problems and a gallery."""
        ds = self.dataset
        occluders = sorted({k for r in self.shard_stats for k in r if k.startswith("n_")})
        rows = [{c: r.get(c, 0) for c in STATS_COLUMNS + occluders} for r in self.shard_stats]
        return [table(("occlusion", ds, "shards"), rows, f"{ds}: {SET_NAME} per shard (occluder counts n_*)"),
                markdown(("occlusion", ds, "gallery"), self._markdown(),
                         f"{ds}: {SET_NAME} gallery, counts and subset problems")]

    def _markdown(self) -> str:
        md = [f"# {self.dataset}: {SET_NAME}", "",
              f"{self.samples} samples, mean occluded fraction {self.mean_occluded_fraction:.3f}; occluders "
              f"placed from the data alone, never a network: "
              + ", ".join(f"{n} on {k}" for k, n in self.by_placement.items()), "",
              markdown_table([{"occluder": k, "samples": v} for k, v in self.by_occluder.items()],
                             ["occluder", "samples"]), "",
              markdown_table([{"region": k, "samples": v} for k, v in self.by_region.items()], ["region", "samples"]),
              ""]
        if self.failures:
            md += [markdown_table(self.failures[:200], ["shard", "key", "reason", "detail"]), ""]
        if self.subsets:
            md += ["## Real subsets", "",
                   markdown_table(list(self.subsets["subsets"].values()),
                                  ["subset", "format", "keys", "duplicates", "problems", "codes"]), ""]
            if self.subsets["problems"]:
                md += [markdown_table(self.subsets["problems"][:200], ["subset", "stem", "problem", "detail"]), ""]
        if self.gallery_size:
            md.append(gallery_markdown(self.out_dir, self.source_dir, self.source_split, limit=self.gallery_size))
        return "\n".join(md)


def metadata_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / f"{SET_NAME}.parquet"


def write_metadata(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The occlusion metadata parquet (sorted by key; fixed schema, no pandas index)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = pa.schema([("key", pa.string()), ("source_key", pa.string()), ("variant", pa.int32()),
                        ("label", pa.int32()), ("occluder", pa.string()), ("placement", pa.string()),
                        ("regions", pa.list_(pa.string())), ("occluded_fraction", pa.float64()),
                        ("seed", pa.int64()), ("geometry_source", pa.string()), ("parsing_source", pa.string())],
                       metadata={"ferpipe.set": SET_NAME})
    rows = sorted(rows, key=lambda r: r["key"])
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    path = Path(path)
    with shards.atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd")
    return path


def read_metadata(path: str | os.PathLike):
    import pandas as pd  # noqa: PLC0415

    return pd.read_parquet(path)


class SyntheticOcclusion(ShardedStage):
    """The ``synthetic-occlusion`` set as a sharded stage, from explicit paths (the whole stage,
    with the real subsets: :class:`ferpipe.occlusion.stage.OcclusionStage`)."""

    name = STAGE
    non_output = ("gallery_size", "subsets")

    @contextmanager
    def worker(self, job: ShardJob) -> Iterator[OcclusionWorker]:
        yield OcclusionWorker(job.inputs["source_dir"], job.params, job.inputs["recompute"], job.inputs["placement"])

    def row_extra(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        return {f"n_{k}": v for k, v in stats["extra"].get("by_occluder", {}).items()}

    def report(self, job: ShardJob, totals: ShardTotals, stats, seconds: float) -> OcclusionReport:
        """The metadata parquet and the report, once every shard is done."""
        rows = [r for sts in stats.values() for st in sts for r in st["extra"].get("rows", [])]
        meta = write_metadata(rows, metadata_path(job.out_dir))
        by_region: dict[str, int] = {}
        for r in rows:
            for reg in r["regions"]:
                by_region[reg] = by_region.get(reg, 0) + 1
        index = json.loads((job.out_dir / "index.json").read_text())
        fr = [r["occluded_fraction"] for r in rows]
        return OcclusionReport(
            dataset=job.dataset, out_dir=str(job.out_dir), source_dir=str(job.inputs["source_dir"]), samples=len(rows),
            skipped=sum(totals.skipped_by_reason.values()), skipped_by_reason=totals.skipped_by_reason,
            failures=totals.failures,
            by_occluder=_counts(r["occluder"] for r in rows), by_region=dict(sorted(by_region.items())),
            mean_occluded_fraction=round(float(np.mean(fr)), 4) if fr else 0.0, shards_resumed=totals.resumed,
            seconds=round(seconds, 3), samples_per_second=totals.per_second(seconds), index_sha256=index["sha256"],
            metadata=str(meta), shard_stats=totals.shard_rows, by_placement=_counts(r["geometry_source"] for r in rows),
            source_split=job.params.split, gallery_size=job.params.gallery_size)


def occlusion_job(source_dir: str | os.PathLike, out_dir: str | os.PathLike, params: OcclusionParams,
                  recompute: RecomputeFn, dataset: str = "", placement: PlacementSource | None = None) -> ShardJob:
    """The planned run: every source shard of ``params.split`` -> ``out_dir``. ``placement``: where
    occluders go (:mod:`ferpipe.occlusion.placement`; default: the aligned samples' own points)."""
    return ShardJob(dataset=dataset or Path(source_dir).name, out_dir=Path(out_dir),
                    plans=plan_occlusion(source_dir, params.split, params.variants), params=params,
                    inputs={"source_dir": str(source_dir), "recompute": recompute,
                            "placement": placement or PlacementSource()})


def synthetic_occlusion_stage(source_dir: str | os.PathLike, out_dir: str | os.PathLike,
                              params: OcclusionParams, recompute: RecomputeFn, dataset: str = "",
                              progress: Any = True, placement: PlacementSource | None = None) -> OcclusionReport:
    """Every source shard of ``params.split`` -> ``out_dir`` (local loop; resumes done shards); the
    report is returned, not written."""
    started = time.perf_counter()
    job = occlusion_job(source_dir, out_dir, params, recompute, dataset, placement)
    return SyntheticOcclusion().run_job(job, progress, started)


# --- gallery ------------------------------------------------------------------------------------


def gallery_markdown(out_dir: str | os.PathLike, source_dir: str | os.PathLike, source_split: str = "test",
                     limit: int = 18, thumb: int = 112) -> str:
    """Markdown table (original | occluded, occluder, regions, fraction) with inline base64
    JPEG thumbnails; samples are picked round-robin over occluder types so each type shows."""
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    picked: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
    for url in shards.shard_urls(out_dir, SET_NAME):
        for key, fields in shards.iter_tar_samples(Path(url)):
            occ = json.loads(fields["json"])["occlusion"]
            lst = picked.setdefault(occ["occluder"], [])
            if len(lst) < limit:
                lst.append((key, fields))
    order: list[tuple[str, dict[str, bytes]]] = []
    while len(order) < limit and any(picked.values()):
        for name in sorted(picked):
            if picked[name] and len(order) < limit:
                order.append(picked[name].pop(0))
    want = {json.loads(f["json"])["occlusion"]["source_key"] for _, f in order}
    originals: dict[str, np.ndarray] = {}
    for url in shards.shard_urls(source_dir, source_split):
        for key, fields in shards.iter_tar_samples(Path(url)):
            if key in want:
                originals[key] = _rgb(fields["jpg"])
    lines = [f"## {SET_NAME} ({len(order)} samples; procedural occluders, not Occlu-FER)", "",
             "| key | original | occluded | occluder | regions | occluded fraction |", "|---|---|---|---|---|---|"]
    for key, fields in order:
        occ = json.loads(fields["json"])["occlusion"]
        src = originals.get(occ["source_key"])
        orig = f'<img src="{jpeg_data_uri(src, thumb)}" width="96"/>' if src is not None else "(missing)"
        lines.append(f"| `{key}` | {orig} | <img src=\"{jpeg_data_uri(_rgb(fields['jpg']), thumb)}\" width=\"96\"/> "
                     f"| {occ['occluder']} ({occ.get('placement', '')}) | {', '.join(occ['regions']) or '-'} "
                     f"| {occ['occluded_fraction']:.2f} |")
    return "\n".join(lines) + "\n"
