"""Occluded evaluation sets: the procedural ``synthetic-occlusion`` test set and the real
occlusion / pose subsets (RAN's lists) of an ingested test split.

Public API::

    from ferpipe.occlusion import OcclusionParams, occlude, OCCLUDERS, register_occluder
    from ferpipe.occlusion import synthetic_occlusion_stage, plan_occlusion, occlusion_shard,
                                   finalize_occlusion, gallery_markdown, backend_recompute
    from ferpipe.occlusion import parse_subset_list, resolve_subset, build_subsets
    from ferpipe.occlusion.stage import run_occlusion
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use (ferpipe._lazy): reading params.yaml must not import this stage's dependencies.
_EXPORTS = {
    "ALL_OCCLUDERS": "params", "BackendRecompute": "synthetic", "OCCLUDERS": "occluders",
    "OcclusionParams": "params", "OcclusionReport": "synthetic", "SET_NAME": "synthetic",
    "SubsetListParams": "params", "backend_recompute": "synthetic", "composite": "occluders",
    "draw_occluder": "occluders", "finalize_occlusion": "synthetic", "gallery_markdown": "synthetic",
    "occlude": "synthetic", "occlusion_shard": "synthetic", "plan_occlusion": "synthetic",
    "read_metadata": "synthetic", "register_occluder": "occluders", "sample_seed": "synthetic",
    "synthetic_occlusion_stage": "synthetic",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
