"""Occluded evaluation sets: the procedural ``synthetic-occlusion`` test set and the real
occlusion / pose subsets (RAN's lists) of an ingested test split.

Public API::

    from ferpipe.occlusion import OcclusionParams, occlude, OCCLUDERS, register_occluder
    from ferpipe.occlusion import synthetic_occlusion_stage, plan_occlusion, occlusion_shard,
                                   finalize_occlusion, gallery_markdown, backend_recompute
    from ferpipe.occlusion import parse_subset_list, resolve_subset, build_subsets
    from ferpipe.occlusion.stage import run_occlusion
"""

from .occluders import OCCLUDERS, composite, draw_occluder, register_occluder
from .params import ALL_OCCLUDERS, OcclusionParams, SubsetListParams
from .synthetic import (
    SET_NAME,
    BackendRecompute,
    OcclusionReport,
    backend_recompute,
    finalize_occlusion,
    gallery_markdown,
    occlude,
    occlusion_shard,
    plan_occlusion,
    read_metadata,
    sample_seed,
    synthetic_occlusion_stage,
)

__all__ = [
    "ALL_OCCLUDERS", "OCCLUDERS", "SET_NAME", "BackendRecompute", "OcclusionParams", "OcclusionReport",
    "SubsetListParams", "backend_recompute", "composite", "draw_occluder", "finalize_occlusion",
    "gallery_markdown", "occlude", "occlusion_shard", "plan_occlusion", "read_metadata", "register_occluder",
    "sample_seed", "synthetic_occlusion_stage",
]
