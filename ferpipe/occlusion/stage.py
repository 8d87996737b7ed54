"""The occlusion stage: ``ferpipe occlusion`` / ``run_occlusion(params, root)``.

Builds the ``synthetic-occlusion`` set from ``data/<occlusion.source_stage>/<dataset>`` (the
``occlusion.split`` split) into ``data/occlusion/<dataset>``, and, when ``occlusion.subsets``
names list files, the real occlusion/pose subsets (``subsets.parquet``/``subsets.json`` there).
The report goes to ``reports/occlusion/<dataset>.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ferpipe import shards
from ferpipe.layout import Layout
from ferpipe.timings import write_report
from ferpipe.occlusion.placement import placement_source
from ferpipe.occlusion.subsets import build_subsets
from ferpipe.occlusion.synthetic import (
    OcclusionReport,
    RecomputeFn,
    backend_recompute,
    synthetic_occlusion_stage,
)

STAGE = "occlusion"


def source_prior_kind(source_dir: str | Path, split: str) -> str:
    """The priors kind of a priors directory (from its first sample's json)."""
    meta = shards.first_sample_json(shards.shard_urls(source_dir, split))
    return "maps" if meta is None else str(meta.get("priors", {}).get("kind", "maps"))


def default_recompute(params, layout: Layout, source_dir: Path, split: str) -> RecomputeFn:
    """The priors backend ``priors.*`` names, for the source's prior kind."""
    from ferpipe.priors.params import PriorsParams  # noqa: PLC0415

    pp = getattr(params, "priors", None) or PriorsParams()
    kind = source_prior_kind(source_dir, split)
    if pp.kind != kind:
        pp = pp.model_copy(update={"kind": kind})
    return backend_recompute(pp, layout.models)


def occlusion_paths(params, root: Path) -> tuple[Layout, str, Path, Path]:
    layout = Layout(Path(root))
    dataset = params.download.dataset
    return (layout, dataset, layout.shards(params.occlusion.source_stage, dataset),
            layout.shards(STAGE, dataset))


def maybe_build_subsets(params, layout: Layout, dataset: str, out_dir: Path) -> dict[str, Any]:
    p = params.occlusion
    if not p.subsets:
        return {}
    return build_subsets(p.subsets, layout.manifest(dataset), layout.raw(dataset), out_dir, p.split)


def run_occlusion(params, root: Path = Path("."), recompute_priors: RecomputeFn | None = None,
                  progress: bool = True) -> OcclusionReport:
    """Entry point for ``ferpipe occlusion --no-flow``: takes the whole :class:`Params`."""
    t0 = time.perf_counter()
    layout, dataset, source_dir, out_dir = occlusion_paths(params, root)
    p = params.occlusion
    recompute = recompute_priors or default_recompute(params, layout, source_dir, p.split)
    report = synthetic_occlusion_stage(source_dir, out_dir, p, recompute, dataset, progress=progress,
                                       placement=placement_source(layout, dataset))
    report.subsets = maybe_build_subsets(params, layout, dataset, out_dir)
    report.seconds = round(time.perf_counter() - t0, 3)
    write_report(layout.stage_report(STAGE, dataset), report.to_dict())
    return report
