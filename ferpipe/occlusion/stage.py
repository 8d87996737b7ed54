"""The occlusion stage: ``ferpipe occlusion`` / ``OCCLUSION.run(params, layout)``.

Builds the ``synthetic-occlusion`` set from ``data/<occlusion.source_stage>/<dataset>`` (the
``occlusion.split`` split) into ``data/occlusion/<dataset>``, and, when ``occlusion.subsets``
names list files, the real occlusion/pose subsets (``subsets.parquet``/``subsets.json`` there).
The report goes to ``reports/occlusion/<dataset>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ferpipe import shards
from ferpipe.layout import Layout
from ferpipe.occlusion.placement import placement_source
from ferpipe.occlusion.subsets import build_subsets
from ferpipe.occlusion.synthetic import (
    OcclusionReport,
    RecomputeFn,
    SyntheticOcclusion,
    backend_recompute,
    occlusion_job,
)
from ferpipe.sharded import ShardJob

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


def maybe_build_subsets(params, layout: Layout, dataset: str, out_dir: Path) -> dict[str, Any]:
    p = params.occlusion
    if not p.subsets:
        return {}
    return build_subsets(p.subsets, layout.manifest(dataset), layout.raw(dataset), out_dir, p.split)


class OcclusionStage(SyntheticOcclusion):
    """``ferpipe occlusion``: the synthetic-occlusion set, then the real subsets (see the module doc).
    ``recompute``: the occluded images' priors (default: the backend ``priors.*`` names)."""

    def __init__(self, recompute: RecomputeFn | None = None):
        self.recompute = recompute

    def plan(self, params, layout: Layout) -> ShardJob:
        dataset = params.download.dataset
        source_dir = layout.shards(params.occlusion.source_stage, dataset)
        recompute = self.recompute or default_recompute(params, layout, source_dir, params.occlusion.split)
        return occlusion_job(source_dir, layout.shards(STAGE, dataset), params.occlusion, recompute, dataset,
                             placement_source(layout, dataset))

    def complete(self, report: OcclusionReport, params, layout: Layout, job: ShardJob) -> None:
        report.subsets = maybe_build_subsets(params, layout, job.dataset, job.out_dir)


OCCLUSION = OcclusionStage()
